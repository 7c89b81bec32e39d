//! The paper's one schedule as tttnn ran it before neighbour schedules (issue #39): one document
//! at a time, each neighbour once, nearest first, one AdamW step per chunk at the configured
//! learning rate (`Trainer::legacy_train_on_tokens`, the step as it was), scored after each
//! evaluation point. Kept under `cfg(test)` only as the gate the engine must pass bit for bit with
//! the schedules' defaults (as commit 907cc18 gated the engine); deleted once it does.
use std::path::Path;
use std::time::Instant;

use super::plan;
use super::retrieve::Retriever;
use super::settings::{serde_name, Method, RunConfig};
use crate::error::Result;
use crate::eval::{self, NGrams};
use crate::lm::LanguageModel;
use crate::records::{CurveRecord, Db, DocRecord, NeighborRecord, NewRun};
use crate::store::Store;
use crate::ttt::{OptimizerState, TrainConfig, Trainer};

/// Runs `cfg` (single backend, nearest neighbours) the old way, recorded in `db_path`.
pub(super) fn run(cfg: &RunConfig, db_path: &Path) -> Result<i64> {
    let cfg = &cfg.clone().normalized()?;
    let store = Store::open(cfg.store()?)?;
    let plan = plan::plan_store(&store, &plan::Selection::of(&cfg.docs)?)?;
    let lm = LanguageModel::load_with(cfg.model()?, cfg.device, cfg.lora().as_ref())?;
    let train = TrainConfig {
        lr: cfg.lr,
        max_length: cfg.max_length.unwrap_or(lm.n_ctx),
        precision: cfg.precision,
        short_chunks: cfg.short_chunks,
        dropout: cfg.dropout,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&lm, train)?;
    let db = Db::open(db_path)?;
    let run_id = db.create_run(&NewRun {
        name: None,
        method: serde_name(&cfg.method),
        selection: serde_name(&cfg.select),
        task: cfg.task()?.to_string(),
        model: cfg.model()?.display().to_string(),
        model_hash: String::new(),
        encoder: None,
        store: store.path().display().to_string(),
        store_version: store.version()?,
        neighbors: cfg.search.neighbors,
        max_length: train.max_length,
        shard: cfg.docs.shard,
        lanes: 1,
        adapter: "full".into(),
        config: cfg.to_json()?,
        defaults: RunConfig::default().to_json()?,
    })?;
    let retriever = Retriever {
        cfg,
        store,
        table: None,
    };
    for (i, doc) in plan.iter().enumerate() {
        if i == 0 || plan[i - 1].task_index != doc.task_index {
            trainer.reset_optimizer();
        }
        tch::manual_seed(doc.seed(cfg.docs.seed));
        let retrieved = retriever.retrieve(doc)?;
        let (text, passes): (String, Vec<(NeighborRecord, Vec<i64>)>) = match cfg.method {
            Method::DynamicEval => {
                let (prefix, rest) = eval::split_text(&lm, &retrieved.text)?;
                let tokens = lm.encode(&prefix)?;
                let passes = (1..=cfg.search.neighbors)
                    .map(|rank| {
                        let record = NeighborRecord {
                            rank,
                            neighbor_id: doc.doc_id.clone(),
                            ..Default::default()
                        };
                        (record, tokens.clone())
                    })
                    .collect();
                (rest, passes)
            }
            _ => {
                let mut passes = Vec::new();
                for (r, nb) in retrieved.neighbors.iter().enumerate() {
                    let record = NeighborRecord {
                        rank: r + 1,
                        neighbor_id: nb.id.clone(),
                        distance: f64::from(nb.distance),
                        ..Default::default()
                    };
                    passes.push((record, lm.encode(&nb.text)?));
                }
                (retrieved.text.clone(), passes)
            }
        };
        let base = eval::loglikelihood(&lm, &text)?;
        let point = |k, loglik| CurveRecord { k, pass: 1, loglik };
        let mut curve = vec![point(0, base.loglik)];
        let (mut steps, mut skipped) = (0, 0);
        let mut records = Vec::new();
        let last = passes.len();
        for (mut record, tokens) in passes {
            let t = Instant::now();
            let trained = trainer.legacy_train_on_tokens(&lm, &tokens)?;
            record.train_s = t.elapsed().as_secs_f64();
            steps += trained.steps;
            skipped += trained.skipped_short + trained.skipped_nonfinite;
            record.tokens = trained.tokens;
            record.chunks = trained.chunks;
            record.train_loss = Some(trained.mean_loss);
            if cfg.eval_at.includes(record.rank, last) {
                curve.push(point(record.rank, eval::loglikelihood(&lm, &text)?.loglik));
                record.eval_s = Some(0.0);
            }
            records.push(record);
        }
        if cfg.method.uses_neighbors() {
            let grams = NGrams::new(&retrieved.text);
            for r in &mut records {
                let nb = &retrieved.neighbors[r.rank - 1];
                r.jaccard13 = Some(grams.jaccard(&NGrams::new(&nb.text)));
            }
        }
        trainer.reset_weights();
        if cfg.optimizer_state == OptimizerState::Reset {
            trainer.reset_optimizer();
        }
        let record = DocRecord {
            doc_id: doc.doc_id.clone(),
            task: doc.task.clone(),
            set_name: doc.set_name.clone(),
            position: doc.position,
            seq: doc.seq,
            bytes: base.bytes,
            words: base.words,
            tokens: base.tokens as usize,
            neighbors_used: records.len(),
            complete: cfg.method != Method::TttNn
                || retrieved.neighbors.len() == cfg.search.neighbors,
            train_steps: steps,
            skipped_chunks: skipped,
            max_jaccard13: records.iter().filter_map(|n| n.jaccard13).reduce(f64::max),
            ..Default::default()
        };
        db.record_doc(run_id, &record, &curve, &records)?;
    }
    Ok(run_id)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;
    use crate::embed::Encoder;
    use crate::ingest::Ingest;
    use crate::task::Task;
    use crate::ttt::{Dropout, ShortChunks};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// The fixture corpus, every fourth document a test document, ingested once.
    fn store() -> &'static Path {
        static STORE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
        &STORE
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let corpus = std::fs::read_to_string(fixtures().join("corpus.jsonl")).unwrap();
                let (mut train, mut test) = (String::new(), String::new());
                for (i, l) in corpus.lines().enumerate() {
                    let out = if i % 4 == 1 { &mut test } else { &mut train };
                    out.push_str(l);
                    out.push('\n');
                }
                let path = dir.path().join("store");
                let mut encoder = Encoder::load(
                    &fixtures().join("encoders/tiny-roberta"),
                    crate::Device::Cpu,
                )
                .unwrap();
                let store = Store::open_or_create(&path, encoder.dim()).unwrap();
                for (split, text) in [("train", train), ("test", test)] {
                    let file = dir.path().join(format!("{split}.jsonl"));
                    std::fs::write(&file, text).unwrap();
                    let ingest = Ingest {
                        split: split.into(),
                        ..Ingest::default()
                    };
                    ingest
                        .run(&store, &mut encoder, &[file], &mut |_| {})
                        .unwrap();
                }
                (dir, path)
            })
            .1
    }

    /// Every row a run recorded but its timings, bit for bit (f64s by their bits).
    fn rows(db: &Path, run: i64) -> Vec<String> {
        let conn = duckdb::Connection::open(db).unwrap();
        let mut out = Vec::new();
        for (n, query) in [
            (
                10,
                "SELECT doc_id, seq, bytes, words, tokens, neighbors_used, complete, train_steps,
                    skipped_chunks, max_jaccard13 FROM docs WHERE run_id = ? ORDER BY seq",
            ),
            (
                3,
                "SELECT doc_id, k, loglik FROM curve WHERE run_id = ? ORDER BY doc_id, k",
            ),
            (
                9,
                "SELECT doc_id, rank, neighbor_id, distance, tokens, chunks, train_loss, jaccard13,
                    eval_s IS NULL FROM neighbors WHERE run_id = ? ORDER BY doc_id, rank",
            ),
        ] {
            let mut stmt = conn.prepare(query).unwrap();
            let mut q = stmt.query([run]).unwrap();
            while let Some(r) = q.next().unwrap() {
                let row: Vec<String> = (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        duckdb::types::ValueRef::Double(f) => format!("{:x}", f.to_bits()),
                        v => format!("{:?}", v.to_owned()),
                    })
                    .collect();
                out.push(row.join("|"));
            }
        }
        out
    }

    fn gate(name: &str, cfg: RunConfig) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let (old_db, new_db) = (dir.path().join("old.duckdb"), dir.path().join("new.duckdb"));
        let old = run(&cfg, &old_db).unwrap();
        let new = super::super::run(&cfg, &new_db, None, &mut |_| {}).unwrap();
        let (want, got) = (rows(&old_db, old), rows(&new_db, new));
        assert!(
            want.len() > 10,
            "{name}: the run recorded {} rows",
            want.len()
        );
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w, g, "{name}");
        }
        assert_eq!(want.len(), got.len(), "{name}");
        eprintln!("{name}: {} rows bit-identical", want.len());
        got
    }

    fn base(model: &Path) -> RunConfig {
        let mut cfg = RunConfig {
            store: Some(store().to_path_buf()),
            model: Some(model.to_path_buf()),
            lr: 1e-3,
            ..RunConfig::default()
        };
        cfg.docs.task = Some(Task::All);
        cfg.docs.limit_docs = Some(2);
        cfg.docs.val_portion = 1.0;
        cfg.search.neighbors = 3;
        cfg.search.no_distance_threshold = true;
        cfg
    }

    #[test]
    fn the_defaults_are_bit_identical_to_the_paper_schedule_as_it_ran() {
        let mut plain = Vec::new();
        for family in ["tiny-gpt2", "tiny-gptneo", "tiny-llama", "tiny-qwen2"] {
            let model = fixtures().join("models").join(family);
            for method in [Method::TttNn, Method::DynamicEval] {
                for state in [OptimizerState::Carry, OptimizerState::Reset] {
                    let cfg = RunConfig {
                        method,
                        optimizer_state: state,
                        ..base(&model)
                    };
                    let rows = gate(&format!("{family} {method:?} {state:?}"), cfg);
                    if family == "tiny-gpt2" && method == Method::TttNn {
                        plain.push(rows);
                    }
                }
            }
        }
        // GPT-2 with dropout 0.1, one-token chunks (both rules), evaluation points and LoRA.
        let dir = tempfile::tempdir().unwrap();
        let dropout = dir.path().join("tiny-gpt2-dropout");
        std::fs::create_dir_all(&dropout).unwrap();
        for f in std::fs::read_dir(fixtures().join("models/tiny-gpt2")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dropout.join(f.file_name())).unwrap();
        }
        let config = dropout.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        for key in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] {
            c[key] = 0.1.into();
        }
        std::fs::write(&config, c.to_string()).unwrap();
        let with_dropout = gate(
            "dropout 0.1",
            RunConfig {
                dropout: Dropout::Model,
                ..base(&dropout)
            },
        );
        assert_ne!(with_dropout, plain[0], "dropout draws masks");
        let gpt2 = fixtures().join("models/tiny-gpt2");
        for short_chunks in [ShortChunks::Step, ShortChunks::Skip] {
            // 5-token chunks leave one-token chunks at the ends of some texts.
            let rows = gate(
                &format!("one-token chunks {short_chunks:?}"),
                RunConfig {
                    max_length: Some(5),
                    short_chunks,
                    ..base(&gpt2)
                },
            );
            if short_chunks == ShortChunks::Skip {
                // docs rows: skipped_chunks is the ninth column.
                let skipped = rows.iter().filter(|r| r.split('|').count() == 10);
                let any = skipped
                    .clone()
                    .any(|r| r.split('|').nth(8) != Some("BigInt(0)"));
                assert!(any, "no one-token chunk: {:?}", skipped.collect::<Vec<_>>());
            }
        }
        gate(
            "evaluation points",
            RunConfig {
                eval_at: "2".parse().unwrap(),
                ..base(&gpt2)
            },
        );
        gate(
            "lora",
            RunConfig {
                adapter: super::super::Adapter::Lora,
                lora_rank: 2,
                ..base(&fixtures().join("models/tiny-llama"))
            },
        );
    }
}
