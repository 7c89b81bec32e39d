//! LM engine benchmark: seconds per `max_length`-token training step (forward, backward, clip,
//! AdamW) and per evaluated document (lm-eval rolling windows), on one HF model directory.
//! `scripts/bench-lm` runs it beside the Python reference (scripts/bench_lm_reference.py) in one go.
//!
//! `scripts/device-check` runs it on the GPU machine (docs/gpu.md).
//!
//!     cargo run --release --example bench_lm -- MODEL_DIR [--steps 5] [--max-length 1024] [--device cpu]
//!         [--precision fp32|tf32|bf16] [--cuda-graphs off|on] [--dropout model|off]
//!         [--save-trained WEIGHTS.safetensors]
use std::path::PathBuf;
use std::time::Instant;

use tttnn::eval;
use tttnn::lm::{LanguageModel, Precision};
use tttnn::ttt::{CudaGraphs, Dropout, TrainConfig, Trainer};
use tttnn::Device;

/// Seconds per training step and per evaluated document on one HF model directory.
#[derive(clap::Parser)]
struct Args {
    /// HF model directory.
    model: PathBuf,
    /// Timed steps (and evaluations), after one warm-up.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Tokens per training chunk and per evaluated document.
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Where the LM runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// fp32 (the original), tf32 (CUDA) or bf16 (mixed precision: fp32 masters and AdamW state).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// Training steps as CUDA graphs (on: each step a replay of its captured graph; CUDA only).
    #[arg(long, value_enum, default_value_t = CudaGraphs::Off)]
    cuda_graphs: CudaGraphs,
    /// Dropout while training (off: the graphs-vs-eager comparison needs the same masks).
    #[arg(long, value_enum, default_value_t = Dropout::Model)]
    dropout: Dropout,
    /// Write the fp32 weights after the training steps here (safetensors, HF names): compares devices.
    #[arg(long)]
    save_trained: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let Args {
        model: dir,
        steps,
        max_length,
        device,
        precision,
        cuda_graphs,
        dropout,
        save_trained,
    } = clap::Parser::parse();
    let lm = LanguageModel::load(&dir, device)?;
    let n_params = lm.num_parameters();
    // Deterministic token stream: ids cycle through the vocabulary's low range (up to 5,000 ids,
    // fewer for the tiny fixture vocabularies).
    let span = 5000.min(lm.vocab_size - 10);
    let tokens: Vec<i64> = (0..(max_length * (steps + 1)) as i64)
        .map(|i| (i * 7919) % span + 10)
        .collect();
    let mut trainer = Trainer::new(
        &lm,
        TrainConfig {
            lr: 2e-5,
            max_length,
            precision,
            cuda_graphs,
            dropout,
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
    if let Some(path) = &save_trained {
        trainer.save_weights(path)?;
    }
    // After the save: the same chunks again as one text, its losses read once at the end, so on a
    // GPU the host queues step after step without waiting (the engine reads a pass's losses at its
    // evaluation point); `train_step_s` reads each step's.
    let t = Instant::now();
    trainer.train_on_tokens(&lm, &tokens[max_length..max_length * (steps + 1)])?;
    sync(device);
    let pipelined_step_s = t.elapsed().as_secs_f64() / steps.max(1) as f64;
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
            "threads": tch::get_num_threads(), "train_step_s": step_s, "train_step_pipelined_s": pipelined_step_s, "eval_doc_s": eval_s, "train_step_all_s": step_times, "eval_doc_all_s": eval_times,
            "train_tflops": flops / step_s / 1e12,
            "graphs": cuda_graphs == CudaGraphs::On, "graph_buckets": trainer.graph_stats(),
            "replays": trainer.replay_stats(),
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
