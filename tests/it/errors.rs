//! The error classes of README's "Errors" table, one test each: what is not a database or a store,
//! a damaged store (bad input, exit 1), and a write the machine refuses (exit 2, said plainly,
//! what was committed kept). No message carries a path into a crate's sources.
use crate::util::{encoder, fails, fixtures, ok, tttnn};

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// Upstream errors carry their source locations (`/root/.cargo/registry/src/.../local.rs:273:40`):
/// none may reach the user.
fn assert_no_source_paths(err: &str) {
    assert!(
        !err.contains(".cargo/registry") && !err.contains("/rustc/") && !err.contains(".rs:"),
        "{err}"
    );
}

fn ingest(store: &Path, file: &Path) -> std::process::Command {
    let mut c = tttnn();
    c.arg("ingest")
        .arg(file)
        .arg("--store")
        .arg(store)
        .arg("--encoder")
        .arg(encoder())
        .arg("--quiet");
    c
}

/// The fixture corpus in a store of its own.
fn a_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    ok(ingest(&store, &fixtures().join("corpus.jsonl"))
        .output()
        .unwrap());
    store
}

fn search(store: &Path) -> std::process::Output {
    tttnn()
        .args(["search", "-k", "3", "--doc-id", "corpus.jsonl:2", "--store"])
        .arg(store)
        .output()
        .unwrap()
}

#[test]
fn what_is_not_a_results_database_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database\n").unwrap();
    for db in [
        &text,
        &fixtures().join("corpus.jsonl"),
        &dir.path().to_path_buf(),
    ] {
        for args in [&["sql", "SELECT 1"][..], &["sql", "table1"][..]] {
            let err = fails(tttnn().args(args).arg("--db").arg(db).output().unwrap(), 1);
            assert!(err.contains(&db.display().to_string()), "{err}");
            assert!(err.contains("not a DuckDB results database"), "{err}");
            assert_no_source_paths(&err);
        }
    }
    // Writing a run into it is refused the same way, and the file is left as it was.
    let store = a_store(dir.path());
    let err = fails(
        tttnn()
            .args([
                "run",
                "--quiet",
                "--task",
                "pile_all",
                "--split",
                "train",
                "--limit-docs",
                "1",
            ])
            .arg("--store")
            .arg(&store)
            .arg("--encoder")
            .arg(encoder())
            .arg("--model")
            .arg(crate::util::model())
            .arg("--db")
            .arg(&text)
            .output()
            .unwrap(),
        1,
    );
    assert!(
        err.contains("notes.txt: not a DuckDB results database"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "not a database\n");
}

#[test]
fn what_is_not_a_store_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (store, says) in [
        (fixtures().join("corpus.jsonl"), "a file, not a store"),
        (empty, "holds no `documents.lance`"),
        (dir.path().join("absent"), "no such directory"),
    ] {
        let err = fails(search(&store), 1);
        assert!(err.contains(&format!("{}: ", store.display())), "{err}");
        assert!(err.contains(says) && err.contains("tttnn ingest"), "{err}");
        assert_no_source_paths(&err);
    }
}

#[test]
fn a_store_with_a_missing_or_corrupt_file_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = a_store(dir.path());
    let data: Vec<PathBuf> = std::fs::read_dir(store.join("documents.lance/data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let file = &data[0];
    let bytes = std::fs::read(file).unwrap();
    // Corrupt: the data file cut short.
    std::fs::write(file, &bytes[..bytes.len() / 3]).unwrap();
    let err = fails(search(&store), 1);
    assert!(
        err.contains("store damaged: a file of it is corrupt") && err.contains("restore the store"),
        "{err}"
    );
    assert_no_source_paths(&err);
    // Missing: the data file gone.
    std::fs::remove_file(file).unwrap();
    let err = fails(search(&store), 1);
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(
        err.contains(&format!("store damaged: its file `data/{name}` is missing")),
        "{err}"
    );
    assert_no_source_paths(&err);
}

#[test]
fn a_refused_write_says_so_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    // 300 short documents, then 100 long ones: with commits of 100 documents, the fourth
    // commit's data file is the first to pass the file-size limit set below.
    let texts: Vec<String> = crate::util::fixture_documents()
        .into_iter()
        .map(|d| d.0)
        .collect();
    let corpus: String = (0..400)
        .map(|i| {
            let t = &texts[i % texts.len()];
            let text = if i < 300 {
                format!("{i} {}", t.chars().take(100).collect::<String>())
            } else {
                format!("{i} {}", t.repeat(20))
            };
            format!(
                "{}\n",
                serde_json::json!({"text": text, "meta": {"pile_set_name": "Github"}})
            )
        })
        .collect();
    let file = dir.path().join("corpus.jsonl");
    std::fs::write(&file, corpus).unwrap();
    let store = dir.path().join("store");
    let mut limited = ingest(&store, &file);
    limited.args(["--commit-rows", "100"]);
    // A file-size limit stands in for a full disk (no privileges needed): writes past it fail
    // with EFBIG, as they fail with ENOSPC on a full disk; both are the machine refusing.
    unsafe {
        limited.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 200 << 10,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let err = fails(limited.output().unwrap(), 2);
    assert!(
        err.contains(&format!(
            "store {}: a file reached the size limit",
            store.display()
        )) && err.contains("what was committed before is kept"),
        "{err}"
    );
    assert_no_source_paths(&err);
    // The store is readable and holds the three commits before the refused one.
    let s = tttnn::store::Store::open(&store).unwrap();
    assert_eq!(s.count().unwrap(), 300);
    ok(search(&store));
    // Once the limit is gone, the same command resumes and ends as one uninterrupted ingest.
    let out: serde_json::Value =
        serde_json::from_str(&ok(ingest(&store, &file).output().unwrap())).unwrap();
    assert_eq!(
        (out["added"].as_u64(), out["documents"].as_u64()),
        (Some(100), Some(400))
    );
}
