//! LM engine benchmark: seconds per `max_length`-token training step (forward, backward, clip,
//! AdamW) and per evaluated document (lm-eval rolling windows), on one HF model directory.
//! `scripts/bench-lm` runs it beside the Python reference (scripts/bench_lm_reference.py) in one go.
//!
//!     cargo run --release --example bench_lm -- MODEL_DIR [--steps 5] [--max-length 1024] [--device cpu]
use std::path::PathBuf;
use std::time::Instant;

use tttnn::eval;
use tttnn::lm::{Device, LanguageModel, Precision};
use tttnn::ttt::{TrainConfig, Trainer};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).ok_or_else(|| {
        anyhow::anyhow!(
            "usage: bench_lm MODEL_DIR [--steps N] [--max-length N] [--device cpu|cuda] [--bf16]"
        )
    })?);
    let steps: usize = arg(&args, "--steps", 5);
    let max_length: usize = arg(&args, "--max-length", 1024);
    let device = if arg(&args, "--device", "cpu".to_string()) == "cuda" {
        Device::Cuda
    } else {
        Device::Cpu
    };
    let precision = if args.iter().any(|a| a == "--bf16") {
        Precision::Bf16
    } else {
        Precision::Fp32
    };
    let mut lm = LanguageModel::load(&dir, device)?;
    lm.set_precision(precision);
    let n_params = lm.num_parameters();
    // Deterministic token stream: ids cycle through the vocabulary's low range.
    let tokens: Vec<i64> = (0..(max_length * (steps + 1)) as i64)
        .map(|i| (i * 7919) % 5000 + 10)
        .collect();
    let mut trainer = Trainer::new(
        &lm,
        TrainConfig {
            lr: 2e-5,
            max_length,
            ..Default::default()
        },
    )?;
    // Warm-up step (allocations, kernel selection) is not timed.
    trainer.train_on_tokens(&lm, &tokens[..max_length])?;
    // Medians of per-step times: this machine's neighbours make means noisy.
    let mut step_times = Vec::new();
    for s in 1..=steps {
        let t = Instant::now();
        trainer.train_on_tokens(&lm, &tokens[max_length * s..max_length * (s + 1)])?;
        sync(device);
        step_times.push(t.elapsed().as_secs_f64());
    }
    let step_s = median(&mut step_times);
    let text = lm.decode(&tokens[..max_length])?;
    eval::loglikelihood(&lm, &text)?;
    let mut eval_times = Vec::new();
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        eval::loglikelihood(&lm, &text)?;
        sync(device);
        eval_times.push(t.elapsed().as_secs_f64());
    }
    let eval_s = median(&mut eval_times);
    let flops = 6.0 * n_params as f64 * max_length as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "tttnn", "model": dir.display().to_string(), "parameters": n_params,
            "max_length": max_length, "steps": steps, "device": format!("{device:?}").to_lowercase(),
            "precision": format!("{precision:?}").to_lowercase(),
            "threads": tch::get_num_threads(), "train_step_s": step_s, "eval_doc_s": eval_s, "train_step_all_s": step_times, "eval_doc_all_s": eval_times,
            "train_tflops": flops / step_s / 1e12,
        })
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sync(device: Device) {
    if device == Device::Cuda {
        tch::Cuda::synchronize(0);
    }
}
