//! `tttnn sweep`, `tttnn compare`, the `neighbor_gain` view and the oracle order, end to end on
//! the fixture store: a sweep runs each point once and searches the store once, resumes after
//! kill -9, splits its points among workers; comparisons equal the statistics computed from the
//! records; gains sum to each document's change and order the oracle run.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::runner::{kill_when, run_cmd, K3};
use crate::util::{conn, curve, encoder, fails, model, ok, tttnn, Fixture};

use tttnn::stats::{self, Resampling, Stratum};

/// A sweep file over `store` varying the neighbour order, each point k = 3.
pub(crate) fn sweep_file(dir: &Path, store: &Path, extra: &str) -> PathBuf {
    let path = dir.join("order.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"order\"\n\
             [base]\nstore = {store:?}\nencoder = {encoder:?}\nmodel = {model:?}\n\
             task = \"pile_all\"\nneighbors = 3\nlr = 1e-3\nval_portion = 1.0\n\
             optimizer_state = \"reset\"\n{extra}\
             [grid]\nneighbor_order = [\"nearest\", \"farthest\", \"random\"]\n",
            store = store.display().to_string(),
            encoder = encoder().display().to_string(),
            model = model().display().to_string(),
        ),
    )
    .unwrap();
    path
}

fn sweep_cmd(file: &Path, db: &Path, extra: &[&str]) -> Command {
    let mut c = tttnn();
    c.arg("sweep").arg(file).arg("--db").arg(db).args(extra);
    c
}

fn summary(file: &Path, db: &Path, extra: &[&str]) -> serde_json::Value {
    let out = ok(
        sweep_cmd(file, db, &[&["--json", "--quiet"][..], extra].concat())
            .output()
            .unwrap(),
    );
    serde_json::from_str(&out).unwrap()
}

