//! `tttnn run`: TTT-NN on a task, recorded in DuckDB. Settings: flag > `TTTNN_*` env > `--config`
//! TOML > default; `--resume RUN_ID` continues a killed run with the settings it was started with.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;

use crate::config;
use crate::error::{Error, Result};
use crate::lm::{Device, Precision};
use crate::records::Db;
use crate::runner::{self, ContextOrder, EvalAt, Event, Method, RunConfig};
use crate::select::{Selection, Sift};
use crate::store;
use crate::task::{Shard, Task, SEED};
use crate::ttt::OptimizerState;

/// Run TTT-NN on a task's test documents and record every number in DuckDB.
///
/// Per document: retrieve its nearest training documents, evaluate it (k = 0), train on each
/// neighbour nearest first (one AdamW step per max-length chunk), evaluate after each, reset.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML file with any of the settings below (snake_case keys); flags and env vars win.
    #[arg(long, env = "TTTNN_CONFIG")]
    pub config: Option<PathBuf>,
    /// LanceDB corpus store (from `tttnn ingest`), holding train and test documents.
    #[arg(long, env = "TTTNN_STORE")]
    pub store: Option<PathBuf>,
    /// Encoder directory the store was embedded with (checked and recorded).
    #[arg(long, env = "TTTNN_ENCODER")]
    pub encoder: Option<PathBuf>,
    /// HF model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "TTTNN_MODEL")]
    pub model: Option<PathBuf>,
    /// lm-eval task: pile_github, pile_wikipedia, ... or pile_all for every set in the store.
    #[arg(long, env = "TTTNN_TASK")]
    pub task: Option<Task>,
    /// Neighbours to train on per document [default: 50].
    #[arg(long, short = 'k', env = "TTTNN_NEIGHBORS")]
    pub neighbors: Option<usize>,
    /// AdamW learning rate [default: 2e-5, the paper's GPT-2 value].
    #[arg(long, env = "TTTNN_LR")]
    pub lr: Option<f64>,
    /// Tokens per training chunk [default: the model's context length].
    #[arg(long, env = "TTTNN_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Split the test documents come from [default: test].
    #[arg(long, env = "TTTNN_SPLIT")]
    pub split: Option<String>,
    /// Split neighbours are retrieved from [default: train].
    #[arg(long, env = "TTTNN_NEIGHBOR_SPLIT")]
    pub neighbor_split: Option<String>,
    /// Fraction of each task's shuffled test documents evaluated [default: 0.2].
    #[arg(long, env = "TTTNN_VAL_PORTION")]
    pub val_portion: Option<f64>,
    /// Seed of Python's random.Random(seed).shuffle over the test documents [default: 1216].
    #[arg(long, env = "TTTNN_SEED")]
    pub seed: Option<u64>,
    /// Evaluate after every neighbour (`all`) or only after these counts, e.g. 1,2,5,10,20,50.
    #[arg(long, env = "TTTNN_EVAL_AT")]
    pub eval_at: Option<EvalAt>,
    /// AdamW state across documents of a task: carry (the original) or reset (order-independent).
    #[arg(long, value_enum, env = "TTTNN_OPTIMIZER_STATE")]
    pub optimizer_state: Option<OptimizerState>,
    /// Drop neighbours farther than this unsquared L2 distance [default: 4.0, the original's].
    #[arg(long, env = "TTTNN_DISTANCE_THRESHOLD")]
    pub distance_threshold: Option<f32>,
    /// Keep every neighbour whatever its distance.
    #[arg(long, conflicts_with = "distance_threshold")]
    pub no_distance_threshold: bool,
    /// Search exactly (the paper's flat index; the default).
    #[arg(long, conflicts_with = "nprobes")]
    pub exact: bool,
    /// Search the IVF-PQ index probing this many partitions.
    #[arg(long, env = "TTTNN_NPROBES")]
    pub nprobes: Option<usize>,
    /// With --nprobes: re-rank this many times k candidates by exact distance; 0: none
    /// [default: 5].
    #[arg(long, env = "TTTNN_REFINE_FACTOR")]
    pub refine_factor: Option<u32>,
    /// At most this many documents per task, from the front of the shuffled subset.
    #[arg(long, env = "TTTNN_LIMIT_DOCS")]
    pub limit_docs: Option<usize>,
    /// This worker's share I/N: documents I, I+N, I+2N, ... of each task (as the original's ranks).
    #[arg(long, env = "TTTNN_SHARD")]
    pub shard: Option<Shard>,
    /// Results database (created if missing).
    #[arg(long, env = "TTTNN_DB")]
    pub db: Option<PathBuf>,
    /// Name for the run.
    #[arg(long, env = "TTTNN_NAME")]
    pub name: Option<String>,
    /// Where the LM runs [default: cpu].
    #[arg(long, value_enum, env = "TTTNN_DEVICE")]
    pub device: Option<Device>,
    /// fp32 (faithful, default) or bf16 (faster on GPUs; a departure).
    #[arg(long, value_enum, env = "TTTNN_PRECISION")]
    pub precision: Option<Precision>,
    /// ttt-nn (the paper), or a baseline: in-context, interpolate, dynamic-eval, none (base model).
    #[arg(long, value_enum, env = "TTTNN_METHOD")]
    pub method: Option<Method>,
    /// Neighbour selection: nn (nearest first, the paper) or sift (greedy variance reduction).
    #[arg(long, value_enum, env = "TTTNN_SELECT")]
    pub select: Option<Selection>,
    /// SIFT: nearest candidates to choose from [default: 200].
    #[arg(long, env = "TTTNN_SIFT_CANDIDATES")]
    pub sift_candidates: Option<usize>,
    /// SIFT: noise variance λ [default: 0.01].
    #[arg(long, env = "TTTNN_SIFT_LAMBDA")]
    pub sift_lambda: Option<f64>,
    /// Adaptive SIFT with this α: stop once σ_n > 1/(α·n).
    #[arg(long, env = "TTTNN_SIFT_ADAPTIVE")]
    pub sift_adaptive: Option<f64>,
    /// interpolate: fix α (weight of the neighbours' distribution) instead of choosing it per task.
    #[arg(long, env = "TTTNN_ALPHA")]
    pub alpha: Option<f64>,
    /// interpolate: held-out documents per task to choose α on [default: 20].
    #[arg(long, env = "TTTNN_ALPHA_DOCS")]
    pub alpha_docs: Option<usize>,
    /// in-context: nearest-last (as the paper describes) or original (the original code's tail).
    #[arg(long, value_enum, env = "TTTNN_IN_CONTEXT_ORDER")]
    pub in_context_order: Option<ContextOrder>,
    /// Continue run RUN_ID of --db with its recorded settings: recorded documents are kept.
    #[arg(long, value_name = "RUN_ID")]
    pub resume: Option<i64>,
    /// A line per neighbour.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// The settings a `--config` TOML file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    store: Option<PathBuf>,
    encoder: Option<PathBuf>,
    model: Option<PathBuf>,
    task: Option<Task>,
    neighbors: Option<usize>,
    lr: Option<f64>,
    max_length: Option<usize>,
    split: Option<String>,
    neighbor_split: Option<String>,
    val_portion: Option<f64>,
    seed: Option<u64>,
    eval_at: Option<EvalAt>,
    optimizer_state: Option<OptimizerState>,
    distance_threshold: Option<f32>,
    nprobes: Option<usize>,
    refine_factor: Option<u32>,
    limit_docs: Option<usize>,
    shard: Option<String>,
    db: Option<PathBuf>,
    name: Option<String>,
    device: Option<Device>,
    precision: Option<Precision>,
    method: Option<Method>,
    select: Option<Selection>,
    sift_candidates: Option<usize>,
    sift_lambda: Option<f64>,
    sift_adaptive: Option<f64>,
    alpha: Option<f64>,
    alpha_docs: Option<usize>,
    in_context_order: Option<ContextOrder>,
}

