//! `tttnn run` with neighbour schedules (`--neighbor-order`, `--passes`, `--neighbors-per-step`,
//! `--lr-schedule`): each setting changes what it should and nothing else, the records say which
//! neighbour came when, a killed run resumes mid-pass, lanes give the records of one document at
//! a time, and what a method cannot do is refused by name.
use std::collections::BTreeMap;
use std::path::Path;

use crate::lanes::assert_curves_match;
use crate::runner::{kill_and_resume, run_cmd, run_model_cmd, K3};
use crate::util::{conn, curve, fails, fixtures, ok, tttnn, Fixture};

use tttnn::runner::NeighborOrder;

const RESET: [&str; 2] = ["--optimizer-state", "reset"];

/// Every schedule setting away from the paper's at once.
const EVERY_SETTING: [&str; 10] = [
    "--neighbor-order",
    "random",
    "--passes",
    "2",
    "--neighbors-per-step",
    "2",
    "--lr-schedule",
    "cosine",
    "--warmup-steps",
    "1",
];

/// One neighbour row: (doc, pass, rank) → (position, k, neighbor id, tokens, chunks).
type Rows = BTreeMap<(String, i64, i64), (i64, i64, String, i64, i64)>;

fn rows(db: &Path, run: i64) -> Rows {
    let db = conn(db);
    let mut stmt = db
        .prepare(
            "SELECT doc_id, pass, rank, position, k, neighbor_id, tokens, chunks
             FROM neighbors WHERE run_id = ?",
        )
        .unwrap();
    let rows = stmt
        .query_map([run], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?),
                (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?),
            ))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// (doc, k) → pass of every curve point of `run`.
