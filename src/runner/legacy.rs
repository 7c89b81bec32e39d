//! The sequential path as it was before the engine (issue #28), kept under `cfg(test)` only as the
//! gate the engine's single backend must pass bit for bit; deleted once it does.
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use super::outcome::{neighbor_record, Outcome};
use super::plan::{self, PlannedDoc};
use super::retrieve::{Retrieved, Retriever};
use super::settings::{Method, RunConfig};
use crate::error::Result;
use crate::eval::{self, NGrams};
use crate::lm::LanguageModel;
use crate::records::{Db, NeighborRecord, NewRun};
use crate::store::{Neighbor, Store};
use crate::ttt::{OptimizerState, TextTraining, Trainer};

fn scored(lm: &LanguageModel, text: &str) -> Result<Outcome> {
    let t = Instant::now();
    let mut out = Outcome::unscored(eval::loglikelihood(lm, text)?);
    out.curve.push((0, out.score.loglik));
    out.eval_s = t.elapsed().as_secs_f64();
    Ok(out)
}

struct Step<'a> {
    record: NeighborRecord,
    trained: &'a TextTraining,
    train_s: f64,
}

fn after_step(
    cfg: &RunConfig,
    lm: &LanguageModel,
    out: &mut Outcome,
    step: Step,
    last: usize,
    text: &str,
) -> Result<()> {
    let Step {
        mut record,
        trained,
        train_s,
    } = step;
    out.book_training(&mut record, trained, train_s);
    if cfg.eval_at.includes(record.rank, last) {
        let t = Instant::now();
        let score = eval::loglikelihood(lm, text)?;
        out.book_score(&mut record, score.loglik, t.elapsed().as_secs_f64());
    }
    out.neighbors.push(record);
    Ok(())
}

fn ttt_nn(
    cfg: &RunConfig,
    lm: &LanguageModel,
    trainer: &mut Trainer,
    text: &str,
    neighbors: &[Neighbor],
) -> Result<Outcome> {
    let mut out = scored(lm, text)?;
    let last = neighbors.len();
    for (r, nb) in neighbors.iter().enumerate() {
        let t = Instant::now();
        let trained = trainer.train_on_text(lm, &nb.text)?;
        let step = Step {
            record: neighbor_record(r + 1, nb),
            trained: &trained,
            train_s: t.elapsed().as_secs_f64(),
        };
        after_step(cfg, lm, &mut out, step, last, text)?;
    }
    out.complete = neighbors.len() == cfg.neighbors;
    Ok(out)
}

fn dynamic_eval(
    cfg: &RunConfig,
    lm: &LanguageModel,
    trainer: &mut Trainer,
    doc: &PlannedDoc,
    text: &str,
) -> Result<Outcome> {
    let (prefix, rest) = eval::split_text(lm, text)?;
    let prefix_tokens = lm.encode(&prefix)?;
    let mut out = scored(lm, &rest)?;
    let iterations = cfg.neighbors;
    for iteration in 1..=iterations {
        let t = Instant::now();
        let trained = trainer.train_on_tokens(lm, &prefix_tokens)?;
        let step = Step {
            record: NeighborRecord {
                rank: iteration,
                neighbor_id: doc.doc_id.clone(),
                ..Default::default()
            },
            trained: &trained,
            train_s: t.elapsed().as_secs_f64(),
        };
        after_step(cfg, lm, &mut out, step, iterations, &rest)?;
    }
    Ok(out)
}

