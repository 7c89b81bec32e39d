//! `tttnn smoke`: the whole stack end to end on the bundled tiny fixtures — a real TTT-NN loop
//! (embed → store → retrieve → train → evaluate → record) on random tiny models, in seconds.
use std::path::PathBuf;
use std::time::Instant;

use super::sql;
use crate::corpus;
use crate::embed::{self, Encoder};
use crate::error::{Error, Result};
use crate::lm::{Device, Precision};
use crate::records::Db;
use crate::runner::{self, ContextOrder, EvalAt, Event, Method, RunConfig};
use crate::select::{Selection, Sift};
use crate::store::{Document, Store};
use crate::task::{Shard, Task};
use crate::ttt::OptimizerState;

/// Run the whole stack on the bundled tiny fixtures.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fixtures directory holding corpus.jsonl, models/tiny-gpt2 and encoders/tiny-roberta.
    #[arg(long, env = "TTTNN_FIXTURES", default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Output directory for the LanceDB store and the DuckDB results (store is rebuilt each time).
    #[arg(long, default_value = "runs/smoke")]
    pub out: PathBuf,
    /// Neighbours to train on per test document.
    #[arg(long, short = 'k', default_value_t = 3)]
    pub neighbors: usize,
    /// Test documents (every tenth corpus document, up to this many).
    #[arg(long, default_value_t = 6)]
    pub docs: usize,
    /// AdamW learning rate (large: the tiny model is random).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Where the LM and the encoder run.
    #[arg(long, value_enum, default_value_t = Device::Cpu, env = "TTTNN_DEVICE")]
    pub device: Device,
    /// Print the result table as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the smoke pipeline.
pub fn run(args: Args, quiet: bool) -> Result<()> {
    let say = |m: String| {
        if !quiet {
            eprintln!("smoke: {m}");
        }
    };
    let corpus_path = args.fixtures.join("corpus.jsonl");
    let records: Vec<corpus::Record> =
        corpus::Reader::open(&corpus_path)?.collect::<Result<_>>()?;
    let (test, train): (Vec<_>, Vec<_>) =
        records.iter().enumerate().partition(|(i, _)| i % 10 == 0);
    let test: Vec<&corpus::Record> = test.into_iter().map(|(_, r)| r).take(args.docs).collect();
    let train: Vec<&corpus::Record> = train.into_iter().map(|(_, r)| r).collect();
    say(format!(
        "{} documents in {}: {} in the store, {} test",
        records.len(),
        corpus_path.display(),
        train.len(),
        test.len()
    ));

    let t = Instant::now();
    // One device for the whole loop: the encoder runs where the LM does.
    let encoder_device = match args.device {
        Device::Cpu => embed::Device::Cpu,
        Device::Cuda => embed::Device::Cuda,
    };
    let mut encoder = Encoder::load(&args.fixtures.join("encoders/tiny-roberta"), encoder_device)?;
    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    let embeddings = encoder.embed(&texts, 16)?;
    let by_line = |r: &corpus::Record| &embeddings[(r.line - 1) as usize];
    say(format!(
        "embedded {} documents with {} ({} dims) in {:.2}s",
        texts.len(),
        encoder.provider(),
        encoder.dim(),
        t.elapsed().as_secs_f64()
    ));

    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let store_path = args.out.join("store");
    if store_path.exists() {
        std::fs::remove_dir_all(&store_path).map_err(|e| Error::io(&store_path, e))?;
    }
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    let store = rt.block_on(Store::open_or_create(&store_path, encoder.dim()))?;
    let docs: Vec<Document> = train
        .iter()
        .map(|r| (r, "train"))
        .chain(test.iter().map(|r| (r, "test")))
        .map(|(r, split)| Document {
            id: doc_id(r),
            split: split.into(),
            set_name: r.set_name.clone().unwrap_or_default(),
            source: r.path.display().to_string(),
            line: r.line,
            text: r.text.clone(),
            embedding: by_line(r).clone(),
        })
        .collect();
    rt.block_on(store.add(&docs))?;
    say(format!(
        "stored {} documents in {}",
        rt.block_on(store.count())?,
        store_path.display()
    ));

    let db_path = args.out.join("results.duckdb");
    let db = Db::open(&db_path)?;
    let model = args.fixtures.join("models/tiny-gpt2");
    let cfg = RunConfig {
        name: Some("smoke".into()),
        store: store_path.clone(),
        encoder: Some(args.fixtures.join("encoders/tiny-roberta")),
        max_length: None,
        model,
        task: Task::All,
        neighbors: args.neighbors,
        lr: args.lr,
        split: "test".into(),
        neighbor_split: "train".into(),
        val_portion: 1.0,
        seed: crate::task::SEED,
        eval_at: EvalAt::All,
        optimizer_state: OptimizerState::Carry,
        // The tiny random encoder's distances mean nothing: keep every neighbour.
        distance_threshold: None,
        nprobes: None,
        refine_factor: None,
        limit_docs: None,
        shard: Shard::ALL,
        device: args.device,
        precision: Precision::Fp32,
        method: Method::TttNn,
        select: Selection::Nn,
        sift_candidates: 200,
        sift: Sift::default(),
        alpha: None,
        alpha_docs: 20,
        in_context_order: ContextOrder::NearestLast,
    };
    let run_id = runner::run(&cfg, &db, None, &mut |e| {
        if let Event::Document {
            doc,
            record,
            bpb_before,
            bpb_after,
        } = e
        {
            say(format!(
                "doc {} {} ({}): bpb {bpb_before:.4} -> {bpb_after:.4} after {} neighbours",
                doc.seq + 1,
                doc.doc_id,
                doc.task,
                record.neighbors_used
            ));
        }
    })?;
    say(format!("run {run_id} recorded in {}", db_path.display()));
    let format = if args.json {
        sql::Format::Json
    } else {
        sql::Format::Table
    };
    sql::print_query(
        &db,
        sql::builtin("bpb_vs_k").unwrap_or_default(),
        &[run_id],
        format,
        None,
    )
}

fn doc_id(r: &corpus::Record) -> String {
    format!(
        "{}:{}",
        r.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        r.line
    )
}
