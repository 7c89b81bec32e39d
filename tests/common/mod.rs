//! Shared helpers of the integration tests: fixture paths and the golden reference outputs.
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde::Deserialize;
use tch::Tensor;

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
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

/// The real `tttnn` binary.
pub fn tttnn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tttnn"))
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

/// Writes `train` and `test` JSONL into `dir` and ingests them as those splits of `dir/store` with
/// the committed tiny encoder; returns the store.
pub fn ingest_splits(dir: &std::path::Path, train: &str, test: &str) -> PathBuf {
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