fn record(
    cfg: &RunConfig,
    db: &Path,
    run_id: i64,
    doc: &PlannedDoc,
    retrieved: &Retrieved,
    outcome: &mut Outcome,
) -> Result<()> {
    let (text, neighbors) = (&retrieved.text, &retrieved.neighbors);
    if cfg.select.is_sift() {
        let &(k, last) = outcome.curve.last().expect("the curve starts at k = 0");
        let points = (k + 1..=cfg.neighbors).filter(|&p| cfg.eval_at.includes(p, cfg.neighbors));
        outcome.curve.extend(points.map(|p| (p, last)));
        outcome.complete = true;
    }
    if cfg.method.uses_neighbors() {
        let grams = NGrams::new(text);
        for r in &mut outcome.neighbors {
            let nb = &neighbors[r.rank - 1];
            r.jaccard13 = Some(grams.jaccard(&NGrams::new(&nb.text)));
        }
    }
    let rec = outcome.record(doc, retrieved.retrieval_s);
    Db::open(db)?.record_doc(run_id, &rec, &outcome.curve, &outcome.neighbors)
}

/// The old sequential run (TTT-NN and dynamic evaluation, fresh runs only).
pub(super) fn run(cfg: &RunConfig, db_path: &Path) -> Result<i64> {
    let cfg = &cfg.clone().normalized()?;
    let store = Store::open(cfg.store()?)?;
    let plan = plan::plan_store(
        &store,
        &plan::Selection {
            task: cfg.task()?,
            split: &cfg.split,
            val_portion: cfg.val_portion,
            seed: cfg.seed,
            limit_docs: cfg.limit_docs,
            shard: cfg.shard,
        },
    )?;
    let lm = LanguageModel::load_with(cfg.model()?, cfg.device, cfg.lora().as_ref())?;
    let mut trainer = Trainer::new(&lm, super::backend::train_config(cfg, &lm))?;
    let run_id = Db::open(db_path)?.create_run(&NewRun {
        name: None,
        method: "legacy".into(),
        selection: "nn".into(),
        task: cfg.task()?.to_string(),
        model: String::new(),
        model_hash: String::new(),
        encoder: None,
        store: String::new(),
        store_version: 0,
        neighbors: cfg.neighbors,
        max_length: 0,
        shard: cfg.shard,
        lanes: 1,
        adapter: String::new(),
        config: cfg.to_json()?,
        defaults: RunConfig::default().to_json()?,
    })?;
    let retriever = Retriever {
        cfg,
        store,
        table: None,
    };
    let done: HashSet<usize> = HashSet::new();
    for (i, doc) in plan.iter().enumerate() {
        if done.contains(&doc.seq) {
            continue;
        }
        let starts_task = i == 0 || plan[i - 1].task_index != doc.task_index;
        if starts_task && cfg.method.trains() {
            trainer.reset_optimizer();
        }
        tch::manual_seed(doc.seed(cfg.seed));
        let retrieved = retriever.retrieve(doc)?;
        let mut outcome = match cfg.method {
            Method::TttNn => ttt_nn(
                cfg,
                &lm,
                &mut trainer,
                &retrieved.text,
                &retrieved.neighbors,
            )?,
            Method::DynamicEval => dynamic_eval(cfg, &lm, &mut trainer, doc, &retrieved.text)?,
            other => unreachable!("the gate covers the training methods, not {other:?}"),
        };
        trainer.finish_document(cfg.optimizer_state);
        record(cfg, db_path, run_id, doc, &retrieved, &mut outcome)?;
        if cfg.optimizer_state == OptimizerState::Carry {
            // The state round trip the old path made after every document.
            let state = db_path.with_extension(format!("{run_id}.optimizer"));
            trainer.save_optimizer(&state, doc.seq as i64)?;
        }
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
        RunConfig {
            store: Some(store().to_path_buf()),
            model: Some(model.to_path_buf()),
            task: Some(Task::All),
            neighbors: 3,
            limit_docs: Some(2),
            val_portion: 1.0,
            lr: 1e-3,
            no_distance_threshold: true,
            ..RunConfig::default()
        }
    }

    #[test]
    fn the_single_backend_is_bit_identical_to_the_old_sequential_path() {
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
        // GPT-2 with dropout 0.1, one-token chunks (both rules) and LoRA.
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
            "lora",
            RunConfig {
                adapter: super::super::Adapter::Lora,
                lora_rank: 2,
                ..base(&fixtures().join("models/tiny-llama"))
            },
        );
    }
}
