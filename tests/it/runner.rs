//! `tttnn run`, `sql`, `report` and `merge` end to end from the CLI on the committed tiny models:
//! the recorded numbers equal the LM engine's, a killed run resumes to the same rows, shards merge
//! into the unsharded run.
use crate::util::{curve, encoder, model, ok, tttnn, Fixture};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tttnn::eval;
use tttnn::records::Db;
use tttnn::store::Store;
use tttnn::task;
use tttnn::ttt::{TrainConfig, Trainer};

/// The settings most tests run with.
pub const K3: [&str; 4] = ["--task", "pile_all", "--neighbors", "3"];

/// Runs `cmd` with its stderr read line by line and kills it (SIGKILL) at the first line `stop`
/// accepts.
pub fn kill_when(cmd: &mut Command, mut stop: impl FnMut(&str) -> bool) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if stop(&line.unwrap()) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs `args` (run settings) to the end into `dir/whole.duckdb`; runs them again into
/// `dir/killed.duckdb` with `-v`, killed (SIGKILL) at the first stderr line `stop` accepts —
/// `stop` sees each line and how many documents were recorded before it — checks the kill left a
/// partial run, and resumes it. Returns (whole, killed).
pub fn kill_and_resume(
    dir: &Path,
    store: &Path,
    args: &[&str],
    mut stop: impl FnMut(&str, usize) -> bool,
) -> (PathBuf, PathBuf) {
    let whole = dir.join("whole.duckdb");
    ok(run_cmd(store, &whole, &[args, &["--quiet"]].concat())
        .output()
        .unwrap());
    let killed = dir.join("killed.duckdb");
    let mut recorded = 0;
    kill_when(
        &mut run_cmd(store, &killed, &[args, &["-v"]].concat()),
        |line| {
            recorded += usize::from(line.starts_with("doc "));
            stop(line, recorded)
        },
    );
    let partial = curve(&killed, 1).len();
    assert!(
        partial > 0 && partial < curve(&whole, 1).len(),
        "killed mid-run: {partial} points"
    );
    ok(tttnn()
        .args(["run", "--quiet", "--resume", "1", "--db"])
        .arg(&killed)
        .output()
        .unwrap());
    (whole, killed)
}

/// `tttnn run` of the tiny GPT-2 on `store`, recording in `db`.
pub fn run_cmd(store: &Path, db: &Path, extra: &[&str]) -> Command {
    run_model_cmd(&model(), store, db, extra)
}

/// `tttnn run` of `model` on `store`, recording in `db`.
pub fn run_model_cmd(model: &Path, store: &Path, db: &Path, extra: &[&str]) -> Command {
    let mut c = tttnn();
    c.args(["run", "--lr", "1e-3", "--val-portion", "1.0"])
        .arg("--store")
        .arg(store)
        .arg("--encoder")
        .arg(encoder())
        .arg("--model")
        .arg(model)
        .arg("--db")
        .arg(db)
        .args(extra);
    c
}

/// `tttnn neighbors` of every test document of `store` (pile_all, --val-portion 1.0) into
/// `table`.
pub fn neighbors_cmd(store: &Path, table: &Path, extra: &[&str]) -> Command {
    let mut c = tttnn();
    c.args(["neighbors", "--task", "pile_all", "--val-portion", "1.0"])
        .arg("--store")
        .arg(store)
        .arg("--out")
        .arg(table)
        .args(extra);
    c
}

