//! The real `tttnn` binary, run as a user would.
use crate::util::{ok, tttnn};

#[test]
fn usage_errors_are_bad_input() {
    let out = tttnn()
        .args(["run", "--task", "pile_github", "--neighbors", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--neighbors"), "{err}");
    let out = tttnn()
        .args(["run", "--task", "pile_github"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("`model`: missing"), "{err}");
}

#[test]
fn the_setup_environment_puts_tttnn_on_path() {
    // The README's commands say `tttnn ...`: after scripts/setup, `source .tttnn-env` must make
    // that this checkout's build, from any directory, with only the shell's own PATH before it.
    let repo = &crate::util::repo();
    let env = repo.join(".tttnn-env");
    assert!(
        env.is_file(),
        "no {}: run scripts/setup first",
        env.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && cd "$2" && command -v tttnn && tttnn doctor --json"#)
        .arg("bash")
        .arg(&env)
        .arg(dir.path())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env(
            "CARGO_TARGET_DIR",
            std::env::var_os("CARGO_TARGET_DIR").unwrap_or_default(),
        )
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let stdout = ok(out);
    let (found, report) = stdout.split_once('\n').unwrap();
    assert_eq!(found, repo.join("bin/tttnn").display().to_string());
    let checks: Vec<serde_json::Value> = serde_json::from_str(report).unwrap();
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
}

#[test]
fn doctor_reports_a_working_stack() {
    let out = tttnn().args(["doctor", "--json"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    for c in ["libtorch", "ONNX Runtime", "libduckdb"] {
        let check = checks.iter().find(|x| x["component"] == c).unwrap();
        assert_eq!(check["ok"], true, "{check}");
    }
}

#[test]
fn doctor_cuda_says_what_this_machine_has_and_lacks() {
    // On CI (no GPU, the CPU-only ONNX Runtime) `doctor --cuda` must say what is missing line by
    // line and exit non-zero; on a GPU machine set up with --cuda it must pass. Either way no
    // crash (a signal would leave no exit code), and the GPU line tells the truth about the
    // machine: a GPU is there exactly when the NVIDIA driver's device node is.
    let out = tttnn()
        .args(["doctor", "--cuda", "--json"])
        .output()
        .unwrap();
    let code = out.status.code();
    let checks: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("a JSON report even when checks fail");
    let line = |c: &str| {
        checks
            .iter()
            .find(|x| x["component"] == c)
            .unwrap_or_else(|| panic!("no `{c}` line in {checks:?}"))
            .clone()
    };
    let has_gpu = std::path::Path::new("/dev/nvidiactl").exists();
    assert_eq!(line("GPU")["ok"], has_gpu, "{checks:?}");
    let mut all_ok = true;
    for c in ["GPU", "libtorch CUDA", "ORT CUDA"] {
        let check = line(c);
        assert!(!check["detail"].as_str().unwrap().is_empty(), "{check}");
        all_ok &= check["ok"] == true;
    }
    if all_ok {
        assert_eq!(code, Some(0), "{checks:?}");
    } else {
        assert!(matches!(code, Some(1) | Some(2)), "exit {code:?}");
    }
    let ort = line("ORT CUDA");
    if ort["ok"] == false {
        assert!(
            ort["detail"]
                .as_str()
                .unwrap()
                .contains("scripts/setup --cuda"),
            "{ort}"
        );
    }
}

#[test]
fn tf32_is_a_cuda_mode() {
    let out = tttnn()
        .args(["eval", "--precision", "tf32", "--model"])
        .arg(crate::util::fixtures().join("models/tiny-gpt2"))
        .arg(crate::util::fixtures().join("corpus.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`precision`") && err.contains("tf32 is a CUDA matmul mode"),
        "{err}"
    );
}

#[test]
fn missing_onnx_runtime_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = tttnn()
        .args(["smoke", "--out"])
        .arg(dir.path())
        .env_remove("TTTNN_ORT_DYLIB")
        .env("ORT_DYLIB_PATH", dir.path().join("nope.so"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("nope.so does not exist (expected libonnxruntime.so.1.31"),
        "{err}"
    );
}

#[test]
fn smoke_runs_the_pipeline_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = tttnn()
        .args(["smoke", "--json", "--docs", "3", "-k", "2", "--fixtures"])
        .arg(crate::util::fixtures())
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<&serde_json::Value> = rows.iter().filter(|r| r["task"] == "pile_all").collect();
    assert_eq!(
        rows.iter()
            .map(|r| r["k"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // Training on neighbours with a large learning rate must change the model's score.
    let bpb: Vec<f64> = rows
        .iter()
        .map(|r| r["bits_per_byte"].as_f64().unwrap())
        .collect();
    assert!(bpb.iter().all(|b| b.is_finite() && *b > 0.0));
    assert_ne!(bpb[0], bpb[2]);
    let db = crate::util::conn(&dir.path().join("results.duckdb"));
    let (status, docs, nbrs): (String, i64, i64) = db
        .query_row(
            "SELECT status, (SELECT count(*) FROM docs), (SELECT count(*) FROM neighbors) FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), docs, nbrs), ("finished", 3, 6));
}

#[test]
fn eval_prints_bits_per_byte_per_file_and_total() {
    let fx = crate::util::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("doc.txt");
    std::fs::write(&text, "Hello world, this is a plain text document.\n").unwrap();
    let out = ok(tttnn()
        .args(["eval", "--json", "--model"])
        .arg(fx.join("models/tiny-gpt2"))
        .arg(fx.join("corpus.jsonl"))
        .arg(&text)
        .output()
        .unwrap());
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["docs"], 81);
    assert_eq!(rows[1]["docs"], 1);
    assert_eq!(rows[2]["file"], "total");
    let bytes = |r: &serde_json::Value| r["bytes"].as_f64().unwrap();
    let ll = |r: &serde_json::Value| r["loglik"].as_f64().unwrap();
    // The total is the micro-average: Σ loglik / Σ bytes, not a mean of per-file ratios.
    let want = -(ll(&rows[0]) + ll(&rows[1]))
        / (bytes(&rows[0]) + bytes(&rows[1]))
        / std::f64::consts::LN_2;
    assert!((rows[2]["bits_per_byte"].as_f64().unwrap() - want).abs() < 1e-9);
    // A model directory of an unsupported kind is bad input: exit 1, file named.
    let bad = dir.path().join("model");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    std::fs::copy(
        fx.join("models/tiny-gpt2/tokenizer.json"),
        bad.join("tokenizer.json"),
    )
    .unwrap();
    let out = tttnn()
        .args(["eval", "--model"])
        .arg(&bad)
        .arg(&text)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("model_type `bert` is not supported"));
    // A truncated model.safetensors is bad input named once, not an internal libtorch error.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fx.join("models/tiny-gpt2").join(f), cut.join(f)).unwrap();
    }
    let weights = std::fs::read(fx.join("models/tiny-gpt2/model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let out = tttnn()
        .args(["eval", "--model"])
        .arg(&cut)
        .arg(&text)
        .output()
        .unwrap();
    let err = crate::util::fails(out, 1);
    assert!(
        err.contains("model.safetensors: truncated safetensors file"),
        "{err}"
    );
    assert_eq!(err.matches("truncated").count(), 1, "{err}");
}

#[test]
fn a_closed_stdout_pipe_is_not_an_error() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("empty.duckdb");
    drop(duckdb::Connection::open(&db).unwrap());
    // `tttnn sql ... | head -1`: the reader leaves after one line.
    let mut child = tttnn()
        .args(["sql", "SELECT * FROM range(300000)", "--db"])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('+'), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sql_writes_every_format_through_its_own_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.duckdb");
    drop(tttnn::records::Db::open(&db).unwrap());
    let sql = |query: &str, format: &str| {
        let mut c = tttnn();
        c.args(["sql", query, "--format", format, "--db"]).arg(&db);
        c
    };
    // `>> f` appends: the output goes through the shell's descriptor, opened for appending.
    let f = dir.path().join("results.csv");
    std::fs::write(&f, "kept\n").unwrap();
    for _ in 0..2 {
        let append = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        let status = sql("SELECT 1 AS one, 'a,b' AS two", "csv")
            .stdout(append)
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "kept\none,two\n1,\"a,b\"\none,two\n1,\"a,b\"\n"
    );
    // Statements that return rows but are not SELECTs work in every format.
    for format in ["table", "csv", "json"] {
        let out = ok(sql("DESCRIBE runs", format).output().unwrap());
        assert!(out.contains("model_hash"), "{format}: {out}");
        let out = ok(sql("SHOW TABLES", format).output().unwrap());
        assert!(out.contains("pile_weights"), "{format}: {out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(sql("SELECT 1 AS one WHERE false", "json")
            .output()
            .unwrap()))
        .unwrap();
    assert_eq!(json, serde_json::json!([]));
    assert_eq!(
        ok(sql("SELECT 1 AS one WHERE false", "csv").output().unwrap()),
        "one\n"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(sql(
        "SELECT set_name, weight FROM pile_weights ORDER BY set_name LIMIT 2",
        "json",
    )
    .output()
    .unwrap()))
    .unwrap();
    assert_eq!(json[0]["set_name"], "ArXiv");
    // Parquet is a file.
    let err = crate::util::fails(sql("SELECT 1", "parquet").output().unwrap(), 1);
    assert!(err.contains("--out"), "{err}");
    let pq = dir.path().join("x.parquet");
    ok(sql("SELECT 42 AS answer", "parquet")
        .arg("--out")
        .arg(&pq)
        .output()
        .unwrap());
    let back = ok(
        sql(&format!("SELECT answer FROM '{}'", pq.display()), "csv")
            .output()
            .unwrap(),
    );
    assert_eq!(back, "answer\n42\n");
}

#[test]
fn sql_watch_reruns_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.duckdb");
    drop(tttnn::records::Db::open(&db).unwrap());
    let mut child = tttnn()
        .args([
            "sql",
            "SELECT 7 AS seven",
            "--format",
            "csv",
            "--watch",
            "0.2",
            "--db",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Read until the third result rather than for a fixed time: on a loaded machine the binary's
    // start alone (libtorch, DuckDB) has taken longer than a fixed wait allowed.
    use std::io::BufRead;
    let mut results = 0;
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        results += usize::from(line == "7" && seen.last().is_some_and(|l| l == "seven"));
        seen.push(line);
        if results == 3 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(results, 3, "the query re-ran until stopped: {seen:?}");
}
