//! `tttnn run --lanes`: several documents trained at once give the records of one document at a
//! time (with `--optimizer-state reset`), for every model family, both training methods and LoRA
//! adapters; a killed lanes run resumes; what lanes cannot do is refused.
use std::collections::BTreeMap;
use std::path::Path;

use crate::runner::{kill_and_resume, neighbors, run_cmd, run_model_cmd, K3};
use crate::util::{conn, curve, fails, fixtures, model, ok, tttnn, Fixture};

const RESET: [&str; 2] = ["--optimizer-state", "reset"];

/// The two curves have the same points, equal to 1e-5 relative (batched and single matmuls
/// round differently; measured: ≤ 1e-8).
pub fn assert_curves_match(a: &BTreeMap<(String, i64), f64>, b: &BTreeMap<(String, i64), f64>) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same documents and points"
    );
    for (key, x) in a {
        let y = b[key];
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "{key:?}: {x} one at a time, {y} in lanes"
        );
    }
}

/// Per (doc, rank): tokens, chunks and train loss of `run`.
fn passes(db: &Path, run: i64) -> BTreeMap<(String, i64), (i64, i64, f64)> {
    let db = conn(db);
    let mut stmt = db
        .prepare("SELECT doc_id, rank, tokens, chunks, train_loss FROM neighbors WHERE run_id = ?")
        .unwrap();
    let rows = stmt
        .query_map([run], |r| {
            Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?, r.get(4)?)))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[test]
fn lanes_give_the_records_of_one_document_at_a_time_for_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let cases = [
        ("tiny-gpt2", "ttt-nn"),
        ("tiny-gptneo", "ttt-nn"),
        ("tiny-llama", "ttt-nn"),
        ("tiny-qwen2", "ttt-nn"),
        ("tiny-gpt2", "dynamic-eval"),
    ];
    for (family, method) in cases {
        let model = fixtures().join("models").join(family);
        let db = dir.path().join(format!("{family}-{method}.duckdb"));
        for lanes in ["1", "3"] {
            let extra = [
                &K3[..],
                &RESET,
                &["--method", method, "--lanes", lanes, "--quiet"],
            ];
            ok(run_model_cmd(&model, &store, &db, &extra.concat())
                .output()
                .unwrap());
        }
        let (one, three) = (curve(&db, 1), curve(&db, 2));
        assert!(one.len() > 20, "{family} {method}: {} points", one.len());
        assert_curves_match(&one, &three);
        assert_eq!(neighbors(&db, 1), neighbors(&db, 2), "{family} {method}");
        let (a, b) = (passes(&db, 1), passes(&db, 2));
        assert_eq!(a.len(), b.len());
        for (key, (tokens, chunks, loss)) in &a {
            let (t, c, l) = b[key];
            assert_eq!((*tokens, *chunks), (t, c), "{family} {method} {key:?}");
            assert!(
                (loss - l).abs() <= 1e-5 * loss.abs().max(1.0),
                "{key:?}: {loss} {l}"
            );
        }
        let lanes: Vec<i64> = conn(&db)
            .prepare("SELECT lanes FROM runs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(lanes, [1, 3]);
    }
}

