//! The baselines (`--method none|in-context|interpolate|dynamic-eval`) and SIFT selection from the
//! CLI on the tiny fixtures, each checked by a property that fails if it is wrong.
use crate::util::{close, curve, model, ok, text_of, tttnn, Fixture};

use std::collections::BTreeMap;
use std::path::Path;

use tttnn::eval;
use tttnn::lm::LanguageModel;
use tttnn::store::{DatastoreFraction, Retrieval, SearchMode, Store};

/// Runs `tttnn run` with `args` into `db`; returns the new run's id.
fn run(store: &Path, db: &Path, args: &[&str]) -> i64 {
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
            "--store",
        ])
        .arg(store)
        .args((!args.contains(&"--distance-threshold")).then_some("--no-distance-threshold"))
        .arg("--model")
        .arg(model())
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap());
    crate::util::last_run(db)
}

/// doc → (k → loglik) of a run.
fn curves(db: &Path, run: i64) -> BTreeMap<String, BTreeMap<i64, f64>> {
    let mut out: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for ((doc, k), ll) in curve(db, run) {
        out.entry(doc).or_default().insert(k, ll);
    }
    out
}

#[test]
fn baselines_reduce_to_the_base_model_and_sit_side_by_side_in_table1() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Short.store(dir.path());
    let db = dir.path().join("r.duckdb");
    let lm = crate::util::load_lm(&model());

    // 1: none = the base model at k = 0.
    let r1 = run(&store, &db, &["--method", "none"]);
    let base = curves(&db, r1);
    assert!(!base.is_empty());
    for (doc, c) in &base {
        assert_eq!(c.keys().copied().collect::<Vec<_>>(), vec![0]);
        let want = eval::loglikelihood(&lm, &text_of(&store, doc).1)
            .unwrap()
            .loglik;
        assert!(close(c[&0], want), "{doc}");
    }

    // 2: interpolate with α = 0 is the base model at every k.
    let r2 = run(
        &store,
        &db,
        &["--method", "interpolate", "--alpha", "0", "-k", "3"],
    );
    for (doc, c) in curves(&db, r2) {
        assert!(
            c.values().all(|ll| close(*ll, base[&doc][&0])),
            "{doc}: {c:?}"
        );
    }
    // 3: α chosen on held-out documents (the half of the shuffle the run does not evaluate).
    let r3 = run(
        &store,
        &db,
        &["--method", "interpolate", "-k", "3", "--alpha-docs", "3"],
    );
    let r = crate::util::conn(&db);
    let (alpha, source): (f64, String) = r
        .query_row(
            "SELECT any_value(alpha), any_value(alpha_source) FROM docs WHERE run_id = ?",
            [r3],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(r);
    assert_eq!(source, "held-out");
    assert!(runner_grid().contains(&alpha), "{alpha}");

    // 4: dynamic evaluation with 0 iterations is the base model on the remainder; with 2 it moves.
    let r4 = run(&store, &db, &["--method", "dynamic-eval", "-k", "0"]);
    for (doc, c) in curves(&db, r4) {
        let (_, rest) = eval::split_text(&lm, &text_of(&store, &doc).1).unwrap();
        assert!(
            close(c[&0], eval::loglikelihood(&lm, &rest).unwrap().loglik),
            "{doc}"
        );
    }
    let r5 = run(&store, &db, &["--method", "dynamic-eval", "-k", "2"]);
    let moved = curves(&db, r5);
    assert!(moved.values().all(|c| c.len() == 3) && moved.values().any(|c| c[&2] != c[&0]));

    // 6: in-context with no neighbours is the base model; with neighbours it is the document
    // scored after the neighbours' tokens, nearest right before it.
    let r6 = run(&store, &db, &["--method", "in-context", "-k", "0"]);
    for (doc, c) in curves(&db, r6) {
        assert!(
            close(c[&0], base[&doc][&0]),
            "{doc}: {} against the base model's {}",
            c[&0],
            base[&doc][&0]
        );
    }
    let r7 = run(&store, &db, &["--method", "in-context", "-k", "2"]);
    let r = crate::util::conn(&db);
    let mut stmt = r
                .prepare("SELECT d.doc_id, d.context_fallback, list(n.neighbor_id ORDER BY n.rank) FROM docs d JOIN neighbors n USING (run_id, doc_id) WHERE run_id = ? GROUP BY ALL")
        .unwrap();
    let rows: Vec<(String, bool, Vec<String>)> = stmt
        .query_map([r7], |r| {
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
    // Every setting is a column of run_settings, enum values spelled as on the command line.
    let (order, lr, method): (String, f64, String) = crate::util::conn(&db)
        .query_row(
            "SELECT s.in_context_order, s.lr, r.method FROM run_settings s
             JOIN runs r ON r.id = s.run_id WHERE s.run_id = ?",
            [r7],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (order.as_str(), lr, method.as_str()),
        ("nearest-last", 1e-3, "in-context")
    );
    let in_context = curves(&db, r7);
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
    assert_eq!(header, "task,docs,base_only,in_context,interpolate,dynamic_eval,ttt_nn,ttt_nn_pct,ttt_nn_sift,weight");
    let github = csv.lines().find(|l| l.starts_with("pile_github,")).unwrap();
    let cells: Vec<&str> = github.split(',').collect();
    assert!(cells[2..8].iter().all(|c| !c.is_empty()), "{github}");
    // Each column traces to one run: the newest of its method over the same documents and
    // model; base_only is TTT-NN's own k = 0; dynamic evaluation is read at pass min(6, k).
    let r8 = crate::util::last_run(&db);
    assert_eq!(
        table1_runs(&db),
        vec![
            ("base_only".into(), r8, 0),
            ("in_context".into(), r7, 2),
            ("interpolate".into(), r3, 3),
            ("dynamic_eval".into(), r5, 2),
            ("ttt_nn".into(), r8, 3),
        ]
    );
    let bpb = |run: i64, k: i64| -> f64 {
        let c = curves(&db, run);
        let bytes: f64 = c.keys().map(|d| text_of(&store, d).1.len() as f64).sum();
        -c.values().map(|c| c[&k]).sum::<f64>() / bytes / std::f64::consts::LN_2
    };
    let cell = |row: &str, i: usize| -> f64 {
        let line = row.lines().find(|l| l.starts_with("pile_github,")).unwrap();
        line.split(',').nth(i).unwrap().parse().unwrap()
    };
    assert!((cell(&csv, 2) - bpb(r8, 0)).abs() < 1e-4);
    assert!((cell(&csv, 6) - bpb(r8, 3)).abs() < 1e-4);
    assert!((cell(&csv, 7) - (100.0 * cell(&csv, 6) / cell(&csv, 2))).abs() < 0.06);

    // 9: in-context whose neighbours all fall outside the distance threshold scores every
    // document alone (the original's EMPTY case) and counts it: the column is the base model.
    let r9 = run(
        &store,
        &db,
        &[
            "--method",
            "in-context",
            "-k",
            "2",
            "--distance-threshold",
            "1e-9",
        ],
    );
    // 10: dynamic evaluation reports the pass it records, not the last one.
    let r10 = run(
        &store,
        &db,
        &[
            "--method",
            "dynamic-eval",
            "-k",
            "3",
            "--dynamic-eval-pass",
            "1",
        ],
    );
    // 11: adaptive SIFT that stops before its first pick leaves the base model, and counts.
    let r11 = run(
        &store,
        &db,
        &["-k", "3", "--select", "sift", "--sift-adaptive", "1e9"],
    );
    for (doc, c) in curves(&db, r9).into_iter().chain(curves(&db, r11)) {
        // Every point past the (zero) neighbours holds the base model's score.
        assert_eq!(
            c.len(),
            *c.keys().last().unwrap() as usize + 1,
            "{doc}: {c:?}"
        );
        assert!(c.values().all(|v| v == &c[&0]), "{doc}: {c:?}");
    }
    let runs = table1_runs(&db);
    assert!(runs.contains(&("in_context".into(), r9, 2)), "{runs:?}");
    assert!(runs.contains(&("dynamic_eval".into(), r10, 1)), "{runs:?}");
    assert!(runs.contains(&("ttt_nn_sift".into(), r11, 3)), "{runs:?}");
    let csv = ok(tttnn()
        .args(["sql", "table1", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    assert_eq!(cell(&csv, 1), curves(&db, r9).len() as f64);
    assert_eq!(cell(&csv, 3), cell(&csv, 2), "{csv}");
    assert_eq!(cell(&csv, 8), cell(&csv, 2), "{csv}");
    assert!((cell(&csv, 5) - bpb_rest(&db, &store, &lm, r10, 1)).abs() < 1e-4);
    // --run picks the columns by hand.
    let csv = ok(tttnn()
        .args([
            "sql",
            "table1",
            "--format",
            "csv",
            "--run",
            &r7.to_string(),
            "--run",
        ])
        .arg(r8.to_string())
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap());
    assert!((cell(&csv, 3) - bpb(r7, 2)).abs() < 1e-4, "{csv}");
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

/// (column, run, k) of `tttnn sql table1_runs`.
fn table1_runs(db: &Path) -> Vec<(String, i64, i64)> {
    let csv = ok(tttnn()
        .args(["sql", "table1_runs", "--format", "csv", "--db"])
        .arg(db)
        .output()
        .unwrap());
    csv.lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (
                c[0].to_string(),
                c[1].parse().unwrap(),
                c[5].parse().unwrap(),
            )
        })
        .collect()
}

/// Bits per byte of a dynamic-evaluation run at pass `k`, over the documents' remainders.
fn bpb_rest(db: &Path, store: &Path, lm: &LanguageModel, run: i64, k: i64) -> f64 {
    let c = curves(db, run);
    let bytes: f64 = c
        .keys()
        .map(|d| eval::split_text(lm, &text_of(store, d).1).unwrap().1.len() as f64)
        .sum();
    -c.values().map(|c| c[&k]).sum::<f64>() / bytes / std::f64::consts::LN_2
}

fn runner_grid() -> Vec<f64> {
    tttnn::runner::ALPHA_GRID.to_vec()
}

#[test]
fn sift_first_pick_is_the_nearest_by_absolute_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Short.store(dir.path());
    let db = dir.path().join("s.duckdb");
    let id = run(
        &store,
        &db,
        &["--select", "sift", "--sift-candidates", "10", "-k", "3"],
    );
    let s = Store::open(&store).unwrap();
    let r = crate::util::conn(&db);
    let mut stmt = r
        .prepare("SELECT doc_id, neighbor_id FROM neighbors WHERE run_id = ? AND rank = 1")
        .unwrap();
    let firsts: Vec<(String, String)> = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
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
        let q = s.document(&doc).unwrap().unwrap().embedding;
        let candidates = s
            .retrieve(
                &q,
                &Retrieval {
                    k: 10,
                    mode: SearchMode::Exact,
                    max_distance: None,
                    exclude_id: Some(doc.clone()),
                    split: Some("train".into()),
                    datastore: DatastoreFraction::WHOLE,
                },
            )
            .unwrap();
        let best = candidates
            .iter()
            .max_by(|a, b| cos(&q, &a.embedding).total_cmp(&cos(&q, &b.embedding)))
            .unwrap();
        assert_eq!(first, best.id, "{doc}");
    }
    let ranks: i64 = r
        .query_row(
            "SELECT count(*) FROM neighbors WHERE run_id = ? AND rank = 3",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(ranks > 0);
    let selection: String = r
        .query_row("SELECT selection FROM runs WHERE id = ?", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(selection, "sift");
}