/// (doc, rank) → (neighbour, distance) of `run`.
pub fn neighbors(db: &Path, run: i64) -> BTreeMap<(String, i64), (String, f64)> {
    let db = crate::util::conn(db);
    let mut stmt = db
        .prepare("SELECT doc_id, rank, neighbor_id, distance FROM neighbors WHERE run_id = ?")
        .unwrap();
    let rows = stmt
        .query_map([run], |r| {
            Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[test]
fn run_records_what_the_engine_computes_and_sql_and_report_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("results.duckdb");
    let table = ok(run_cmd(&store, &db, &[&K3[..], &["--quiet"]].concat())
        .output()
        .unwrap());
    assert!(
        table.contains("pile_all") && table.contains("pile_github"),
        "{table}"
    );

    // The documents are the CPython Random(1216) shuffle of each set's test documents in file order.
    let s = Store::open(&store).unwrap();
    let records = crate::util::conn(&db);
    let mut stmt = records
                .prepare("SELECT doc_id, set_name, position, seq, complete FROM docs WHERE run_id = 1 ORDER BY seq")
        .unwrap();
    let docs: Vec<(String, String, i64, i64, bool)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    drop(stmt);
    drop(records);
    let mut sets: Vec<String> = docs.iter().map(|d| d.1.clone()).collect();
    sets.dedup();
    let mut expected = Vec::new();
    for set in &sets {
        let in_order = s.documents_of("test", Some(set)).unwrap();
        for i in task::test_subset(in_order.len(), 1.0, task::SEED) {
            expected.push(in_order[i].id.clone());
        }
    }
    assert_eq!(
        docs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(
        docs.iter().all(|d| d.4),
        "every document has its 3 neighbours"
    );

    // Replay the run with the library: same neighbours, same numbers.
    let curve = curve(&db, 1);
    let nbrs = neighbors(&db, 1);
    assert!(
        nbrs.values().all(|(id, _)| id.starts_with("train.jsonl:")),
        "neighbours come from the train split only"
    );
    let lm = crate::util::load_lm(&model());
    let mut trainer = Trainer::new(
        &lm,
        TrainConfig {
            lr: 1e-3,
            max_length: lm.n_ctx,
            ..Default::default()
        },
    )
    .unwrap();
    let mut last_set = String::new();
    for (doc_id, set, _, _, _) in &docs {
        if *set != last_set {
            trainer.reset_optimizer();
            last_set = set.clone();
        }
        let text = s.document(doc_id).unwrap().unwrap().text;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
        let base = eval::loglikelihood(&lm, &text).unwrap();
        assert!(
            close(base.loglik, curve[&(doc_id.clone(), 0)]),
            "{doc_id} k=0"
        );
        for rank in 1..=3 {
            let (nid, _) = &nbrs[&(doc_id.clone(), rank)];
            let ntext = s.document(nid).unwrap().unwrap().text;
            trainer.train_on_text(&lm, &ntext).unwrap();
            let ll = eval::loglikelihood(&lm, &text).unwrap().loglik;
            assert!(
                close(ll, curve[&(doc_id.clone(), rank)]),
                "{doc_id} k={rank}: {ll} vs {}",
                curve[&(doc_id.clone(), rank)]
            );
        }
        trainer.reset_weights();
    }

    // Canned SQL in every format.
    let csv = ok(tttnn()
        .args(["sql", "bpb_vs_k", "--format", "csv", "--run", "1", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    assert!(
        csv.starts_with("run_id,task,k,pass,docs,bits_per_byte"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.contains(",pile_all,")).count(),
        4,
        "{csv}"
    );
    let json = ok(tttnn()
        .args(["sql", "cost", "--format", "json", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["s_per_neighbor"].as_f64().unwrap() > 0.0),
        "{json}"
    );
    let parquet = dir.path().join("t.parquet");
    ok(tttnn()
        .args(["sql", "SELECT * FROM docs", "--format", "parquet", "--out"])
        .arg(&parquet)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap());
    assert_eq!(&std::fs::read(&parquet).unwrap()[..4], b"PAR1");
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "SELECT count(*) AS n FROM curve WHERE run_id = 1;").unwrap();
    let t = ok(tttnn()
        .arg("sql")
        .arg(&file)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap());
    assert!(t.contains(&format!("| {} |", curve.len())), "{t}");
    let bad = tttnn()
        .args(["sql", "SELECT nope FROM docs", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));

    let plots = dir.path().join("plots");
    let listed = ok(tttnn()
        .args(["report", "--quiet", "--db"])
        .arg(&db)
        .arg("--out")
        .arg(&plots)
        .output()
        .unwrap());
    // bpb_vs_k, before_after and (evaluated after every neighbour) gain_vs_rank and
    // gain_vs_distance, each as PNG and SVG.
    assert_eq!(listed.lines().count(), 8, "{listed}");
    let png = std::fs::read(plots.join("run-1-bpb_vs_k.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let svg = std::fs::read_to_string(plots.join("run-1-before_after.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("github"));
}

#[test]
fn killed_run_resumes_to_the_rows_of_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    // Kill in the middle of the fifth document, after its second neighbour.
    let (whole, killed) = kill_and_resume(dir.path(), &store, &K3, |line, recorded| {
        recorded == 4 && line.contains(" k=2 ")
    });
    assert_eq!(curve(&killed, 1), curve(&whole, 1));
    assert_eq!(neighbors(&killed, 1), neighbors(&whole, 1));
    let db = crate::util::conn(&killed);
    let status: String = db
        .query_row("SELECT status FROM runs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "finished");
    assert!(!PathBuf::from(format!("{}.optimizer/run-1.safetensors", killed.display())).exists());
}

#[test]
fn merged_shards_equal_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    // Carried AdamW state depends on which documents a worker saw (as the original's ranks), so
    // shards reproduce the unsharded run exactly with per-document state.
    let reset = [&K3[..], &["--quiet", "--optimizer-state", "reset"]].concat();
    let whole = dir.path().join("whole.duckdb");
    ok(run_cmd(&store, &whole, &reset).output().unwrap());
    let mut shards = Vec::new();
    for i in 0..2 {
        let db = dir.path().join(format!("shard{i}.duckdb"));
        ok(run_cmd(
            &store,
            &db,
            &[&reset[..], &["--shard", &format!("{i}/2")]].concat(),
        )
        .output()
        .unwrap());
        shards.push(db);
    }
    let merged = dir.path().join("merged.duckdb");
    let id = ok(tttnn()
        .arg("merge")
        .arg(&merged)
        .args(&shards)
        .output()
        .unwrap());
    assert_eq!(id.trim(), "1");
    assert_eq!(curve(&merged, 1), curve(&whole, 1));
    assert_eq!(neighbors(&merged, 1), neighbors(&whole, 1));
    let t1 = |db: &Path| {
        ok(tttnn()
            .args(["sql", "table1", "--format", "csv", "--db"])
            .arg(db)
            .output()
            .unwrap())
    };
    assert_eq!(t1(&merged), t1(&whole));

    // One shard missing, or given twice: a clear error, exit 1.
    let out = tttnn()
        .arg("merge")
        .arg(dir.path().join("m2.duckdb"))
        .arg(&shards[0])
        .arg(&shards[0])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("given twice"));
}

#[test]
fn bad_settings_and_a_busy_database_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "neighbors = 2\nneighbours = 3\n").unwrap();
    let db = dir.path().join("r.duckdb");
    let out = run_cmd(
        &store,
        &db,
        &[&K3[..], &["--config", config.to_str().unwrap()]].concat(),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run.toml:2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run_cmd(&store, &db, &["--task", "pile_arxiv"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no `test` documents of set `ArXiv`"));

    // CUDA graphs capture GPU training steps.
    for (extra, want) in [
        (&["--cuda-graphs", "on"][..], "--device cuda"),
        (
            &[
                "--cuda-graphs",
                "on",
                "--lanes",
                "2",
                "--optimizer-state",
                "reset",
            ][..],
            "--device cuda",
        ),
        (
            &["--cuda-graphs", "on", "--method", "in-context"][..],
            "does not train",
        ),
    ] {
        let err = crate::util::fails(
            run_cmd(&store, &db, &[&K3[..], extra].concat())
                .output()
                .unwrap(),
            1,
        );
        assert!(err.contains("cuda_graphs") && err.contains(want), "{err}");
    }

    // TOML settings apply; a flag beats the file.
    std::fs::write(
        &config,
        "task = \"pile_all\"\nneighbors = 2\neval_at = \"1\"\nlimit_docs = 1\n",
    )
    .unwrap();
    ok(run_cmd(
        &store,
        &db,
        &[
            "--quiet",
            "--config",
            config.to_str().unwrap(),
            "--neighbors",
            "3",
        ],
    )
    .output()
    .unwrap());
    let points = curve(&db, 1);
    let docs: std::collections::BTreeSet<&String> = points.keys().map(|(d, _)| d).collect();
    assert!(
        points.keys().all(|(_, k)| [0, 1, 3].contains(k)),
        "{points:?}"
    );
    assert_eq!(
        points.len(),
        docs.len() * 3,
        "one document per set, k = 0, 1, 3"
    );

    // A hold that outlasts the wait is a clear error naming the file and the wait.
    let holder = Db::open(&db).unwrap();
    let out = run_cmd(&store, &db, &K3)
        .env("TTTNN_DB_WAIT", "0.5")
        .output()
        .unwrap();
    let err = crate::util::fails(out, 1);
    assert!(
        err.contains("in use by another process (waited 0.5 s"),
        "{err}"
    );
    drop(holder);
}

#[test]
fn two_runs_and_a_reader_share_one_database_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let db = dir.path().join("shared.duckdb");
    // Created first, so both runs and the reader find the schema in place.
    drop(Db::open(&db).unwrap());
    let spawn = |method: &str| {
        run_cmd(&store, &db, &K3)
            .args(["--quiet", "--method", method])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut runs = [spawn("ttt-nn"), spawn("in-context")];
    let (mut polls, mut seen_rows) = (0, 0);
    let statuses = loop {
        // The reader polls table1 about every second, as `tttnn sql table1 --watch 1` would.
        let out = tttnn()
            .args([
                "sql",
                "SELECT count(*) AS n FROM docs",
                "--format",
                "csv",
                "--db",
            ])
            .arg(&db)
            .output()
            .unwrap();
        let text = ok(out);
        seen_rows = seen_rows.max(text.lines().nth(1).unwrap().parse::<i64>().unwrap());
        ok(tttnn()
            .args(["sql", "table1", "--db"])
            .arg(&db)
            .output()
            .unwrap());
        polls += 1;
        let done: Vec<_> = runs.iter_mut().map(|c| c.try_wait().unwrap()).collect();
        if done.iter().all(|d| d.is_some()) {
            break done;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    for (status, child) in statuses.iter().zip(runs) {
        let err = child.wait_with_output().unwrap().stderr;
        assert!(
            status.unwrap().success(),
            "{}",
            String::from_utf8_lossy(&err)
        );
    }
    let c = crate::util::conn(&db);
    let per_run: Vec<(String, String, i64)> = c
        .prepare(
            "SELECT r.method, r.status, count(d.doc_id) FROM runs r JOIN docs d ON d.run_id = r.id
             GROUP BY r.method, r.status ORDER BY r.method",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let docs = Store::open(&store)
        .unwrap()
        .documents_of("test", None)
        .unwrap()
        .len() as i64;
    assert_eq!(
        per_run,
        vec![
            ("in-context".to_string(), "finished".to_string(), docs),
            ("ttt-nn".to_string(), "finished".to_string(), docs)
        ]
    );
    assert!(polls >= 2, "the runs ended before the reader could look");
    assert!(seen_rows <= 2 * docs);
    // Every TTT-NN row equals a run done alone into its own database.
    let alone = dir.path().join("alone.duckdb");
    ok(run_cmd(&store, &alone, &K3)
        .arg("--quiet")
        .output()
        .unwrap());
    let shared_run: i64 = c
        .query_row("SELECT id FROM runs WHERE method = 'ttt-nn'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(curve(&db, shared_run), curve(&alone, 1));
}

#[test]
fn a_neighbour_table_gives_the_neighbours_and_curves_of_live_retrieval() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let table = dir.path().join("neighbors.lance");
    let neighbors_cmd = |extra: &[&str]| {
        neighbors_cmd(
            &store,
            &table,
            &[&["--quiet", "-k", "3"][..], extra].concat(),
        )
    };
    // Two shards write one table at once.
    let mut computed = 0;
    for out in crate::util::all_ok(["0/2", "1/2"].map(|s| neighbors_cmd(&["--shard", s]))) {
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        computed += summary["computed"].as_u64().unwrap();
    }
    let docs = Store::open(&store)
        .unwrap()
        .documents_of("test", None)
        .unwrap()
        .len() as u64;
    assert_eq!(computed, docs);
    // Resumable: the whole set again finds every document done.
    let again: serde_json::Value =
        serde_json::from_str(&ok(neighbors_cmd(&[]).output().unwrap())).unwrap();
    assert_eq!(
        (again["documents"].as_u64(), again["computed"].as_u64()),
        (Some(docs), Some(0))
    );

    let live = dir.path().join("live.duckdb");
    let from_table = dir.path().join("table.duckdb");
    ok(run_cmd(&store, &live, &K3).arg("--quiet").output().unwrap());
    ok(run_cmd(&store, &from_table, &K3)
        .arg("--quiet")
        .arg("--neighbors-from")
        .arg(&table)
        .output()
        .unwrap());
    assert_eq!(neighbors(&live, 1), neighbors(&from_table, 1));
    assert_eq!(curve(&live, 1), curve(&from_table, 1));
    assert!(!curve(&live, 1).is_empty());
    // A run that would retrieve otherwise is refused, naming the setting.
    let out = run_cmd(&store, &from_table, &K3)
        .args(["--distance-threshold", "1.5", "--neighbors-from"])
        .arg(&table)
        .output()
        .unwrap();
    let err = crate::util::fails(out, 1);
    assert!(err.contains("--distance-threshold"), "{err}");
    let out = run_cmd(
        &store,
        &from_table,
        &["--task", "pile_all", "-k", "5", "--neighbors-from"],
    )
    .arg(&table)
    .output()
    .unwrap();
    let err = crate::util::fails(out, 1);
    assert!(
        err.contains("k (or SIFT's candidates) is 5, the neighbour table's 3"),
        "{err}"
    );
}

#[test]
fn neighbours_by_matrix_products_in_shards_and_slices_equal_per_query_exact_search() {
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let neighbors_cmd = |table: &Path, extra: &[&str]| {
        neighbors_cmd(&store, table, &[&["-k", "4"][..], extra].concat())
    };
    let per_query = dir.path().join("per-query");
    ok(
        neighbors_cmd(&per_query, &["-q", "--exact-search", "per-query"])
            .output()
            .unwrap(),
    );
    // 2 shards of the documents x 2 slices of the store, all four writing one table at once.
    let sliced = dir.path().join("sliced");
    let workers = [
        ("0/2", "0/2"),
        ("0/2", "1/2"),
        ("1/2", "0/2"),
        ("1/2", "1/2"),
    ]
    .map(|(shard, slice)| {
        neighbors_cmd(
            &sliced,
            &[
                "-q",
                "--shard",
                shard,
                "--slice",
                slice,
                "--block-rows",
                "5",
            ],
        )
    });
    for out in crate::util::all_ok(workers) {
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["search"], "matmul");
    }
    // One worker killed after its first commit of two documents, then resumed.
    let resumed = dir.path().join("resumed");
    kill_when(
        &mut neighbors_cmd(&resumed, &["-v", "--query-batch", "2"]),
        |l| l.contains("documents in the table"),
    );
    let again: serde_json::Value =
        serde_json::from_str(&ok(neighbors_cmd(&resumed, &["-q"]).output().unwrap())).unwrap();
    assert!(again["computed"].as_u64().unwrap() < again["documents"].as_u64().unwrap());

    let load = |table: &Path, slices: u32| {
        tttnn::store::NeighborTable::open(table)
            .unwrap()
            .load(slices, 4)
            .unwrap()
    };
    let want = load(&per_query, 1);
    assert!(want.values().any(|l| l.len() == 4), "{want:?}");
    for (got, what) in [
        (load(&sliced, 2), "2 x 2 workers"),
        (load(&resumed, 1), "resumed"),
    ] {
        assert_eq!(got.len(), want.len(), "{what}");
        for (doc, list) in &want {
            let other = &got[doc];
            let ids = |l: &[tttnn::store::TableNeighbor]| {
                l.iter().map(|n| (n.rank, n.id.clone())).collect::<Vec<_>>()
            };
            assert_eq!(ids(other), ids(list), "{what}: {doc}");
            for (a, b) in other.iter().zip(list) {
                assert!(
                    (a.distance - b.distance).abs() <= 1e-5,
                    "{what}: {doc} {a:?} {b:?}"
                );
            }
        }
    }
    // Slices need the matrix products.
    let err = crate::util::fails(
        neighbors_cmd(
            &dir.path().join("x"),
            &["--slice", "0/2", "--exact-search", "per-query"],
        )
        .output()
        .unwrap(),
        1,
    );
    assert!(err.contains("slice"), "{err}");
}

/// Runs examples/cluster's recipe for `scheduler` through scripts/cluster-sim (local workers given
/// the scheduler's index variables) on the fixture corpus, the store and the neighbour table at
/// `store` and `table` (local or `s3://`, with `s3`'s variables), the neighbour stage in
/// `workers` × `slices` tasks; returns the merged results.
pub(crate) fn cluster_sim(
    dir: &Path,
    scheduler: &str,
    (workers, slices): (usize, usize),
    (store, table): (&str, &str),
    s3: Option<&crate::s3::S3Server>,
    sweep: Option<&Path>,
) -> PathBuf {
    let (mut train, mut test) = (String::new(), String::new());
    let corpus = std::fs::read_to_string(crate::util::fixtures().join("corpus.jsonl")).unwrap();
    for (i, l) in corpus.lines().enumerate() {
        let out = if i % 4 == 1 { &mut test } else { &mut train };
        out.push_str(l);
        out.push('\n');
    }
    let (train_file, test_file) = (dir.join("train.jsonl"), dir.join("test.jsonl"));
    std::fs::write(&train_file, train).unwrap();
    std::fs::write(&test_file, test).unwrap();
    let repo = crate::util::repo();
    let mut cmd = Command::new(repo.join("scripts/cluster-sim"));
    // Its workers run at once on this machine's cores.
    crate::util::one_thread(&mut cmd);
    if let Some(s3) = s3 {
        s3.env(&mut cmd);
    }
    if let Some(sweep) = sweep {
        cmd.env("TTTNN_SWEEP", sweep);
    }
    ok(cmd
        .arg(scheduler)
        .env("TTTNN_BIN", crate::util::tttnn_bin())
        .env("WORKERS", workers.to_string())
        .env("TTTNN_SLICES", slices.to_string())
        .env("TTTNN_STORE", store)
        .env("TTTNN_ENCODER", encoder())
        .env("TTTNN_MODEL", model())
        .env("TTTNN_TASK", "pile_all")
        .env("TTTNN_NEIGHBORS", "3")
        .env("TTTNN_TRAIN_FILES", &train_file)
        .env("TTTNN_TEST_FILES", &test_file)
        .env("TTTNN_NEIGHBOR_TABLE", table)
        .env("TTTNN_NEIGHBORS_ARGS", "--val-portion 1.0")
        .env("TTTNN_RESULTS", dir.join("results"))
        .env(
            "TTTNN_RUN_ARGS",
            "--lr 1e-3 --val-portion 1.0 --optimizer-state reset",
        )
        .output()
        .unwrap());
    dir.join("results/results.duckdb")
}

#[test]
fn the_slurm_and_kubernetes_recipes_merge_to_one_workers_run() {
    let dir = tempfile::tempdir().unwrap();
    let (slurm_dir, k8s_dir) = (dir.path().join("slurm"), dir.path().join("k8s"));
    std::fs::create_dir_all(&slurm_dir).unwrap();
    std::fs::create_dir_all(&k8s_dir).unwrap();
    // SLURM on a shared filesystem; Kubernetes with the store and the table on S3.
    let slurm_store = slurm_dir.join("store").display().to_string();
    let slurm_table = slurm_dir.join("neighbors").display().to_string();
    // SLURM's neighbour stage: 2 shards of the documents x 2 slices of the store.
    let slurm = cluster_sim(
        &slurm_dir,
        "slurm",
        (2, 2),
        (&slurm_store, &slurm_table),
        None,
        None,
    );
    let s3 = crate::s3::S3Server::start("cluster");
    let k8s = cluster_sim(
        &k8s_dir,
        "k8s",
        (3, 1),
        ("s3://cluster/store", "s3://cluster/neighbors"),
        Some(&s3),
        None,
    );
    // One worker, the whole task, live retrieval, on the store the SLURM workers ingested.
    let single = dir.path().join("single.duckdb");
    ok(run_cmd(&slurm_dir.join("store"), &single, &K3)
        .args(["--quiet", "--optimizer-state", "reset"])
        .output()
        .unwrap());
    let table1 = |db: &Path| {
        ok(tttnn()
            .args(["sql", "table1", "--format", "csv", "--db"])
            .arg(db)
            .output()
            .unwrap())
    };
    assert!(table1(&single).lines().count() > 2, "{}", table1(&single));
    // The neighbours first: a difference there names the documents it comes from.
    let ids = |db: &Path| {
        neighbors(db, crate::util::last_run(db))
            .into_iter()
            .map(|(doc, (id, _))| (doc, id))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(ids(&slurm), ids(&single), "slurm");
    assert_eq!(ids(&k8s), ids(&single), "k8s");
    assert_eq!(table1(&slurm), table1(&single));
    assert_eq!(table1(&k8s), table1(&single));
    let merged = crate::util::last_run(&slurm);
    assert_eq!(curve(&slurm, merged), curve(&single, 1));
}
