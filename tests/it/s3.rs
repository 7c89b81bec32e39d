//! Stores and neighbour tables on object storage (`s3://bucket/prefix`) against a local
//! S3-compatible server (PyPI moto, installed by scripts/setup and started here): first that the
//! server honours conditional PUT atomically, as Lance's commits need, then that ingest, search,
//! neighbour tables, runs and sharded ingest give what they give on a local disk.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::util::{curve, encoder, fixtures, model, ok, tttnn};

/// A local S3 server with one bucket, stopped when dropped.
pub struct S3Server {
    child: Child,
    endpoint: String,
}

fn s3_python() -> PathBuf {
    PathBuf::from(std::env::var_os("TTTNN_S3_PYTHON").expect(
        "TTTNN_S3_PYTHON is unset: run scripts/setup (it installs the local S3 server) and source .tttnn-env",
    ))
}

fn script(name: &str) -> PathBuf {
    crate::util::repo().join("scripts").join(name)
}

impl S3Server {
    /// Starts a server with `bucket`.
    pub fn start(bucket: &str) -> Self {
        let mut child = Command::new(s3_python())
            .arg(script("s3_server.py"))
            .arg(bucket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut endpoint = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut endpoint)
            .unwrap();
        assert!(endpoint.starts_with("http://"), "no endpoint: {endpoint:?}");
        S3Server {
            child,
            endpoint: endpoint.trim().to_string(),
        }
    }

    /// `cmd` with the standard AWS variables pointing at this server.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_local_s3_server_honours_conditional_put_atomically() {
    let s3 = S3Server::start("probe");
    // Many writers of small bodies, then fewer of manifest-sized and larger ones: moto stores a
    // body after checking the condition, and without scripts/s3_server.py's write lock two
    // writers of 2 MB bodies were seen to both win.
    for (writers, rounds, bytes) in [(64, 3, 0), (16, 4, 2_000_000)] {
        let out = ok(Command::new(s3_python())
            .arg(script("s3_conditional_put.py"))
            .arg(&s3.endpoint)
            .arg("probe")
            .args(["--writers", &writers.to_string()])
            .args(["--rounds", &rounds.to_string()])
            .args(["--bytes", &bytes.to_string()])
            .output()
            .unwrap());
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        for round in report["rounds"].as_array().unwrap() {
            // One new key: exactly one writer wins, every other gets 412, the winner's bytes stay.
            assert_eq!(round["outcomes"]["ok"], 1, "{report}");
            assert_eq!(round["outcomes"]["412"], writers - 1, "{report}");
            assert_eq!(round["winner_stored"], true, "{report}");
        }
    }
}

/// Train and test JSONL of the fixture corpus (every fourth line a test document), in `dir`.
fn corpus_files(dir: &Path) -> (PathBuf, PathBuf) {
    let (mut train, mut test) = (String::new(), String::new());
    let corpus = std::fs::read_to_string(fixtures().join("corpus.jsonl")).unwrap();
    for (i, l) in corpus.lines().enumerate() {
        let out = if i % 4 == 1 { &mut test } else { &mut train };
        out.push_str(l);
        out.push('\n');
    }
    let (a, b) = (dir.join("train.jsonl"), dir.join("test.jsonl"));
    std::fs::write(&a, train).unwrap();
    std::fs::write(&b, test).unwrap();
    (a, b)
}

fn ingest(s3: &S3Server, store: &str, file: &Path, split: &str, extra: &[&str]) -> Command {
    let mut c = tttnn();
    s3.env(&mut c)
        .args(["ingest", "--quiet", "--split", split, "--store", store])
        .arg("--encoder")
        .arg(encoder())
        .arg(file)
        .args(extra);
    c
}