fn required<T>(value: Option<T>, field: &str) -> Result<T> {
    value.ok_or_else(|| Error::BadSetting {
        field: field.into(),
        message: format!(
            "missing: give --{} (or set it in --config)",
            field.replace('_', "-")
        ),
    })
}

/// Resolves flags, env and the TOML file's settings into a run config.
fn resolve(a: &Args, f: FileSettings) -> Result<RunConfig> {
    let shard = match (a.shard, f.shard) {
        (Some(s), _) => s,
        (None, Some(s)) => s.parse().map_err(|m| Error::BadSetting {
            field: "shard".into(),
            message: m,
        })?,
        (None, None) => Shard::ALL,
    };
    let model = required(a.model.clone().or(f.model), "model")?;
    let nprobes = if a.exact {
        None
    } else {
        a.nprobes.or(f.nprobes)
    };
    let distance_threshold = if a.no_distance_threshold {
        None
    } else {
        Some(config::pick(
            a.distance_threshold,
            f.distance_threshold,
            4.0,
        ))
    };
    let method = config::pick(a.method, f.method, Method::TttNn);
    let cfg = RunConfig {
        name: a.name.clone().or(f.name),
        store: required(a.store.clone().or(f.store), "store")?,
        encoder: a.encoder.clone().or(f.encoder),
        model,
        task: required(a.task.clone().or(f.task), "task")?,
        // The base model alone has no neighbours; its one curve point is k = 0.
        neighbors: if method == Method::None {
            0
        } else {
            config::pick(a.neighbors, f.neighbors, 50)
        },
        lr: config::pick(a.lr, f.lr, 2e-5),
        max_length: a.max_length.or(f.max_length),
        split: config::pick(a.split.clone(), f.split, "test".into()),
        neighbor_split: config::pick(a.neighbor_split.clone(), f.neighbor_split, "train".into()),
        val_portion: config::pick(a.val_portion, f.val_portion, 0.2),
        seed: config::pick(a.seed, f.seed, SEED),
        eval_at: config::pick(a.eval_at.clone(), f.eval_at, EvalAt::All),
        optimizer_state: config::pick(a.optimizer_state, f.optimizer_state, OptimizerState::Carry),
        distance_threshold,
        nprobes,
        refine_factor: nprobes
            .map(|_| {
                config::pick(
                    a.refine_factor,
                    f.refine_factor,
                    store::DEFAULT_REFINE_FACTOR,
                )
            })
            .filter(|&r| r > 0),
        limit_docs: a.limit_docs.or(f.limit_docs),
        shard,
        device: config::pick(a.device, f.device, Device::Cpu),
        precision: config::pick(a.precision, f.precision, Precision::Fp32),
        method,
        select: config::pick(a.select, f.select, Selection::Nn),
        sift_candidates: config::pick(a.sift_candidates, f.sift_candidates, 200),
        sift: Sift {
            lambda: config::pick(a.sift_lambda, f.sift_lambda, Sift::default().lambda),
            adaptive: a.sift_adaptive.or(f.sift_adaptive),
        },
        alpha: a.alpha.or(f.alpha),
        alpha_docs: config::pick(a.alpha_docs, f.alpha_docs, 20),
        in_context_order: config::pick(
            a.in_context_order,
            f.in_context_order,
            ContextOrder::NearestLast,
        ),
    };
    Ok(cfg)
}

