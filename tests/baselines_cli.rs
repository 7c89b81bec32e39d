//! The baselines (`--method none|in-context|interpolate|dynamic-eval`) and SIFT selection from the
//! CLI on the tiny fixtures, each checked by a property that fails if it is wrong.
mod common;

use common::{ok, tttnn};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tttnn::eval;
use tttnn::lm::{Device, LanguageModel};
use tttnn::records::Db;
use tttnn::store::{Retrieval, SearchMode, Store};

fn model() -> PathBuf {
    common::fixtures().join("models/tiny-gpt2")
}

/// A store of short documents (they fit the tiny GPT-2's 64-token window with room for context):
/// every fourth is a test document.
fn build_store(dir: &Path) -> PathBuf {
    let texts: Vec<(String, String)> =
        std::fs::read_to_string(common::fixtures().join("corpus.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["text"].as_str().unwrap().to_string(),
                    v["meta"]["pile_set_name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    let (mut train, mut test) = (String::new(), String::new());
    for (i, (text, set)) in texts.iter().enumerate() {
        let short: String = text.chars().take(40).collect();
        let line =
            serde_json::json!({"text": format!("{short} {i}"), "meta": {"pile_set_name": set}})
                .to_string();
        let out = if i % 4 == 1 { &mut test } else { &mut train };
        out.push_str(&line);
        out.push('\n');
    }
    common::ingest_splits(dir, &train, &test)
}

fn run(store: &Path, db: &Path, args: &[&str]) -> String {
    ok(tttnn()
        .args([
            "run",
            "--quiet",
            "--task",
            "pile_github",
            "--lr",
            "1e-3",
            "--val-portion",
            "0.5",
            "--no-distance-threshold",
            "--store",
        ])
        .arg(store)
        .arg("--model")
        .arg(model())
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap())
}

/// doc → (k → loglik) of a run.
fn curves(db: &Path, run: i64) -> BTreeMap<String, BTreeMap<i64, f64>> {
    let db = Db::open_read_only(db).unwrap();
    let mut stmt = db
        .connection()
        .prepare("SELECT doc_id, k, loglik FROM curve WHERE run_id = ?")
        .unwrap();
    let mut out: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for row in stmt
        .query_map([run], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, f64>(2)?,
            ))
        })
        .unwrap()
    {
        let (d, k, ll) = row.unwrap();
        out.entry(d).or_default().insert(k, ll);
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

fn text_of(store: &Path, id: &str) -> (Vec<f32>, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(Store::open(store)).unwrap();
    rt.block_on(s.document(id)).unwrap().unwrap()
}

#[test]
fn baselines_reduce_to_the_base_model_and_sit_side_by_side_in_table1() {
    let dir = tempfile::tempdir().unwrap();
    let store = build_store(dir.path());
    let db = dir.path().join("r.duckdb");
    let lm = LanguageModel::load(&model(), Device::Cpu).unwrap();

    // 1: none = the base model at k = 0.
    run(&store, &db, &["--method", "none"]);
    let base = curves(&db, 1);
    assert!(!base.is_empty());
    for (doc, c) in &base {
        assert_eq!(c.keys().copied().collect::<Vec<_>>(), vec![0]);
        let want = eval::loglikelihood(&lm, &text_of(&store, doc).1)
            .unwrap()
            .loglik;
        assert!(close(c[&0], want), "{doc}");
    }

    // 2: interpolate with α = 0 is the base model at every k.
    run(
        &store,
        &db,
        &["--method", "interpolate", "--alpha", "0", "-k", "3"],
    );
    for (doc, c) in curves(&db, 2) {
        assert!(
            c.values().all(|ll| close(*ll, base[&doc][&0])),
            "{doc}: {c:?}"
        );
    }
    // 3: α chosen on held-out documents (the half of the shuffle the run does not evaluate).
    run(
        &store,
        &db,
        &["--method", "interpolate", "-k", "3", "--alpha-docs", "3"],
    );
    let r = Db::open_read_only(&db).unwrap();
    let (alpha, source): (f64, String) = r
        .connection()
        .query_row(
            "SELECT any_value(alpha), any_value(alpha_source) FROM docs WHERE run_id = 3",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(r);
    assert_eq!(source, "held-out");
    assert!(runner_grid().contains(&alpha), "{alpha}");

    // 4: dynamic evaluation with 0 iterations is the base model on the remainder; with 2 it moves.
    run(&store, &db, &["--method", "dynamic-eval", "-k", "0"]);
    for (doc, c) in curves(&db, 4) {
        let (_, rest) = eval::split_text(&lm, &text_of(&store, &doc).1).unwrap();
        assert!(
            close(c[&0], eval::loglikelihood(&lm, &rest).unwrap().loglik),
            "{doc}"
        );
    }
    run(&store, &db, &["--method", "dynamic-eval", "-k", "2"]);
    let moved = curves(&db, 5);
    assert!(moved.values().all(|c| c.len() == 3) && moved.values().any(|c| c[&2] != c[&0]));

    // 6: in-context with no neighbours is the base model; with neighbours it is the document
    // scored after the neighbours' tokens, nearest right before it.
    run(&store, &db, &["--method", "in-context", "-k", "0"]);
    for (doc, c) in curves(&db, 6) {
        assert!(close(c[&0], base[&doc][&0]), "{doc}");
    }
    run(&store, &db, &["--method", "in-context", "-k", "2"]);
    let r = Db::open_read_only(&db).unwrap();
    let mut stmt = r
        .connection()
        .prepare("SELECT d.doc_id, d.context_fallback, list(n.neighbor_id ORDER BY n.rank) FROM docs d JOIN neighbors n USING (run_id, doc_id) WHERE run_id = 7 GROUP BY ALL")
        .unwrap();
    let rows: Vec<(String, bool, Vec<String>)> = stmt
        .query_map([], |r| {
            let list: duckdb::types::Value = r.get(2)?;
            let ids = match list {
                duckdb::types::Value::List(v) => v
                    .into_iter()
                    .map(|x| match x {
                        duckdb::types::Value::Text(s) => s,
                        other => panic!("{other:?}"),
                    })
                    .collect(),
                other => panic!("{other:?}"),
            };
            Ok((r.get(0)?, r.get(1)?, ids))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    drop(stmt);
    drop(r);
    let in_context = curves(&db, 7);
    let mut fitted = 0;
    for (doc, fallback, ids) in rows {
        let tokens = lm.encode(&text_of(&store, &doc).1).unwrap();
        assert_eq!(fallback, tokens.len() > lm.n_ctx, "{doc}");
        if fallback {
            continue;
        }
        fitted += 1;
        let mut context: Vec<i64> = Vec::new();
        for id in ids.iter().rev() {
            context.extend(lm.encode(&text_of(&store, id).1).unwrap());
        }
        let budget = lm.n_ctx + 1 - tokens.len();
        let context = &context[context.len().saturating_sub(budget)..];
        let want = eval::score_tokens(&lm, &tokens, context, None).unwrap()[0];
        assert!(close(in_context[&doc][&2], want), "{doc}");
        assert_ne!(in_context[&doc][&2], base[&doc][&0]);
    }
    assert!(
        fitted > 0,
        "some short documents fit the window with context"
    );

    // 8: TTT-NN; table1 puts every method side by side.
    run(&store, &db, &["-k", "3"]);
    let csv = ok(tttnn()
        .args(["sql", "table1", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    let header = csv.lines().next().unwrap();
    assert_eq!(header, "task,docs,base_only,in_context,interpolate,dynamic_eval,ttt_nn,ttt_nn_pct,ttt_nn_sift,weight,runs");
    let github = csv.lines().find(|l| l.starts_with("pile_github,")).unwrap();
    let cells: Vec<&str> = github.split(',').collect();
    assert!(cells[2..8].iter().all(|c| !c.is_empty()), "{github}");
    let cost = ok(tttnn()
        .args(["sql", "cost", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    for m in [
        "none",
        "interpolate",
        "dynamic-eval",
        "in-context",
        "ttt-nn",
    ] {
        assert!(
            cost.contains(&format!(",{m},")),
            "{m} missing from cost:\n{cost}"
        );
    }
}

fn runner_grid() -> Vec<f64> {
    tttnn::runner::ALPHA_GRID.to_vec()
}

#[test]
fn sift_first_pick_is_the_nearest_by_absolute_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let store = build_store(dir.path());
    let db = dir.path().join("s.duckdb");
    run(
        &store,
        &db,
        &["--select", "sift", "--sift-candidates", "10", "-k", "3"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(Store::open(&store)).unwrap();
    let r = Db::open_read_only(&db).unwrap();
    let mut stmt = r
        .connection()
        .prepare("SELECT doc_id, neighbor_id FROM neighbors WHERE run_id = 1 AND rank = 1")
        .unwrap();
    let firsts: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(!firsts.is_empty());
    let cos = |a: &[f32], b: &[f32]| {
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        (d / (n(a) * n(b))).abs()
    };
    for (doc, first) in firsts {
        let (q, _) = rt.block_on(s.document(&doc)).unwrap().unwrap();
        let candidates = rt
            .block_on(s.retrieve(
                &q,
                &Retrieval {
                    k: 10,
                    mode: SearchMode::Exact,
                    max_distance: None,
                    exclude_id: Some(doc.clone()),
                    split: Some("train".into()),
                },
            ))
            .unwrap();
        let best = candidates
            .iter()
            .max_by(|a, b| cos(&q, &a.embedding).total_cmp(&cos(&q, &b.embedding)))
            .unwrap();
        assert_eq!(first, best.id, "{doc}");
    }
    let ranks: i64 = r
        .connection()
        .query_row(
            "SELECT count(*) FROM neighbors WHERE run_id = 1 AND rank = 3",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(ranks > 0);
    let selection: String = r
        .connection()
        .query_row("SELECT selection FROM runs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(selection, "sift");
}