#[test]
fn a_store_on_s3_ingests_searches_and_runs_as_a_local_one() {
    let s3 = S3Server::start("tttnn");
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = corpus_files(dir.path());
    let local = dir.path().join("store").display().to_string();
    let remote = "s3://tttnn/stores/fixture";
    for store in [local.as_str(), remote] {
        ok(ingest(&s3, store, &train, "train", &[]).output().unwrap());
        ok(ingest(&s3, store, &test, "test", &[]).output().unwrap());
    }
    let search = |store: &str| {
        ok(s3
            .env(&mut tttnn())
            .args([
                "search",
                "--json",
                "-k",
                "5",
                "--doc-id",
                "test.jsonl:2",
                "--store",
                store,
            ])
            .output()
            .unwrap())
    };
    assert_eq!(search(remote), search(&local));
    assert!(search(remote).contains("train.jsonl:"));
    let run = |store: &str, db: &Path, extra: &[&str]| {
        ok(s3
            .env(&mut tttnn())
            .args([
                "run", "--quiet", "--task", "pile_all", "-k", "3", "--lr", "1e-3",
            ])
            .args(["--val-portion", "1.0", "--store", store, "--db"])
            .arg(db)
            .arg("--model")
            .arg(model())
            .args(extra)
            .output()
            .unwrap())
    };
    // An endpoint variable that is not a URL (a failed `$(...)`) is a setting error, not a panic.
    let err = crate::util::fails(
        s3.env(&mut tttnn())
            .env("AWS_ENDPOINT_URL", "")
            .args(["search", "--doc-id", "test.jsonl:2", "--store", remote])
            .output()
            .unwrap(),
        1,
    );
    assert!(err.contains("AWS_ENDPOINT_URL"), "{err}");
    let (local_db, remote_db) = (
        dir.path().join("local.duckdb"),
        dir.path().join("remote.duckdb"),
    );
    run(&local, &local_db, &[]);
    run(remote, &remote_db, &[]);
    assert!(!curve(&local_db, 1).is_empty());
    assert_eq!(curve(&remote_db, 1), curve(&local_db, 1));
    // A neighbour table on S3, read by a run: the same curves again.
    ok(s3
        .env(&mut tttnn())
        .args([
            "neighbors",
            "--quiet",
            "--task",
            "pile_all",
            "-k",
            "3",
            "--val-portion",
            "1.0",
        ])
        .args(["--store", remote, "--out", "s3://tttnn/tables/k3"])
        .output()
        .unwrap());
    let table_db = dir.path().join("table.duckdb");
    run(
        remote,
        &table_db,
        &["--neighbors-from", "s3://tttnn/tables/k3"],
    );
    assert_eq!(curve(&table_db, 1), curve(&local_db, 1));
}

#[test]
fn four_ingest_workers_on_s3_equal_a_serial_ingest() {
    let s3 = S3Server::start("tttnn");
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = corpus_files(dir.path());
    let serial = dir.path().join("serial").display().to_string();
    ok(
        ingest(&s3, &serial, &train, "train", &["--commit-rows", "8"])
            .output()
            .unwrap(),
    );
    let remote = "s3://tttnn/stores/sharded";
    crate::util::all_ok((0..4).map(|i| {
        ingest(
            &s3,
            remote,
            &train,
            "train",
            &["--commit-rows", "8", "--shard", &format!("{i}/4")],
        )
    }));
    // The unsharded pass adds nothing and merges the workers' files.
    let last: serde_json::Value =
        serde_json::from_str(&ok(ingest(&s3, remote, &train, "train", &[])
            .output()
            .unwrap()))
        .unwrap();
    assert_eq!(last["added"], 0);
    // Every document's id, text and distance to three others: the same in both stores (equal
    // distances to every query say the embeddings are equal).
    let all = |store: &str, query: &str| {
        let out = ok(s3
            .env(&mut tttnn())
            .args([
                "search", "--json", "-k", "1000", "--doc-id", query, "--store", store,
            ])
            .output()
            .unwrap());
        let mut hits: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        for h in &mut hits {
            h.as_object_mut().unwrap().remove("rank");
        }
        hits.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        hits
    };
    for query in ["train.jsonl:1", "train.jsonl:17", "train.jsonl:40"] {
        let (a, b) = (all(&serial, query), all(remote, query));
        assert!(a.len() > 30, "{}", a.len());
        assert_eq!(a, b, "{query}");
    }
}