#[test]
fn lanes_by_length_give_the_same_records_and_sql_cost_reports_their_padding() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("order.duckdb");
    for (lanes, order) in [("1", "plan"), ("3", "plan"), ("3", "length")] {
        let extra = [
            &K3[..],
            &RESET,
            &["--lanes", lanes, "--lane-order", order, "--quiet"],
        ];
        ok(run_cmd(&store, &db, &extra.concat()).output().unwrap());
    }
    assert_curves_match(&curve(&db, 1), &curve(&db, 3));
    assert_curves_match(&curve(&db, 2), &curve(&db, 3));
    assert_eq!(neighbors(&db, 1), neighbors(&db, 3));
    // One document at a time computes exactly the tokens it trains on; lanes pad.
    let tokens: Vec<(i64, i64, f64)> = conn(&db)
        .prepare(
            "SELECT run_id, sum(train_tokens), sum(computed_tokens) FROM docs
             GROUP BY run_id ORDER BY run_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(tokens[0].1 as f64, tokens[0].2, "{tokens:?}");
    assert!(tokens[0].1 > 100, "{tokens:?}");
    for &(run, trained, computed) in &tokens[1..] {
        assert_eq!(trained, tokens[0].1, "run {run} trains the same tokens");
        assert!(computed > trained as f64, "run {run} pads: {tokens:?}");
    }
    let cost = ok(tttnn()
        .args(["sql", "cost", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    let header: Vec<&str> = cost.lines().next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "padding_fraction")
        .unwrap();
    let task = header.iter().position(|h| *h == "task").unwrap();
    let padding: Vec<(String, f64)> = cost
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|r| r[task] == "pile_all")
        .map(|r| (r[0].to_string(), r[col].parse().unwrap()))
        .collect();
    assert_eq!(padding.len(), 3, "{cost}");
    assert_eq!(padding[0].1, 0.0, "{cost}");
    for (run, p) in &padding[1..] {
        assert!(*p > 0.0 && *p < 1.0, "run {run}: {p}\n{cost}");
    }
}

#[test]
fn killed_lanes_run_resumes_to_the_rows_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let lanes = [&K3[..], &RESET, &["--lanes", "3"]].concat();
    // Kill with documents recorded and three more in flight.
    let (whole, killed) = kill_and_resume(dir.path(), &store, &lanes, |_, recorded| recorded == 5);
    // Which documents share a round differs between the two, so equal up to rounding.
    assert_curves_match(&curve(&whole, 1), &curve(&killed, 1));
    assert_eq!(neighbors(&killed, 1), neighbors(&whole, 1));
}

#[test]
fn lanes_refuse_what_they_cannot_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("runs.duckdb");
    let run = |model: &Path, extra: &[&str]| {
        run_model_cmd(model, &store, &db, &[&K3[..], extra, &["--quiet"]].concat())
            .output()
            .unwrap()
    };
    let err = fails(run(&model(), &["--lanes", "2"]), 1);
    assert!(err.contains("--optimizer-state reset"), "{err}");
    let err = fails(
        run(&model(), &["--lanes", "2", "--method", "in-context"]),
        1,
    );
    assert!(err.contains("in-context does not train"), "{err}");

    // GPT-2 as released trains with dropout 0.1: lanes need --dropout off.
    let dropout = dir.path().join("tiny-gpt2-dropout");
    std::fs::create_dir(&dropout).unwrap();
    for e in std::fs::read_dir(model()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dropout.join(e.file_name())).unwrap();
    }
    let config = dropout.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["resid_pdrop"] = 0.1.into();
    std::fs::write(&config, c.to_string()).unwrap();
    let err = fails(run(&dropout, &[&RESET[..], &["--lanes", "2"]].concat()), 1);
    assert!(
        err.contains("dropout 0.1") && err.contains("--dropout off"),
        "{err}"
    );
    ok(run(
        &dropout,
        &[&RESET[..], &["--lanes", "2", "--dropout", "off"]].concat(),
    ));
}

#[test]
fn sharded_lanes_merge_to_the_run_without_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let reset = [&K3[..], &RESET, &["--limit-docs", "2", "--quiet"]].concat();
    let whole = dir.path().join("whole.duckdb");
    ok(run_cmd(&store, &whole, &reset).output().unwrap());
    let mut shards = Vec::new();
    for i in 0..2 {
        let db = dir.path().join(format!("shard{i}.duckdb"));
        let shard = format!("{i}/2");
        let extra = [&reset[..], &["--shard", &shard, "--lanes", "2"]].concat();
        ok(run_cmd(&store, &db, &extra).output().unwrap());
        shards.push(db);
    }
    let merged = dir.path().join("merged.duckdb");
    ok(tttnn()
        .arg("merge")
        .arg(&merged)
        .args(&shards)
        .output()
        .unwrap());
    assert_curves_match(&curve(&whole, 1), &curve(&merged, 1));
    assert_eq!(neighbors(&merged, 1), neighbors(&whole, 1));
    let lanes: i64 = conn(&merged)
        .query_row("SELECT lanes FROM runs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(lanes, 2, "the merged run keeps the shards' lanes");
}
