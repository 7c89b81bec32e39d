//! AdamW update benchmark (issue #24): tttnn's update (libtorch's fused `_fused_adamw_` over the
//! flat buffers, through the C++ shim) against the written-out update it replaced (nine whole-buffer
//! libtorch ops: decay, both moments, bias-corrected denominator, the step) over as many fp32
//! elements, in one run. Clipping is in both and timed in both. Prints one JSON object; with
//! `--json FILE` also writes it there (docs/bench/).
//!
//!     cargo run --example bench_adamw -- MODEL_DIR [--steps 5] [--json docs/bench/adamw-cpu-DATE.json]
use std::path::PathBuf;
use std::time::Instant;

use tch::{Kind, Tensor};
use tttnn::lm::{LanguageModel, Precision};
use tttnn::ttt::{AdamW, FlatWeights, TrainConfig};
use tttnn::Device;

/// Seconds per AdamW update of one model's weights, fused against written out.
#[derive(clap::Parser)]
struct Args {
    /// HF model directory (its trainable weights set the buffer size).
    model: PathBuf,
    /// Timed updates of each, after one warm-up.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Also write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The update tttnn ran before the fused kernel, on `[P]` buffers (step `t`).
fn written_out(
    c: &TrainConfig,
    t: i32,
    p: &mut Tensor,
    g: &mut Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) {
    let norm = g.norm();
    let coef = ((norm + 1e-6).reciprocal() * c.clip_norm).clamp_max(1.0);
    let _ = g.g_mul_(&coef);
    let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
    let _ = m.lerp_(g, 1.0 - c.beta1);
    let _ = v.g_mul_scalar_(c.beta2);
    let _ = v.addcmul_(&(&*g * (1.0 - c.beta2)), g);
    let mut denom = v.sqrt();
    let _ = denom.g_div_scalar_((1.0 - c.beta2.powi(t)).sqrt());
    let _ = denom.g_add_scalar_(c.eps);
    let _ = p.g_sub_(&(&*m / denom * (c.lr / (1.0 - c.beta1.powi(t)))));
}

fn main() -> anyhow::Result<()> {
    let Args { model, steps, json } = clap::Parser::parse();
    let lm = LanguageModel::load(&model, Device::Cpu)?;
    let config = TrainConfig::default();
    let mut weights = FlatWeights::new(&lm, Precision::Fp32)?;
    let elements = lm
        .var_store()
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum::<i64>();
    // Gradients for the fused update: one backward over a short chunk fills the flat buffer.
    let ids = Tensor::from_slice(
        &(0..64)
            .map(|i| (i * 7919) % 5000 + 10)
            .collect::<Vec<i64>>(),
    )
    .unsqueeze(0);
    let logits = lm.forward(&ids, false)?;
    logits.mean(Kind::Float).backward();
    let mut opt = AdamW::new(&weights, config);
    // No set skipped: the flags the engine's steps pass on the device.
    let step_all = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
    let mut fused = Vec::new();
    for s in 0..=steps {
        let t = Instant::now();
        let _ = opt.step(&mut weights, &step_all, None)?;
        if s > 0 {
            fused.push(t.elapsed().as_secs_f64());
        }
    }
    // The written-out update over buffers of the same size.
    let (mut p, mut m, mut v) = (
        Tensor::randn([elements], (Kind::Float, tch::Device::Cpu)),
        Tensor::zeros([elements], (Kind::Float, tch::Device::Cpu)),
        Tensor::zeros([elements], (Kind::Float, tch::Device::Cpu)),
    );
    let grad = Tensor::randn([elements], (Kind::Float, tch::Device::Cpu)) * 1e-3;
    let mut reference = Vec::new();
    for s in 0..=steps {
        let mut g = grad.copy();
        let t = Instant::now();
        tch::no_grad(|| written_out(&config, s as i32 + 1, &mut p, &mut g, &mut m, &mut v));
        if s > 0 {
            reference.push(t.elapsed().as_secs_f64());
        }
    }
    let (fused_s, reference_s) = (median(&mut fused), median(&mut reference));
    let out = serde_json::json!({
        "benchmark": "adamw_update", "model": model.display().to_string(), "elements": elements,
        "device": "cpu", "threads": tch::get_num_threads(), "steps": steps,
        "fused_s": fused_s, "written_out_s": reference_s,
        "fused_all_s": fused, "written_out_all_s": reference,
        "speedup_vs_written_out": reference_s / fused_s,
    });
    println!("{out}");
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    }
    Ok(())
}
