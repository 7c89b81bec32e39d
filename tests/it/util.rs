//! Shared helpers of the integration tests: fixture paths, the golden reference outputs, the
//! binary, the results database, and the fixture stores (built once per process).
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize;
use tch::Tensor;

/// The repository: where this binary was built, or `TTTNN_TEST_REPO` (the GPU machine runs the
/// binary from the device kit in its own copy of the repository: scripts/device-check).
pub fn repo() -> PathBuf {
    std::env::var_os("TTTNN_TEST_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// `golden/golden.json`, written by scripts/make_fixtures.py.
#[derive(Debug, Deserialize)]
pub struct Golden {
    pub texts: Vec<String>,
    pub n_ctx: usize,
    pub eot_id: i64,
    pub lm_token_ids: Vec<Vec<i64>>,
    pub lms: HashMap<String, GoldenLm>,
    pub encoder: GoldenEncoder,
}

#[derive(Debug, Deserialize)]
pub struct GoldenLm {
    pub logits_input_ids: Vec<i64>,
    pub loglik: Vec<f64>,
    pub bytes: Vec<u64>,
    pub train: GoldenTrain,
}

#[derive(Debug, Deserialize)]
pub struct GoldenTrain {
    pub text_index: usize,
    pub max_length: usize,
    pub steps: usize,
    pub lr: f64,
    pub losses: Vec<f64>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenEncoder {
    pub token_ids: Vec<Vec<u32>>,
    pub max_length: usize,
    pub dim: usize,
}

pub fn golden() -> Golden {
    let p = fixtures().join("golden/golden.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The tensors of `golden/<name>.safetensors`.
pub fn golden_tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(format!("golden/{name}.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// The fixture corpus's documents (`tests/fixtures/corpus.jsonl`): text and Pile set name.
pub fn fixture_documents() -> Vec<(String, String)> {
    std::fs::read_to_string(fixtures().join("corpus.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let field = |f: &serde_json::Value| f.as_str().unwrap().to_string();
            (field(&v["text"]), field(&v["meta"]["pile_set_name"]))
        })
        .collect()
}

/// The real `tttnn` binary, on one libtorch thread (see [`one_thread`]).
pub fn tttnn() -> Command {
    let mut c = Command::new(tttnn_bin());
    one_thread(&mut c);
    c
}

/// The `tttnn` binary cargo built beside this one, or `TTTNN_TEST_BIN` (the device kit's).
pub fn tttnn_bin() -> PathBuf {
    std::env::var_os("TTTNN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tttnn")))
}

/// Runs `c`'s libtorch on one OpenMP thread unless the caller's environment says otherwise. The
/// tests run two at a time on CI's two cores, each spawning `tttnn`: with libtorch's default of one
/// thread per core, its OpenMP threads spin-wait on cores the other test holds, and a run that takes
/// 4.2 s alone took 26.5 s beside another (the same two runs on one thread each: 4.2 s). Results do
/// not depend on it: every test compares runs within a tolerance or runs made the same way.
pub fn one_thread(c: &mut Command) -> &mut Command {
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        c.env("OMP_NUM_THREADS", "1");
    }
    c
}

/// A language model loaded in this process on the CPU, its libtorch on the threads the spawned
/// `tttnn` runs use ([`one_thread`]), so a replay of a run sums in the run's order.
pub fn load_lm(dir: &Path) -> tttnn::lm::LanguageModel {
    static THREADS: std::sync::Once = std::sync::Once::new();
    THREADS.call_once(|| {
        let n = std::env::var("OMP_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        tch::set_num_threads(n);
    });
    tttnn::lm::LanguageModel::load(dir, tttnn::Device::Cpu).unwrap()
}

/// Stdout of a command that must have succeeded (stderr shown if not).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cmds` at once (workers sharing a store or a table) and returns each one's stdout, in
/// order, once all have succeeded.
pub fn all_ok(cmds: impl IntoIterator<Item = Command>) -> Vec<String> {
    let children: Vec<_> = cmds
        .into_iter()
        .map(|mut c| {
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| ok(c.wait_with_output().unwrap()))
        .collect()
}

/// Stderr of a command that must have failed with exit code `code`.
pub fn fails(out: Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{err}");
    err
}

/// Writes `train` and `test` JSONL into `dir` and ingests them as those splits of `dir/store` with
/// the committed tiny encoder; returns the store.
pub fn ingest_splits(dir: &Path, train: &str, test: &str) -> PathBuf {
    let store = dir.join("store");
    for (split, text) in [("train", train), ("test", test)] {
        let file = dir.join(format!("{split}.jsonl"));
        std::fs::write(&file, text).unwrap();
        ok(tttnn()
            .args(["ingest", "--quiet", "--split", split, "--store"])
            .arg(&store)
            .arg("--encoder")
            .arg(fixtures().join("encoders/tiny-roberta"))
            .arg(file)
            .output()
            .unwrap());
    }
    store
}

/// The committed tiny GPT-2.
pub fn model() -> PathBuf {
    fixtures().join("models/tiny-gpt2")
}

/// The committed tiny RoBERTa encoder.
pub fn encoder() -> PathBuf {
    fixtures().join("encoders/tiny-roberta")
}

/// Equal up to 1e-9 relative: two computations of one log-likelihood.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

/// A results database opened read-only with DuckDB itself, to check what tttnn recorded.
pub fn conn(db: &Path) -> duckdb::Connection {
    let config = duckdb::Config::default()
        .access_mode(duckdb::AccessMode::ReadOnly)
        .unwrap();
    duckdb::Connection::open_with_flags(db, config).unwrap()
}

/// The newest run of a results database: the one a test just made.
pub fn last_run(db: &Path) -> i64 {
    conn(db)
        .query_row("SELECT max(id) FROM runs", [], |r| r.get(0))
        .unwrap()
}

/// (doc, k) → loglik of every curve point of `run`.
pub fn curve(db: &Path, run: i64) -> BTreeMap<(String, i64), f64> {
    let db = conn(db);
    let mut stmt = db
        .prepare("SELECT doc_id, k, loglik FROM curve WHERE run_id = ? ORDER BY ALL")
        .unwrap();
    let rows = stmt
        .query_map([run], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// A stored document's embedding and text.
pub fn text_of(store: &Path, id: &str) -> (Vec<f32>, String) {
    let doc = tttnn::store::Store::open(store)
        .unwrap()
        .document(id)
        .unwrap()
        .unwrap();
    (doc.embedding, doc.text)
}

/// The stores the runner tests read, each built once per test process (an ingest through the
/// binary costs seconds) and copied into the test's own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// The fixture corpus, every fourth document a test document, flat (exact) index.
    Full,
    /// 40-character documents (they fit the tiny GPT-2's window with room for context), every
    /// fourth a test document.
    Short,
}

impl Fixture {
    /// A copy of this store in `dir`; returns its path.
    pub fn store(self, dir: &Path) -> PathBuf {
        static FULL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
        static SHORT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
        let cell = match self {
            Fixture::Full => &FULL,
            Fixture::Short => &SHORT,
        };
        let (_, built) = cell.get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let store = self.build(tmp.path());
            (tmp, store)
        });
        let copy = dir.join("store");
        copy_dir(built, &copy);
        copy
    }

    fn build(self, dir: &Path) -> PathBuf {
        let (mut train, mut test) = (String::new(), String::new());
        let corpus = std::fs::read_to_string(fixtures().join("corpus.jsonl")).unwrap();
        for (i, l) in corpus.lines().enumerate() {
            let line = match self {
                Fixture::Full => l.to_string(),
                Fixture::Short => {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let short: String = v["text"].as_str().unwrap().chars().take(40).collect();
                    serde_json::json!({"text": format!("{short} {i}"), "meta": v["meta"]})
                        .to_string()
                }
            };
            let out = if i % 4 == 1 { &mut test } else { &mut train };
            out.push_str(&line);
            out.push('\n');
        }
        let store = ingest_splits(dir, &train, &test);
        if self == Fixture::Full {
            ok(tttnn()
                .args(["index", "--quiet", "--kind", "flat", "--store"])
                .arg(&store)
                .output()
                .unwrap());
        }
        store
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