/// Runs the subcommand.
pub fn run(args: Args, quiet: bool) -> Result<()> {
    let file: FileSettings = config::load_toml(args.config.as_deref())?;
    let db_path = config::pick(
        args.db.clone(),
        file.db.clone(),
        PathBuf::from("results.duckdb"),
    );
    let (cfg, db, resume) = match args.resume {
        Some(id) => {
            let db = Db::open(&db_path)?;
            let (status, json) = db
                .run_config(id)?
                .ok_or_else(|| Error::bad_file(&db_path, format!("has no run {id} to resume")))?;
            if status == "finished" {
                eprintln!("run {id} in {} is already finished", db_path.display());
                return Ok(());
            }
            let cfg: RunConfig = serde_json::from_str(&json).map_err(|e| {
                Error::bad_file(
                    &db_path,
                    format!("run {id} has a config this tttnn cannot read: {e}"),
                )
            })?;
            (cfg, db, Some(id))
        }
        // Settings are checked before the database is created.
        None => (resolve(&args, file)?, Db::open(&db_path)?, None),
    };
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} docs {elapsed} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        b
    });
    let say = |m: String| {
        if !quiet {
            match &bar {
                Some(b) => b.println(m),
                None => eprintln!("{m}"),
            }
        }
    };
    let start = Instant::now();
    let (mut before, mut after, mut bytes, mut docs) = (0.0, 0.0, 0u64, 0usize);
    let mut on_event = |e: Event| match e {
        Event::Started {
            run_id,
            total,
            done,
        } => {
            say(format!(
                "run {run_id}: {} on {} documents of {} ({} already recorded), k={}, results in {}",
                cfg.task,
                total,
                cfg.store.display(),
                done,
                cfg.neighbors,
                db_path.display()
            ));
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
                b.reset_eta();
            }
        }
        Event::Neighbor {
            doc,
            rank,
            record,
            bits_per_byte,
        } => {
            if args.verbose {
                say(format!(
                    "  {} k={rank} {} d={:.4} tokens={} chunks={} loss={:.4} train {:.2}s{}",
                    doc.doc_id,
                    record.neighbor_id,
                    record.distance,
                    record.tokens,
                    record.chunks,
                    record.train_loss.unwrap_or(f64::NAN),
                    record.train_s,
                    bits_per_byte
                        .map(|b| format!(" bpb {b:.4}"))
                        .unwrap_or_default()
                ));
            }
        }
        Event::Document {
            doc,
            record,
            bpb_before,
            bpb_after,
        } => {
            if record.complete {
                before += bpb_before * record.bytes as f64;
                after += bpb_after * record.bytes as f64;
                bytes += record.bytes;
            }
            docs += 1;
            let mean = if bytes > 0 {
                format!(
                    "mean bpb {:.4} -> {:.4}",
                    before / bytes as f64,
                    after / bytes as f64
                )
            } else {
                String::new()
            };
            match &bar {
                Some(b) => {
                    b.inc(1);
                    b.set_message(mean);
                }
                None => say(format!(
                    "doc {} ({} #{}) {}: bpb {bpb_before:.4} -> {bpb_after:.4} with {} neighbours{} [{:.1}s elapsed] {mean}",
                    doc.seq + 1,
                    doc.task,
                    doc.position,
                    doc.doc_id,
                    record.neighbors_used,
                    if record.complete { "" } else { " (incomplete: excluded)" },
                    start.elapsed().as_secs_f64(),
                )),
            }
        }
    };
    let run_id = runner::run(&cfg, &db, resume, &mut on_event)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    say(format!(
        "run {run_id} finished: {docs} documents in {:.1}s; tables: tttnn sql table1 --db {} --run {run_id}",
        start.elapsed().as_secs_f64(),
        db_path.display()
    ));
    super::sql::print_query(
        &db,
        super::sql::builtin("table1").unwrap_or_default(),
        &[run_id],
        super::sql::Format::Table,
        None,
    )
}
