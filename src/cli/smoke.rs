//! `tttnn smoke`: the whole stack end to end on the bundled tiny fixtures — a real TTT-NN loop
//! (embed → store → retrieve → train → evaluate → record) on random tiny models, in seconds.
use std::path::PathBuf;
use std::time::Instant;

use tttnn::corpus;
use tttnn::embed::Encoder;
use tttnn::ingest::Ingest;
use tttnn::records::{Db, Query};
use tttnn::runner::settings::{NeighborSearch, TestDocs};
use tttnn::runner::{self, Event, RunConfig};
use tttnn::store::Store;
use tttnn::task::Task;
use tttnn::{Device, Error, Result};

use super::sql::{print_query, Format};
use super::ui::Printer;

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
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let say = |m: String| p.say(format!("smoke: {m}"));
    let corpus_path = args.fixtures.join("corpus.jsonl");
    let records: Vec<corpus::Record> =
        corpus::Reader::open(&corpus_path)?.collect::<Result<_>>()?;
    // Every tenth document is a test document (up to --docs); the rest are the store's.
    let split_dir = args.out.join("corpus");
    std::fs::create_dir_all(&split_dir).map_err(|e| Error::io(&split_dir, e))?;
    let mut lines = [String::new(), String::new()];
    let mut tests = 0;
    for (i, r) in records.iter().enumerate() {
        let test = i % 10 == 0 && tests < args.docs;
        tests += usize::from(test);
        if i % 10 != 0 || test {
            let json = serde_json::json!({"text": r.text, "meta": {"pile_set_name": r.set_name}});
            lines[usize::from(test)] += &format!("{json}\n");
        }
    }
    let files = [split_dir.join("train.jsonl"), split_dir.join("test.jsonl")];
    for (file, text) in files.iter().zip(&lines) {
        std::fs::write(file, text).map_err(|e| Error::io(file, e))?;
    }
    say(format!(
        "{} documents in {}: {} in the store, {tests} test",
        records.len(),
        corpus_path.display(),
        records.len() - records.len().div_ceil(10)
    ));

    let t = Instant::now();
    // One device for the whole loop: the encoder runs where the LM does.
    let encoder_dir = args.fixtures.join("encoders/tiny-roberta");
    let mut encoder = Encoder::load(&encoder_dir, args.device)?;
    let store_path = args.out.join("store");
    if store_path.exists() {
        std::fs::remove_dir_all(&store_path).map_err(|e| Error::io(&store_path, e))?;
    }
    let store = Store::open_or_create(&store_path, encoder.dim())?;
    for (file, split) in files.iter().zip(["train", "test"]) {
        let ingest = Ingest {
            split: split.into(),
            batch_size: 16,
            ..Ingest::default()
        };
        ingest.run(
            &store,
            &mut encoder,
            std::slice::from_ref(file),
            &mut |_| {},
        )?;
    }
    say(format!(
        "embedded and stored {} documents with {} ({} dims) in {:.2}s",
        store.count()?,
        encoder.provider(),
        encoder.dim(),
        t.elapsed().as_secs_f64()
    ));
    drop(store);

    let db_path = args.out.join(super::DEFAULT_DB);
    let cfg = RunConfig {
        docs: TestDocs {
            task: Some(Task::All),
            val_portion: 1.0,
            ..RunConfig::default().docs
        },
        search: NeighborSearch {
            neighbors: args.neighbors,
            // The tiny random encoder's distances mean nothing: keep every neighbour.
            distance_threshold: None,
            ..RunConfig::default().search
        },
        name: Some("smoke".into()),
        store: Some(store_path),
        encoder: Some(encoder_dir),
        model: Some(args.fixtures.join("models/tiny-gpt2")),
        lr: args.lr,
        device: args.device,
        ..RunConfig::default()
    };
    let run_id = runner::run(&cfg, &db_path, None, &mut |e| {
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
        Format::Json
    } else {
        Format::Table
    };
    let db = Db::open_read_only(&db_path)?;
    print_query(&db, Query::BpbVsK.sql(), &[run_id], format, None)
}