fn passes_of(db: &Path, run: i64) -> BTreeMap<(String, i64), i64> {
    let db = conn(db);
    let mut stmt = db
        .prepare("SELECT doc_id, k, pass FROM curve WHERE run_id = ?")
        .unwrap();
    let rows = stmt
        .query_map([run], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// Per document: (train_steps, train_tokens) of `run`.
fn work_of(db: &Path, run: i64) -> BTreeMap<String, (i64, i64)> {
    let db = conn(db);
    let mut stmt = db
        .prepare("SELECT doc_id, train_steps, train_tokens FROM docs WHERE run_id = ?")
        .unwrap();
    let rows = stmt
        .query_map([run], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

fn run(store: &Path, db: &Path, extra: &[&str]) {
    ok(run_cmd(store, db, &[&K3[..], extra, &["--quiet"]].concat())
        .output()
        .unwrap());
}

#[test]
fn orders_train_the_permutation_claimed_and_record_which_neighbour_came_when() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("orders.duckdb");
    for order in ["nearest", "farthest", "random"] {
        run(&store, &db, &["--neighbor-order", order]);
    }
    let (nearest, farthest, random) = (rows(&db, 1), rows(&db, 2), rows(&db, 3));
    assert_eq!(nearest.len(), farthest.len());
    for ((doc, pass, rank), (position, k, id, tokens, chunks)) in &nearest {
        assert_eq!((*pass, *position, *k), (1, *rank, *rank), "{doc}");
        // The same neighbours, trained in reverse, each recorded under its search rank.
        let far = &farthest[&(doc.clone(), 1, *rank)];
        assert_eq!((&far.2, far.3, far.4), (id, *tokens, *chunks));
        assert_eq!((far.0, far.1), (4 - rank, 4 - rank), "{doc} rank {rank}");
        let order = NeighborOrder::Random.arrange(3, 1216, doc, 1, None);
        let place = order.iter().position(|&i| i as i64 == rank - 1).unwrap() as i64;
        assert_eq!(random[&(doc.clone(), 1, *rank)].0, place + 1, "{doc}");
    }
    // The order changes the curve after the first neighbour, never the base model's score.
    let (a, b) = (curve(&db, 1), curve(&db, 2));
    let k0 = |c: &BTreeMap<(String, i64), f64>| {
        c.iter()
            .filter(|((_, k), _)| *k == 0)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    assert_eq!(k0(&a), k0(&b));
    assert!(a.iter().any(|(key, v)| key.1 == 3 && *v != b[key]));
    // Every training step is the same work in another order.
    assert_eq!(work_of(&db, 1), work_of(&db, 2));

    // With one neighbour every order is the paper's: the same records bit for bit.
    let one = dir.path().join("one.duckdb");
    for order in ["nearest", "farthest", "random"] {
        ok(run_cmd(
            &store,
            &one,
            &[
                "--task",
                "pile_all",
                "-k",
                "1",
                "--neighbor-order",
                order,
                "--quiet",
            ],
        )
        .output()
        .unwrap());
    }
    assert_eq!(curve(&one, 1), curve(&one, 2));
    assert_eq!(curve(&one, 1), curve(&one, 3));
}

#[test]
fn passes_repeat_the_steps_and_batched_neighbours_make_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("passes.duckdb");
    run(&store, &db, &RESET);
    run(&store, &db, &[&RESET[..], &["--passes", "2"]].concat());
    run(
        &store,
        &db,
        &[&RESET[..], &["--neighbors-per-step", "3"]].concat(),
    );
    let (one, two) = (curve(&db, 1), curve(&db, 2));
    // Pass 1 of two is the one-pass run bit for bit; pass 2 goes on to k = 6.
    for (key, v) in &one {
        assert_eq!(two[key], *v, "{key:?}");
    }
    assert_eq!(two.len(), 7 * one.len() / 4);
    for ((doc, k), pass) in passes_of(&db, 2) {
        assert_eq!(pass, (k + 2) / 3, "{doc} k={k}");
    }
    let nb = rows(&db, 2);
    for ((doc, pass, rank), (position, k, ..)) in &nb {
        assert_eq!((*position, *k), (*rank, 3 * (pass - 1) + rank), "{doc}");
    }
    // The same neighbours again: twice the steps and the tokens.
    let (w1, w2, w3) = (work_of(&db, 1), work_of(&db, 2), work_of(&db, 3));
    for (doc, (steps, tokens)) in &w1 {
        assert_eq!(w2[doc], (2 * steps, 2 * tokens), "{doc}");
        // Three neighbours in one group: a step per chunk of the longest, the same tokens.
        let chunks: Vec<i64> = (1..=3).map(|r| nb[&(doc.clone(), 1, r)].4).collect();
        assert_eq!(w3[doc], (*chunks.iter().max().unwrap(), *tokens), "{doc}");
    }
    // One group of three: scored after it only.
    let three = curve(&db, 3);
    assert!(three.keys().all(|(_, k)| [0, 3].contains(k)), "{three:?}");

    // table1 reads a run's last point, or the end of the pass asked for.
    let t1 = |extra: &[&str]| {
        ok(tttnn()
            .args(["sql", "table1", "--run", "2", "--format", "csv"])
            .args(extra)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap())
    };
    // The k table1_runs reads the ttt_nn column at.
    let k_read = |extra: &[&str]| -> String {
        let csv = ok(tttnn()
            .args(["sql", "table1_runs", "--run", "2", "--format", "csv"])
            .args(extra)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap());
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let k = header.iter().position(|h| *h == "k").unwrap();
        let row = csv.lines().find(|l| l.starts_with("ttt_nn,")).unwrap();
        row.split(',').nth(k).unwrap().to_string()
    };
    assert_eq!(k_read(&[]), "6");
    assert_eq!(k_read(&["--pass", "1"]), "3");
    assert_ne!(t1(&[]), t1(&["--pass", "1"]));
    let pass1 = ok(tttnn()
        .args([
            "sql", "bpb_vs_k", "--run", "2", "--pass", "1", "--format", "csv", "--db",
        ])
        .arg(&db)
        .output()
        .unwrap());
    assert!(
        pass1.starts_with("run_id,task,k,pass,docs,bits_per_byte"),
        "{pass1}"
    );
    let ks: Vec<&str> = pass1
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    assert!(
        ks.iter().all(|k| ["0", "1", "2", "3"].contains(k)),
        "{pass1}"
    );
    // compare_runs names what tells the runs apart; cost the compute each spent.
    let compare = ok(tttnn()
        .args(["sql", "compare_runs", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    assert!(
        compare.contains("neighbors_per_step=1 passes=2"),
        "{compare}"
    );
    assert!(
        compare.contains("neighbors_per_step=3 passes=1"),
        "{compare}"
    );
    let cost = ok(tttnn()
        .args(["sql", "cost", "--format", "json", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    let cost: serde_json::Value = serde_json::from_str(&cost).unwrap();
    let per_doc = |run: i64| {
        cost.as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == run && r["task"] == "pile_all")
            .map(|r| r["steps_per_doc"].as_f64().unwrap())
            .unwrap()
    };
    assert_eq!(per_doc(2), 2.0 * per_doc(1));
    assert!(per_doc(3) < per_doc(1));
}

#[test]
fn a_killed_run_resumes_mid_pass_to_the_rows_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let schedule = [&K3[..], &EVERY_SETTING].concat();
    // In the second pass of the fourth document (AdamW state carried, the original's default).
    let (whole, killed) = kill_and_resume(dir.path(), &store, &schedule, |line, recorded| {
        recorded == 3 && line.contains(", pass 2)")
    });
    assert_eq!(curve(&killed, 1), curve(&whole, 1));
    assert_eq!(rows(&killed, 1), rows(&whole, 1));
    assert_eq!(passes_of(&killed, 1), passes_of(&whole, 1));
}

#[test]
fn lanes_give_the_records_of_one_document_at_a_time_under_every_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let cases: [(&str, &[&str]); 5] = [
        ("tiny-gpt2", &[]),
        ("tiny-gptneo", &[]),
        ("tiny-llama", &[]),
        ("tiny-qwen2", &[]),
        ("tiny-gpt2", &["--adapter", "lora", "--lora-rank", "2"]),
    ];
    for (family, extra) in cases {
        let model = fixtures().join("models").join(family);
        let db = dir.path().join(format!("{family}-{}.duckdb", extra.len()));
        for lanes in ["1", "3"] {
            let args = [
                &K3[..],
                &RESET,
                &EVERY_SETTING,
                extra,
                &["--lanes", lanes, "--quiet"],
            ];
            ok(run_model_cmd(&model, &store, &db, &args.concat())
                .output()
                .unwrap());
        }
        let (one, three) = (curve(&db, 1), curve(&db, 2));
        assert!(one.len() > 20, "{family}: {} points", one.len());
        assert_curves_match(&one, &three);
        assert_eq!(rows(&db, 1), rows(&db, 2), "{family} {extra:?}");
        assert_eq!(work_of(&db, 1), work_of(&db, 2), "{family} {extra:?}");
    }
}

#[test]
fn schedules_a_method_cannot_follow_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("refused.duckdb");
    let cases: [(&[&str], &str); 6] = [
        (&["--method", "in-context", "--passes", "2"], "`passes`"),
        (
            &["--method", "none", "--lr-schedule", "cosine"],
            "`lr_schedule`",
        ),
        (
            &["--method", "dynamic-eval", "--neighbor-order", "farthest"],
            "`neighbor_order`",
        ),
        (&["--passes", "0"], "`passes`"),
        (&["--neighbors-per-step", "0"], "`neighbors_per_step`"),
        (
            &["--select", "sift", "--sift-adaptive", "1", "--passes", "2"],
            "--sift-adaptive",
        ),
    ];
    for (extra, want) in cases {
        let err = fails(
            run_cmd(&store, &db, &[&K3[..], extra].concat())
                .output()
                .unwrap(),
            1,
        );
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    // Dynamic evaluation takes a learning-rate schedule over its passes.
    ok(run_cmd(
        &store,
        &db,
        &[
            &K3[..],
            &[
                "--method",
                "dynamic-eval",
                "--lr-schedule",
                "linear",
                "--limit-docs",
                "1",
                "--quiet",
            ],
        ]
        .concat(),
    )
    .output()
    .unwrap());
}
