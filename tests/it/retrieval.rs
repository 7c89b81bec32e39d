//! Retrieval quality against the gain (issue #41): a datastore fraction honoured by every search
//! (nested, the same rows for the matrix products, per-query exact search and the index), and a
//! run's neighbours measured against an exact reference table, recorded and summarised by
//! `sql retrieval_quality`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::runner::{neighbors, run_cmd, K3};
use crate::util::{conn, fails, ok, tttnn, Fixture};
use tttnn::store::DatastoreFraction;

/// `tttnn neighbors --quiet` of every test document of `store` into `table`.
fn neighbors_cmd(store: &Path, table: &Path, extra: &[&str]) -> Command {
    crate::runner::neighbors_cmd(store, table, &[&["--quiet"][..], extra].concat())
}

/// doc → its neighbours' ids, nearest first, of run `run`.
fn lists(db: &Path, run: i64) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((doc, _), (id, _)) in neighbors(db, run) {
        out.entry(doc).or_default().push(id);
    }
    out
}

#[test]
fn a_datastore_fraction_is_nested_and_every_search_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("r.duckdb");
    fn fraction(f: &str) -> [&str; 4] {
        ["--datastore-fraction", f, "--datastore-seed", "9"]
    }
    let run = |f: &str, extra: &[&str]| {
        ok(run_cmd(
            &store,
            &db,
            &[&K3[..], &fraction(f), extra, &["--quiet"]].concat(),
        )
        .output()
        .unwrap());
        crate::util::last_run(&db)
    };
    // Live per-query exact search (Lance's filter) at 0.5 and 0.25.
    let half = run("0.5", &[]);
    let quarter = run("0.25", &[]);
    let keeps = |f: f64| DatastoreFraction {
        fraction: f,
        seed: 9,
    };
    for (r, f) in [(half, 0.5), (quarter, 0.25)] {
        let found = lists(&db, r);
        assert!(!found.is_empty());
        for id in found.values().flatten() {
            // Nested: a quarter's rows are among a half's.
            assert!(keeps(f).keeps(id) && keeps(0.5).keeps(id), "{id} at {f}");
        }
    }
    assert_ne!(lists(&db, half), lists(&db, quarter));
    // The matrix products keep the same rows: a table at 0.5 gives the live run's neighbours and
    // curve, and records its fraction (a run at another fraction is refused, naming it).
    let table = dir.path().join("half");
    ok(neighbors_cmd(
        &store,
        &table,
        &[&["-k", "3"][..], &fraction("0.5")].concat(),
    )
    .output()
    .unwrap());
    let from_table = run("0.5", &["--neighbors-from", table.to_str().unwrap()]);
    assert_eq!(neighbors(&db, from_table), neighbors(&db, half));
    assert_eq!(
        crate::util::curve(&db, from_table),
        crate::util::curve(&db, half)
    );
    let err = fails(
        run_cmd(
            &store,
            &db,
            &[&K3[..], &["--neighbors-from", table.to_str().unwrap()]].concat(),
        )
        .output()
        .unwrap(),
        1,
    );
    assert!(err.contains("--datastore-fraction"), "{err}");
    // Out of (0, 1]: refused by name.
    let err = fails(
        run_cmd(&store, &db, &[&K3[..], &fraction("1.5")].concat())
            .output()
            .unwrap(),
        1,
    );
    assert!(
        err.contains("datastore_fraction") && err.contains("1.5"),
        "{err}"
    );
}

/// An exact reference table of every test document of `store`, k = 3.
fn exact_reference(store: &Path, dir: &Path) -> PathBuf {
    let table = dir.join("exact");
    ok(neighbors_cmd(store, &table, &["-k", "3"]).output().unwrap());
    table
}

