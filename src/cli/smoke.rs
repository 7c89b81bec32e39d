//! `tttnn smoke`: the whole stack end to end on the bundled tiny fixtures — a real TTT-NN loop
//! (embed → store → retrieve → train → evaluate → record) on random tiny models, in seconds.
use std::path::{Path, PathBuf};
use std::time::Instant;

use duckdb::params;

use crate::corpus;
use crate::embed::{self, Encoder};
use crate::error::{Error, Result};
use crate::eval;
use crate::lm::{Device, LanguageModel};
use crate::records::Db;
use crate::store::{Document, SearchMode, Store};
use crate::ttt::{TrainConfig, Trainer};

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
    /// Where the LM runs.
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
    let mut encoder = Encoder::load(
        &args.fixtures.join("encoders/tiny-roberta"),
        embed::Device::Cpu,
    )?;
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
        .map(|r| Document {
            id: doc_id(r),
            split: "train".into(),
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

    let lm = LanguageModel::load(&args.fixtures.join("models/tiny-gpt2"), args.device)?;
    let config = TrainConfig {
        lr: args.lr,
        max_length: lm.n_ctx,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&lm, config)?;
    let db_path = args.out.join("results.duckdb");
    let db = Db::open(&db_path)?;
    let conn = db.connection();
    let rec = |e: duckdb::Error| Error::Records {
        path: db_path.clone(),
        source: e,
    };
    let run_config = serde_json::json!({"neighbors": args.neighbors, "docs": args.docs, "train": config, "device": args.device});
    let run_id: i64 = conn
        .query_row(
            "INSERT INTO runs (name, method, status, task, model, encoder, store, neighbors, lr, max_length, device, encoder_provider, config, tttnn_version)
             VALUES ('smoke', 'ttt-nn', 'running', 'fixtures', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            params![
                lm.dir.display().to_string(),
                args.fixtures.join("encoders/tiny-roberta").display().to_string(),
                store_path.display().to_string(),
                args.neighbors as i64,
                args.lr,
                config.max_length as i64,
                format!("{:?}", args.device).to_lowercase(),
                encoder.provider(),
                run_config.to_string(),
                crate::VERSION
            ],
            |r| r.get(0),
        )
        .map_err(rec)?;

    for (n, r) in test.iter().enumerate() {
        let id = doc_id(r);
        let t = Instant::now();
        let neighbors =
            rt.block_on(store.nearest(by_line(r), args.neighbors, SearchMode::Exact))?;
        let retrieval_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let base = eval::loglikelihood(&lm, &r.text)?;
        let mut eval_s = t.elapsed().as_secs_f64();
        let mut train_s = 0.0;
        let mut curve = vec![base.loglik];
        let mut trained = Vec::new();
        for nb in &neighbors {
            let t = Instant::now();
            trained.push(trainer.train_on_text(&lm, &nb.text)?);
            train_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            curve.push(eval::loglikelihood(&lm, &r.text)?.loglik);
            eval_s += t.elapsed().as_secs_f64();
        }
        trainer.reset_weights();
        let tx = |sql: &str| conn.execute_batch(sql).map_err(rec);
        tx("BEGIN TRANSACTION")?;
        conn.execute(
            "INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                run_id,
                id,
                r.set_name,
                base.bytes as i64,
                base.words as i64,
                base.tokens as i64,
                neighbors.len() as i64,
                neighbors.len() == args.neighbors,
                retrieval_s,
                train_s,
                eval_s
            ],
        )
        .map_err(rec)?;
        {
            let mut app = conn.appender("curve").map_err(rec)?;
            for (k, ll) in curve.iter().enumerate() {
                app.append_row(params![run_id, id, k as i64, ll])
                    .map_err(rec)?;
            }
            let mut app = conn.appender("neighbors").map_err(rec)?;
            for (rank, (nb, tr)) in neighbors.iter().zip(&trained).enumerate() {
                app.append_row(params![
                    run_id,
                    id,
                    rank as i64 + 1,
                    nb.id,
                    nb.distance as f64,
                    tr.tokens as i64,
                    tr.chunks as i64,
                    tr.mean_loss
                ])
                .map_err(rec)?;
            }
        }
        tx("COMMIT")?;
        say(format!(
            "doc {}/{} {id} ({}): bpb {:.4} -> {:.4} after {} neighbours (nearest {} at {:.4})",
            n + 1,
            test.len(),
            r.set_name.as_deref().unwrap_or("?"),
            bpb(curve[0], base.bytes),
            bpb(*curve.last().unwrap_or(&curve[0]), base.bytes),
            neighbors.len(),
            neighbors.first().map(|n| n.id.as_str()).unwrap_or("-"),
            neighbors.first().map(|n| n.distance).unwrap_or(f32::NAN),
        ));
    }
    conn.execute(
        "UPDATE runs SET status = 'finished', finished_at = current_timestamp WHERE id = ?",
        params![run_id],
    )
    .map_err(rec)?;
    print_curve(&db, run_id, args.json)?;
    say(format!("run {run_id} recorded in {}", db_path.display()));
    Ok(())
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

fn bpb(loglik: f64, bytes: u64) -> f64 {
    -loglik / bytes as f64 / std::f64::consts::LN_2
}

/// Prints bits per byte against k for a run, over its complete documents.
fn print_curve(db: &Db, run_id: i64, json: bool) -> Result<()> {
    let path: &Path = db.path();
    let rec = |e: duckdb::Error| Error::Records {
        path: path.to_path_buf(),
        source: e,
    };
    let mut stmt = db
        .connection()
        .prepare(
            "SELECT c.k, count(*) AS docs, -sum(c.loglik) / sum(d.bytes) / ln(2) AS bits_per_byte
             FROM curve c JOIN docs d USING (run_id, doc_id)
             WHERE c.run_id = ? AND d.complete GROUP BY c.k ORDER BY c.k",
        )
        .map_err(rec)?;
    let rows: Vec<(i64, i64, f64)> = stmt
        .query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(rec)?
        .collect::<std::result::Result<_, _>>()
        .map_err(rec)?;
    if json {
        let v: Vec<_> = rows.iter().map(|(k, d, b)| serde_json::json!({"run_id": run_id, "k": k, "docs": d, "bits_per_byte": b})).collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!("{:>3} {:>5} {:>14}", "k", "docs", "bits_per_byte");
        for (k, d, b) in rows {
            println!("{k:>3} {d:>5} {b:>14.4}");
        }
    }
    Ok(())
}
