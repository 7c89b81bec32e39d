//! What recording a document costs when the results database is opened and closed around each
//! write (how `tttnn run` records, so others can read the file meanwhile) against one connection
//! held for the whole run (how it recorded before), in the same process on the same data: a
//! document of `--neighbors` neighbours and a curve point after each.
//!
//!     cargo run --example bench_records -- [--docs 200] [--neighbors 20] [--existing-docs 0]
use std::path::Path;
use std::time::Instant;

use tttnn::records::{CurveRecord, Db, DocRecord, NeighborRecord, NewRun};
use tttnn::task::Shard;

/// Per-document recording cost, held connection against open/close per document.
#[derive(clap::Parser)]
struct Args {
    /// Documents recorded per way.
    #[arg(long, default_value_t = 200)]
    docs: usize,
    /// Neighbours (and curve points) per document.
    #[arg(long, default_value_t = 20)]
    neighbors: usize,
    /// Documents already in the database before timing (a large results file).
    #[arg(long, default_value_t = 0)]
    existing_docs: usize,
}

fn new_run(db: &Db) -> i64 {
    db.create_run(&NewRun {
        name: Some("bench"),
        method: "ttt-nn".into(),
        selection: "nn".into(),
        task: "pile_all".into(),
        model: "m".into(),
        model_hash: "h".into(),
        encoder: None,
        store: "s".into(),
        store_version: 1,
        neighbors: 20,
        max_length: 1024,
        shard: Shard::ALL,
        lanes: 1,
        adapter: "full".into(),
        config: "{}".into(),
        defaults: "{}".into(),
    })
    .unwrap()
}

fn record(db: &Db, run: i64, i: usize, neighbors: usize) {
    let doc = DocRecord {
        doc_id: format!("test.jsonl:{i}"),
        task: "pile_github".into(),
        set_name: "Github".into(),
        seq: i,
        bytes: 4000,
        complete: true,
        neighbors_used: neighbors,
        ..Default::default()
    };
    let curve: Vec<CurveRecord> = (0..=neighbors)
        .map(|k| CurveRecord {
            k,
            pass: usize::from(k > 0),
            loglik: -2000.0 + k as f64,
        })
        .collect();
    let nbrs: Vec<NeighborRecord> = (1..=neighbors)
        .map(|rank| NeighborRecord {
            rank,
            neighbor_id: format!("train.jsonl:{}", i * 100 + rank),
            distance: 0.5,
            tokens: 900,
            chunks: 1,
            train_loss: Some(2.5),
            train_s: 1.0,
            eval_s: Some(0.5),
            jaccard13: Some(0.01),
            position: rank,
            pass: 1,
            k: rank,
        })
        .collect();
    db.record_doc(run, &doc, &curve, &nbrs).unwrap();
}

/// Mean milliseconds per document for `docs` documents recorded into the database at `path`.
fn time(path: &Path, args: &Args, reopen: bool) -> f64 {
    let held = Db::open(path).unwrap();
    let run = new_run(&held);
    let base = args.existing_docs + 1_000_000 * usize::from(reopen);
    let t = Instant::now();
    if reopen {
        drop(held);
        for i in 0..args.docs {
            let db = Db::open(path).unwrap();
            record(&db, run, base + i, args.neighbors);
        }
    } else {
        for i in 0..args.docs {
            record(&held, run, base + i, args.neighbors);
        }
    }
    1e3 * t.elapsed().as_secs_f64() / args.docs as f64
}

fn main() {
    let args: Args = clap::Parser::parse();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let path = dir.path().join(format!("r{round}.duckdb"));
        if args.existing_docs > 0 {
            let db = Db::open(&path).unwrap();
            let run = new_run(&db);
            for i in 0..args.existing_docs {
                record(&db, run, i, args.neighbors);
            }
        }
        let held = time(&path, &args, false);
        let reopened = time(&path, &args, true);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "round {round}: {} docs × {} neighbours (+{} already recorded): held connection {held:.2} ms/doc, open and close per doc {reopened:.2} ms/doc (+{:.2} ms), file {:.1} MB",
            args.docs,
            args.neighbors,
            args.existing_docs,
            reopened - held,
            size as f64 / 1e6
        );
    }
}