#[test]
fn runs_record_their_neighbours_against_an_exact_reference() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let reference = exact_reference(&store, dir.path());
    let db = dir.path().join("r.duckdb");
    let reference_arg = ["--exact-reference", reference.to_str().unwrap()];
    let run = |extra: &[&str]| {
        ok(run_cmd(
            &store,
            &db,
            &[&K3[..], &reference_arg, extra, &["--quiet"]].concat(),
        )
        .output()
        .unwrap());
        crate::util::last_run(&db)
    };
    let exact = run(&[]);
    let half = run(&["--datastore-fraction", "0.5", "--datastore-seed", "9"]);
    type Row = (String, i64, i64, Option<f64>, Option<f64>);
    let recorded = |r: i64| -> Vec<Row> {
        conn(&db)
            .prepare(
                "SELECT doc_id, exact_neighbors, shared_neighbors, recall_at_k, rank_correlation
                 FROM docs WHERE run_id = ? ORDER BY doc_id",
            )
            .unwrap()
            .query_map([r], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    // The exact run against its own neighbours: all shared, in the same order.
    for (doc, e, s, recall, rho) in recorded(exact) {
        assert_eq!((e, s, recall), (3, 3, Some(1.0)), "{doc}");
        assert_eq!(rho, Some(1.0), "{doc}");
    }
    // The half store's, recomputed from the two runs' neighbour lists.
    let (want, got) = (lists(&db, exact), lists(&db, half));
    let rows = recorded(half);
    assert_eq!(rows.len(), want.len());
    let mut lost = 0;
    for (doc, e, s, recall, _) in &rows {
        let shared = want[doc].iter().filter(|id| got[doc].contains(id)).count() as i64;
        assert_eq!((*e, *s), (3, shared), "{doc}");
        assert_eq!(*recall, Some(shared as f64 / 3.0), "{doc}");
        lost += 3 - shared;
    }
    assert!(lost > 0, "half the store loses some exact neighbours");
    // The canned query: per task and over all, the mean recall of the records.
    let out = ok(tttnn()
        .args(["sql", "retrieval_quality", "--format", "json", "--run"])
        .arg(half.to_string())
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap());
    let summary: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let all = summary.iter().find(|r| r["task"] == "all").unwrap();
    let mean = rows.iter().map(|r| r.3.unwrap()).sum::<f64>() / rows.len() as f64;
    assert_eq!(all["docs"], rows.len());
    assert!(
        (all["recall_at_k"].as_f64().unwrap() - mean).abs() < 1e-4,
        "{all}"
    );
    assert!(all["bpb_change"].as_f64().is_some(), "{all}");
    // A neighbour table measured the same way: `tttnn neighbors --exact-reference`.
    let table: serde_json::Value = serde_json::from_str(&ok(neighbors_cmd(
        &store,
        &dir.path().join("half"),
        &[
            &[
                "-k",
                "3",
                "--datastore-fraction",
                "0.5",
                "--datastore-seed",
                "9",
            ][..],
            &reference_arg,
        ]
        .concat(),
    )
    .output()
    .unwrap()))
    .unwrap();
    let q = &table["retrieval_quality"];
    assert_eq!(q["documents"], rows.len());
    assert!(
        (q["recall_at_k"].as_f64().unwrap() - mean).abs() < 1e-12,
        "{q}"
    );
    // A reference that is not exact, or holds fewer neighbours, is refused by name.
    let err = fails(
        run_cmd(
            &store,
            &db,
            &[&["--task", "pile_all", "-k", "5"][..], &reference_arg].concat(),
        )
        .output()
        .unwrap(),
        1,
    );
    assert!(
        err.contains("not an exact reference") && err.contains("takes 5"),
        "{err}"
    );
}

#[test]
fn the_experiments_run_every_arm_on_the_fixtures_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("experiments");
    let bin = crate::util::tttnn_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let smoke = || {
        let mut c = Command::new("bash");
        c.arg(crate::util::repo().join("scripts/experiments"))
            .arg("--smoke")
            .env("OUT", &out)
            .env("PATH", &path);
        crate::util::one_thread(&mut c);
        ok(c.output().unwrap())
    };
    smoke();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("experiments.json")).unwrap())
            .unwrap();
    // Every arm, compared with the paper's setting over pile_all, with an interval and n.
    let arms: Vec<&str> = report["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["task"] == "pile_all")
        .map(|c| {
            assert!(c["ci_low"].as_f64().unwrap() <= c["ci_high"].as_f64().unwrap());
            assert!(c["docs"].as_u64().unwrap() > 0 && c["p_value"].as_f64().is_some());
            c["arm"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        arms,
        [
            "experiments/farthest",
            "experiments/random",
            "experiments/passes-2",
            "experiments/passes-3",
            "experiments/4-per-step-4-passes",
            "experiments/cosine",
            "experiments/ivf-nprobes-1",
            "experiments/ivf-nprobes-2",
            "experiments/fraction-0.5",
            "experiments/fraction-0.25",
            "experiments-oracle/oracle",
        ]
    );
    // Each arm measured against the exact neighbours; the exact arms read the one exact table.
    let quality = report["retrieval_quality"].as_array().unwrap();
    let recall = |name: &str| {
        quality
            .iter()
            .find(|q| q["name"] == name && q["task"] == "all")
            .map(|q| q["recall_at_k"].as_f64().unwrap())
            .unwrap()
    };
    assert_eq!(recall("experiments/paper"), 1.0);
    assert!(recall("experiments/fraction-0.25") < 1.0);
    let db = out.join("results.duckdb");
    let read_exact: i64 = conn(&db)
        .query_row(
            "SELECT count(*) FROM runs WHERE json_extract_string(config, '$.neighbors_from') = ?",
            [out.join("exact").display().to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        read_exact, 8,
        "the paper's, 2 orders, 4 schedules and the oracle"
    );
    assert!(!report["bpb_vs_k"].as_array().unwrap().is_empty());
    // Again: every arm is finished and kept; nothing is run twice.
    let runs = |db: &Path| -> i64 {
        conn(db)
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap()
    };
    let before = runs(&db);
    smoke();
    assert_eq!(runs(&db), before);
}