/// point name → (doc, k) → loglik, for every run of `db`.
fn curves_by_name(db: &Path) -> BTreeMap<String, BTreeMap<(String, i64), f64>> {
    let runs: Vec<(i64, String)> = conn(db)
        .prepare("SELECT id, name FROM runs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    runs.into_iter()
        .map(|(id, name)| (name, curve(db, id)))
        .collect()
}

fn test_documents(db: &Path, run: i64) -> i64 {
    conn(db)
        .query_row("SELECT count(*) FROM docs WHERE run_id = ?", [run], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn a_sweep_runs_each_point_once_and_searches_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let file = sweep_file(dir.path(), &store, "");
    let db = dir.path().join("sweep.duckdb");

    let plan = ok(sweep_cmd(&file, &db, &["--dry-run", "--quiet"])
        .output()
        .unwrap());
    assert_eq!(
        plan.lines().filter(|l| l.contains("[new;")).count(),
        3,
        "{plan}"
    );
    assert!(
        plan.contains("computed once, read by order/neighbor_order=nearest"),
        "{plan}"
    );
    assert!(!db.exists(), "a dry run writes nothing");

    let s = summary(&file, &db, &[]);
    let points = s["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    let ids: Vec<i64> = points
        .iter()
        .map(|p| p["run_id"].as_i64().unwrap())
        .collect();
    let docs = test_documents(&db, ids[0]);
    assert!(docs > 4);
    // One table at k = 3 for the three points: each document searched once, not three times.
    let tables = s["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0]["searched"].as_i64().unwrap(), docs);
    assert_eq!(s["store_queries"].as_i64().unwrap(), docs);
    let table = tables[0]["path"].as_str().unwrap();
    for id in &ids {
        let from: String = conn(&db)
            .query_row(
                "SELECT json_extract_string(config, '$.neighbors_from') FROM runs WHERE id = ?",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(from, table);
    }
    // The comparison: the two other points against the baseline, per task and pile_all.
    let rows = s["comparison"].as_array().unwrap();
    let all: Vec<&serde_json::Value> = rows.iter().filter(|r| r["task"] == "pile_all").collect();
    assert_eq!(all.len(), 2, "{rows:?}");
    assert!(all
        .iter()
        .all(|r| r["baseline_run"] == ids[0] && r["docs"] == docs));

    // Again: every point finished, nothing searched or run twice.
    let again = summary(&file, &db, &[]);
    assert_eq!(again["store_queries"], 0);
    let runs: i64 = conn(&db)
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 3);

    // A point's records equal a run of its settings searching the store itself.
    let live = dir.path().join("live.duckdb");
    ok(run_cmd(
        &store,
        &live,
        &[
            &K3[..],
            &[
                "--optimizer-state",
                "reset",
                "--neighbor-order",
                "farthest",
                "--quiet",
            ],
        ]
        .concat(),
    )
    .output()
    .unwrap());
    assert_eq!(curve(&live, 1), curve(&db, ids[1]));

    // A changed file does not resume the old runs under other settings.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("lr = 1e-3", "lr = 2e-3"),
    )
    .unwrap();
    let err = fails(sweep_cmd(&file, &db, &["--quiet"]).output().unwrap(), 1);
    assert!(err.contains("recorded with other settings (lr)"), "{err}");
}

#[test]
fn a_killed_sweep_resumes_to_the_records_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let file = sweep_file(dir.path(), &store, "");
    let whole = dir.path().join("whole.duckdb");
    summary(&file, &whole, &[]);
    let killed = dir.path().join("killed.duckdb");
    // Killed in the second point, after a few of its documents.
    let mut seen = 0;
    kill_when(&mut sweep_cmd(&file, &killed, &["-v"]), |line| {
        seen += usize::from(line.contains("order/neighbor_order=farthest doc "));
        seen == 3
    });
    let partial = curves_by_name(&killed);
    assert_eq!(partial.len(), 2, "killed in the second point");
    let s = summary(&file, &killed, &[]);
    let before: Vec<&str> = s["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["before"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(before, ["finished", "unfinished", "new"]);
    assert_eq!(curves_by_name(&killed), curves_by_name(&whole));
    // Nothing doubled: as many rows as the uninterrupted sweep's, table by table.
    let rows = |db: &Path, table: &str| -> i64 {
        conn(db)
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    for table in ["runs", "docs", "curve", "neighbors"] {
        assert_eq!(rows(&killed, table), rows(&whole, table), "{table}");
    }
}

#[test]
fn shard_workers_cover_every_point_once_and_gather_into_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let file = sweep_file(dir.path(), &store, "");
    let whole = dir.path().join("whole.duckdb");
    summary(&file, &whole, &[]);
    // Two workers at once, each its own database, sharing the neighbour table's directory.
    let tables = dir.path().join("tables.duckdb");
    let started: Vec<_> = (0..2)
        .map(|i| {
            let db = dir.path().join(format!("worker{i}.duckdb"));
            let mut c = sweep_cmd(
                &file,
                &db,
                &["--json", "--quiet", "--shard", &format!("{i}/2")],
            );
            // The table beside a common path: both workers fill one table, each waiting for the
            // other's share, so they run at once (as a SLURM array or a Kubernetes indexed job).
            c.env("TTTNN_SWEEP_TABLES", &tables)
                .env("TTTNN_SWEEP_WAIT", "600")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            (db, c.spawn().unwrap())
        })
        .collect();
    let workers: Vec<_> = started
        .into_iter()
        .map(|(db, child)| (db, child.wait_with_output().unwrap()))
        .collect();
    let mut queries = 0;
    let mut mine = Vec::new();
    for (_, out) in &workers {
        let s: serde_json::Value = serde_json::from_str(&ok(out.clone())).unwrap();
        queries += s["store_queries"].as_i64().unwrap();
        for p in s["points"].as_array().unwrap() {
            if p["mine"] == true {
                mine.push(p["name"].as_str().unwrap().to_string());
            }
        }
    }
    mine.sort();
    let mut all: Vec<String> = curves_by_name(&whole).into_keys().collect();
    all.sort();
    assert_eq!(mine, all, "every point once");
    assert_eq!(
        queries,
        test_documents(&whole, 1),
        "the table's documents split between them"
    );
    let merged = dir.path().join("merged.duckdb");
    let dbs: Vec<&PathBuf> = workers.iter().map(|(db, _)| db).collect();
    ok(tttnn()
        .args(["merge", "--runs"])
        .arg(&merged)
        .args(&dbs)
        .output()
        .unwrap());
    assert_eq!(curves_by_name(&merged), curves_by_name(&whole));
    // Gathering again copies nothing twice; the sweep over the gathered runs only compares.
    ok(tttnn()
        .args(["merge", "--runs"])
        .arg(&merged)
        .args(&dbs)
        .output()
        .unwrap());
    let s = summary(&file, &merged, &[]);
    assert_eq!(s["store_queries"], 0);
    assert_eq!(
        s["comparison"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["task"] == "pile_all")
            .count(),
        2
    );
}

#[test]
fn compare_gives_the_paired_statistics_of_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("c.duckdb");
    for order in ["nearest", "farthest"] {
        ok(run_cmd(
            &store,
            &db,
            &[&K3[..], &["--neighbor-order", order, "--quiet"]].concat(),
        )
        .output()
        .unwrap());
    }
    let json = ok(tttnn()
        .args([
            "compare",
            "1",
            "2",
            "--resamples",
            "500",
            "--seed",
            "5",
            "--format",
            "json",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap());
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    // The same from the records: per task, the documents' bits per byte at k = 3.
    let per_doc: Vec<(String, String, String, f64)> = conn(&db)
        .prepare(
            "SELECT d.task, d.set_name, d.doc_id,
                    list(-c.loglik / d.bytes / ln(2) ORDER BY d.run_id)[2]
                  - list(-c.loglik / d.bytes / ln(2) ORDER BY d.run_id)[1]
             FROM docs d JOIN curve c USING (run_id, doc_id)
             WHERE c.k = 3 AND d.complete GROUP BY ALL HAVING count(*) = 2 ORDER BY 1, 3",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let weights: BTreeMap<String, f64> = conn(&db)
        .prepare("SELECT set_name, weight FROM pile_weights")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut by_task: BTreeMap<String, (String, Vec<f64>)> = BTreeMap::new();
    for (task, set, _, d) in per_doc {
        by_task.entry(task).or_insert((set, Vec::new())).1.push(d);
    }
    let strata: Vec<Stratum> = by_task
        .values()
        .map(|(set, d)| Stratum {
            weight: weights.get(set).copied(),
            values: vec![d.clone()],
        })
        .collect();
    let want = stats::paired(
        &strata,
        &Resampling {
            resamples: 500,
            seed: 5,
        },
    );
    let close =
        |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() <= 1e-12 * b.abs().max(1.0);
    for (t, task) in by_task.keys().enumerate() {
        let row = rows.iter().find(|r| r["task"] == task.as_str()).unwrap();
        let e = want.strata[t][0].unwrap();
        assert_eq!(row["docs"], e.n as i64);
        assert!(
            close(&row["change"], e.mean) && close(&row["ci_low"], e.ci_low),
            "{row}"
        );
        assert!(
            close(&row["ci_high"], e.ci_high) && close(&row["p_value"], e.p_value),
            "{row}"
        );
    }
    let all = rows.iter().find(|r| r["task"] == "pile_all").unwrap();
    assert!(close(&all["change"], want.whole[0].unwrap().mean), "{all}");
    assert_eq!((&all["resamples"], &all["seed"]), (&500.into(), &5.into()));
    // table1 --ci: each column's interval resamples its run's documents within each task.
    let json = ok(tttnn()
        .args(["sql", "table1", "--run", "2", "--ci", "--resamples", "300"])
        .args(["--seed", "9", "--format", "json", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    let table: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    for (column, k) in [("base_only", 0), ("ttt_nn", 3)] {
        let docs: Vec<(String, String, f64, f64)> = conn(&db)
            .prepare(
                "SELECT d.task, d.set_name, -c.loglik / ln(2), d.bytes FROM docs d
                 JOIN curve c USING (run_id, doc_id)
                 WHERE d.run_id = 2 AND c.k = ? AND d.complete ORDER BY d.task, d.doc_id",
            )
            .unwrap()
            .query_map([k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let mut tasks: BTreeMap<String, (String, Vec<(f64, f64)>)> = BTreeMap::new();
        for (task, set, bits, bytes) in docs {
            tasks
                .entry(task)
                .or_insert((set, Vec::new()))
                .1
                .push((bits, bytes));
        }
        let strata: Vec<stats::RatioStratum> = tasks
            .values()
            .map(|(set, d)| stats::RatioStratum {
                weight: weights.get(set).copied(),
                docs: d.clone(),
            })
            .collect();
        let r = Resampling {
            resamples: 300,
            seed: 9,
        };
        let got = stats::ratio_interval(&strata, &r);
        let rounded = |x: f64| (x * 1e4).round() / 1e4;
        let names = tasks.keys().map(String::as_str).chain(["pile_all"]);
        for (task, want) in names.zip(got.strata.into_iter().chain([got.whole])) {
            let stats::Interval { low, high } = want.unwrap();
            let row = table.iter().find(|r| r["task"] == task).unwrap();
            assert_eq!(row[format!("{column}_ci_low")], rounded(low), "{row}");
            assert_eq!(row[format!("{column}_ci_high")], rounded(high), "{row}");
            assert!(low < high, "{column} {task}: {low} {high}");
        }
    }
    let err = fails(
        tttnn()
            .args(["sql", "cost", "--ci", "--db"])
            .arg(&db)
            .output()
            .unwrap(),
        1,
    );
    assert!(err.contains("table1 --ci"), "{err}");
    // Every format; Parquet to a file.
    let csv = ok(tttnn()
        .args(["compare", "1", "2", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    assert!(
        csv.starts_with("task,run_id,name,method,baseline_run,docs,"),
        "{csv}"
    );
    let parquet = dir.path().join("c.parquet");
    ok(tttnn()
        .args(["compare", "1", "2", "--format", "parquet", "--out"])
        .arg(&parquet)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap());
    assert_eq!(&std::fs::read(&parquet).unwrap()[..4], b"PAR1");
    let err = fails(
        tttnn()
            .args(["compare", "1", "9", "--db"])
            .arg(&db)
            .output()
            .unwrap(),
        1,
    );
    assert!(err.contains("no run 9"), "{err}");
}

#[test]
fn neighbor_gains_sum_to_each_documents_change_and_order_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("g.duckdb");
    let reset = ["--optimizer-state", "reset", "--quiet"];
    ok(run_cmd(&store, &db, &[&K3[..], &reset].concat())
        .output()
        .unwrap());
    // Σ gains = bpb(3) - bpb(0), for every document.
    let off: f64 = conn(&db)
        .query_row(
            "WITH g AS (SELECT doc_id, sum(bpb_change) AS s FROM neighbor_gain WHERE run_id = 1 GROUP BY doc_id),
                  t AS (SELECT d.doc_id, (-c3.loglik + c0.loglik) / d.bytes / ln(2) AS total
                        FROM docs d JOIN curve c0 ON c0.run_id = d.run_id AND c0.doc_id = d.doc_id AND c0.k = 0
                        JOIN curve c3 ON c3.run_id = d.run_id AND c3.doc_id = d.doc_id AND c3.k = 3
                        WHERE d.run_id = 1)
             SELECT max(abs(g.s - t.total)) FROM g JOIN t USING (doc_id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(off < 1e-12, "{off}");
    let utility = ok(tttnn()
        .args(["sql", "utility", "--format", "csv", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    assert!(
        utility.contains(",rank,1,") && utility.contains(",distance,"),
        "{utility}"
    );

    // The oracle order: the neighbours by measured gain, the most helpful first.
    ok(run_cmd(
        &store,
        &db,
        &[
            &K3[..],
            &reset,
            &["--neighbor-order", "oracle", "--oracle-run", "1"],
        ]
        .concat(),
    )
    .output()
    .unwrap());
    let order = |sql: &str| -> BTreeMap<String, Vec<i64>> {
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let rows: Vec<(String, i64)> = conn(&db)
            .prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (doc, rank) in rows {
            out.entry(doc).or_default().push(rank);
        }
        out
    };
    let measured = order(
        "SELECT doc_id, rank FROM neighbor_gain WHERE run_id = 1 ORDER BY doc_id, bpb_change, rank",
    );
    let trained =
        order("SELECT doc_id, rank FROM neighbors WHERE run_id = 2 ORDER BY doc_id, position");
    assert_eq!(trained, measured);
    // Refused: a run not evaluated after every neighbour, a run that is not there.
    ok(run_cmd(
        &store,
        &db,
        &[&K3[..], &reset, &["--eval-at", "3"]].concat(),
    )
    .output()
    .unwrap());
    let err = fails(
        run_cmd(
            &store,
            &db,
            &[
                &K3[..],
                &["--neighbor-order", "oracle", "--oracle-run", "3"],
            ]
            .concat(),
        )
        .output()
        .unwrap(),
        1,
    );
    assert!(
        err.contains("`oracle_run`") && err.contains("--eval-at all"),
        "{err}"
    );
    let err = fails(
        run_cmd(
            &store,
            &db,
            &[
                &K3[..],
                &["--neighbor-order", "oracle", "--oracle-run", "8"],
            ]
            .concat(),
        )
        .output()
        .unwrap(),
        1,
    );
    assert!(err.contains("no run 8"), "{err}");
    let err = fails(
        run_cmd(
            &store,
            &db,
            &[&K3[..], &["--neighbor-order", "oracle"]].concat(),
        )
        .output()
        .unwrap(),
        1,
    );
    assert!(err.contains("--oracle-run"), "{err}");

    // Plots: gains for the runs evaluated after every neighbour, the runs against the first.
    let plots = dir.path().join("plots");
    let written = ok(tttnn()
        .args([
            "report",
            "--run",
            "1",
            "--run",
            "2",
            "--run",
            "3",
            "--compare",
        ])
        .args(["--resamples", "200", "--out"])
        .arg(&plots)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap());
    let mut names: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "compare-1-2-3.png",
            "run-1-before_after.png",
            "run-1-bpb_vs_k.png",
            "run-1-gain_vs_distance.png",
            "run-1-gain_vs_rank.png",
            "run-2-before_after.png",
            "run-2-bpb_vs_k.png",
            "run-2-gain_vs_distance.png",
            "run-2-gain_vs_rank.png",
            "run-3-before_after.png",
            "run-3-bpb_vs_k.png",
        ]
    );
    assert_eq!(written.lines().count(), 2 * names.len(), "{written}");
    let svg = std::fs::read_to_string(plots.join("compare-1-2-3.svg")).unwrap();
    assert!(
        svg.contains("run 2") && svg.contains("200 resamples"),
        "one run named, the resampling"
    );
    let err = fails(
        tttnn()
            .args(["report", "--run", "1", "--compare", "--out"])
            .arg(&plots)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap(),
        1,
    );
    assert!(err.contains("two --run or more"), "{err}");
}

#[test]
fn a_sweep_on_slurm_or_kubernetes_splits_its_points_and_gathers_their_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let mut gathered = Vec::new();
    for scheduler in ["slurm", "k8s"] {
        let dir = dir.path().join(scheduler);
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("store");
        let file = sweep_file(&dir, &store, "");
        let table = dir.join("neighbors").display().to_string();
        // Ingest on 2 workers, the 3 points on 2 workers, then one job gathers and compares.
        let results = crate::runner::cluster_sim(
            &dir,
            scheduler,
            (2, 1),
            (&store.display().to_string(), &table),
            None,
            Some(&file),
        );
        let comparison = std::fs::read_to_string(dir.join("results/comparison.csv")).unwrap();
        assert_eq!(
            comparison
                .lines()
                .filter(|l| l.starts_with("pile_all,"))
                .count(),
            2,
            "{scheduler}: {comparison}"
        );
        gathered.push((store, file, curves_by_name(&results)));
    }
    // The same points on one machine, on the store the SLURM workers ingested.
    let (_, file, slurm) = &gathered[0];
    let whole = dir.path().join("whole.duckdb");
    summary(file, &whole, &[]);
    assert_eq!(slurm, &curves_by_name(&whole));
    assert_eq!(slurm.len(), 3);
    assert_eq!(&gathered[1].2, slurm, "k8s");
}
