//! torch's AdamW with `clip_grad_norm_` on the flat buffers of [`FlatWeights`]: one routine for
//! one set of weights or for lanes, one step count per set. The update is libtorch's fused AdamW
//! (`_fused_adamw_`, what `torch.optim.AdamW(fused=True)` runs: one kernel over the whole buffer, on
//! the CPU as on CUDA), reached through the C++ shim (`csrc/fused.cpp`) since tch 0.24 does not bind
//! it. Its state lives here, not in libtorch's optimizer, so the moments can be saved and restored
//! (`checkpoint.rs`): a resumed run goes on with the state the original carries across documents
//! (docs/spec.md §2).
//!
//! The fused update is several times faster than the whole-buffer kernels it replaced
//! (`examples/bench_adamw`, docs/benchmarks.md, "AdamW"); the weights agree with torch's per-tensor
//! formulas to 1.2e-7 (the test below).
use std::ffi::{c_char, c_void, CStr};

use tch::{Kind, Tensor};

use super::{FlatWeights, TrainConfig};
use crate::error::{Error, Result};
use crate::lm::Layout;

extern "C" {
    fn tttnn_shim_free(message: *mut c_char);
    fn tttnn_upload(host: *const c_void, device: i32, out: *mut *mut c_void) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn tttnn_fused_adamw(
        params: *const *const c_void,
        grads: *const *const c_void,
        exp_avgs: *const *const c_void,
        exp_avg_sqs: *const *const c_void,
        steps: *const *const c_void,
        n: usize,
        lr: f64,
        lr_tensor: *const c_void,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: *const c_void,
        found_inf: *const c_void,
    ) -> *mut c_char;
}

/// One tensor's buffers in a fused AdamW update: all fp32, contiguous, on one device; `step` a
/// 0-d float tensor holding the step being taken.
struct Part<'a> {
    param: &'a Tensor,
    grad: &'a Tensor,
    exp_avg: &'a Tensor,
    exp_avg_sq: &'a Tensor,
    step: &'a Tensor,
}

/// libtorch's `_fused_adamw_` over `parts` (no gradient scale) at `c.lr`, or at `lr` (a 0-d
/// tensor: fp64 on the CPU, fp32 on the parameters' CUDA device, read by the kernel there, so a
/// captured step takes the rate its buffer holds); a nonzero `found_inf` (a 0-d fp32 tensor on the
/// device) skips the whole update on the device.
fn fused_adamw(
    c: &TrainConfig,
    parts: &[Part],
    found_inf: Option<&Tensor>,
    lr: Option<&Tensor>,
) -> Result<()> {
    fn ptrs<'a>(parts: &[Part<'a>], f: fn(&Part<'a>) -> &'a Tensor) -> Vec<*const c_void> {
        parts
            .iter()
            .map(|p| f(p).as_ptr() as *const c_void)
            .collect()
    }
    let (params, grads) = (ptrs(parts, |p| p.param), ptrs(parts, |p| p.grad));
    let exp_avgs = ptrs(parts, |p| p.exp_avg);
    let exp_avg_sqs = ptrs(parts, |p| p.exp_avg_sq);
    let steps = ptrs(parts, |p| p.step);
    // SAFETY: every pointer is a live tch tensor (a `torch::Tensor*`, as torch-sys passes them)
    // borrowed for the call; the shim catches every C++ exception and returns it as a message.
    let message = unsafe {
        tttnn_fused_adamw(
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            steps.as_ptr(),
            parts.len(),
            c.lr,
            lr.map_or(std::ptr::null(), |t| t.as_ptr() as *const c_void),
            c.beta1,
            c.beta2,
            c.weight_decay,
            c.eps,
            std::ptr::null(),
            found_inf.map_or(std::ptr::null(), |t| t.as_ptr() as *const c_void),
        )
    };
    shim_result(message, "libtorch's fused AdamW")
}

/// A shim call's result: null is success, else the shim's message (freed here) as an internal
/// error about `what`.
fn shim_result(message: *mut c_char, what: &str) -> Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string the shim allocated; freed once, here.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { tttnn_shim_free(message) };
    Err(Error::internal(format!("{what}: {text}")))
}

/// `host` (a CPU tensor) on `device` without a host sync, for a step's inputs: on CUDA staged in
/// pinned memory and copied non-blocking (`csrc/fused.cpp`), so the host goes on queueing steps
/// while earlier ones run, where a plain copy from pageable memory waits for the GPU; on the CPU
/// `host` itself.
pub(super) fn upload(host: Tensor, device: tch::Device) -> Result<Tensor> {
    let tch::Device::Cuda(index) = device else {
        return Ok(host);
    };
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `host` is a live tch tensor; on success the shim writes a `new` tensor to `out`,
    // which the returned Tensor owns (freed as every tch tensor is).
    let message = unsafe { tttnn_upload(host.as_ptr() as *const c_void, index as i32, &mut out) };
    shim_result(message, "a step's inputs to CUDA")?;
    // SAFETY: a tensor the shim allocated for us, owned from here on.
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// Each set's learning rate (`rates`) as [`fused_adamw`] reads it on `device`: fp64 on the CPU
/// (the kernel takes it as a double, so the rate is the schedule's exactly), fp32 on CUDA (the
/// kernel's type there), copied without a host sync.
pub(super) fn lr_tensor(rates: &[f64], device: tch::Device) -> Result<Tensor> {
    match device {
        tch::Device::Cpu => Ok(Tensor::from_slice(rates)),
        _ => {
            let rates: Vec<f32> = rates.iter().map(|&r| r as f32).collect();
            upload(Tensor::from_slice(&rates), device)
        }
    }
}

/// The fp32 gradients after `clip_grad_norm_`, and the norm they were clipped by: the 2-norm of all
/// gradients (`[]`), or of each lane's own (`[lanes, 1]`); the coefficient is clamped at 1.
fn clipped_grads(c: &TrainConfig, weights: &FlatWeights) -> (Tensor, Tensor) {
    let mut g = weights.grad_fp32();
    let norm = match weights.layout() {
        Layout::Single => g.norm(),
        Layout::Lanes(_) => g.norm_scalaropt_dim(2, [1], true),
    };
    let coef = ((&norm + 1e-6).reciprocal() * c.clip_norm).clamp_max(1.0);
    let _ = g.g_mul_(&coef);
    (g, norm)
}

/// Set `set`'s part of a buffer: the whole buffer for one set, else the lane's row (a view: an
/// update lands in the buffer in place).
fn part_of(weights: &FlatWeights, t: &Tensor, set: usize) -> Tensor {
    match weights.layout() {
        Layout::Single => t.shallow_clone(),
        Layout::Lanes(_) => t.get(set as i64),
    }
}

/// `torch.optim.AdamW(lr, eps=1e-8, fused=True)` (decoupled weight decay, bias correction) after
/// `clip_grad_norm_`, over the flat buffers of [`FlatWeights`], on the device without a host sync.
pub struct AdamW {
    pub(super) config: TrainConfig,
    pub(super) exp_avg: Tensor,
    pub(super) exp_avg_sq: Tensor,
    /// Steps taken (bias correction), one count per set of weights (one, or one per lane): `[sets]`
    /// fp32 on the weights' device, as the fused kernel reads them. The device's count is the only
    /// one: a step skipped on the device (a non-finite loss or gradient norm) does not count, and
    /// the host learns it only when it reads the counts ([`AdamW::steps`]).
    pub(super) step_counts: Tensor,
}

impl AdamW {
    /// Fresh state (zero moments, step 0) for `weights`.
    pub fn new(weights: &FlatWeights, config: TrainConfig) -> Self {
        let size = weights.master.size();
        let opts = (Kind::Float, weights.master.device());
        Self {
            config,
            exp_avg: Tensor::zeros(&size[..], opts),
            exp_avg_sq: Tensor::zeros(&size[..], opts),
            step_counts: Tensor::zeros([weights.lanes() as i64], opts),
        }
    }

    /// Zero moments and step counts (of every lane).
    pub fn reset(&mut self) {
        let _ = self.exp_avg.zero_();
        let _ = self.exp_avg_sq.zero_();
        let _ = self.step_counts.zero_();
    }

    /// Zero moments and step count of lane `lane` (of a laned layout).
    pub fn reset_lane(&mut self, lane: usize) {
        let _ = self.exp_avg.get(lane as i64).zero_();
        let _ = self.exp_avg_sq.get(lane as i64).zero_();
        let _ = self.step_counts.get(lane as i64).zero_();
    }

    /// Sets of weights it steps (one, or one per lane).
    pub fn sets(&self) -> usize {
        self.step_counts.size()[0] as usize
    }

    /// Each set's step count, read from the device (a host sync: for checkpoints and tests, not
    /// for every step).
    pub fn steps(&self) -> Result<Vec<i64>> {
        let counts = self
            .step_counts
            .to_kind(Kind::Int64)
            .to_device(tch::Device::Cpu);
        Vec::<i64>::try_from(counts).map_err(|e| Error::torch("reading AdamW's step counts", e))
    }

    /// One AdamW step of every set with everything on the device, as a CUDA graph captures it and
    /// as every eager step runs too (no host sync): `clip_grad_norm_`, then each set's update
    /// unless `skip[s]` (a `[sets]` fp32 flag on the device: a non-finite loss, a lane that sits
    /// the round out, or warm-up) or its gradient norm is not finite; a set's step count advances
    /// only when it updates. One fused update per set, each with its own flag, at the configured
    /// learning rate or at set s's `lr[s]` (a `[sets]` tensor, [`lr_tensor`]'s types) when
    /// given. Returns the `[sets]` flags used (1 = skipped).
    ///
    /// The single layout clips by one global norm; with lanes each row gets its own norm and step
    /// count, so each lane's update is the single one on that lane alone (to rounding).
    pub fn step(
        &mut self,
        weights: &mut FlatWeights,
        skip: &Tensor,
        lr: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = self.config;
        tch::no_grad(|| {
            let (g, norm) = clipped_grads(&c, weights);
            let nonfinite = norm
                .reshape([-1])
                .isfinite()
                .logical_not()
                .to_kind(Kind::Float);
            let skipped = skip.maximum(&nonfinite);
            let _ = self.step_counts.g_add_(&(1.0 - &skipped));
            for set in 0..self.sets() {
                let (p, g, m, v) = (
                    part_of(weights, &weights.master, set),
                    part_of(weights, &g, set),
                    part_of(weights, &self.exp_avg, set),
                    part_of(weights, &self.exp_avg_sq, set),
                );
                let step = self.step_counts.get(set as i64);
                let part = Part {
                    param: &p,
                    grad: &g,
                    exp_avg: &m,
                    exp_avg_sq: &v,
                    step: &step,
                };
                let rate = lr.map(|r| r.get(set as i64));
                fused_adamw(&c, &[part], Some(&skipped.get(set as i64)), rate.as_ref())?;
            }
            weights.refresh_working();
            Ok(skipped)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::{LanguageModel, Precision};
    use crate::ttt::flat::tests::{loss, tiny_gpt2};

    /// The per-tensor AdamW and clipping tttnn used before the flat buffers (torch's single-tensor
    /// path): the reference the flat version must equal.
    struct PerTensor {
        params: Vec<Tensor>,
        exp_avg: Vec<Tensor>,
        exp_avg_sq: Vec<Tensor>,
        step: i64,
        c: TrainConfig,
    }

    impl PerTensor {
        fn new(lm: &LanguageModel, c: TrainConfig) -> Self {
            let mut v: Vec<(String, Tensor)> = lm.var_store().variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            let params: Vec<Tensor> = v.into_iter().map(|(_, t)| t).collect();
            let zeros = || tch::no_grad(|| params.iter().map(|t| t.zeros_like()).collect());
            Self {
                exp_avg: zeros(),
                exp_avg_sq: zeros(),
                params,
                step: 0,
                c,
            }
        }

        fn step(&mut self) {
            let c = self.c;
            tch::no_grad(|| {
                let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).collect();
                let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
                let total = Tensor::stack(&norms, 0).norm();
                let coef = ((total + 1e-6).reciprocal() * c.clip_norm).clamp_max(1.0);
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_(&coef);
                }
                self.step += 1;
                let bias1 = 1.0 - c.beta1.powi(self.step as i32);
                let bias2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
                for (i, p) in self.params.iter().enumerate() {
                    let g = p.grad();
                    let mut p = p.shallow_clone();
                    let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
                    let _ = self.exp_avg[i].lerp_(&g, 1.0 - c.beta1);
                    let v = &mut self.exp_avg_sq[i];
                    let _ = v.g_mul_scalar_(c.beta2);
                    let _ = v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                    let denom = (v.sqrt() / bias2_sqrt) + c.eps;
                    let _ = p.g_sub_(&(&self.exp_avg[i] / denom * (c.lr / bias1)));
                }
            })
        }

        fn zero_grad(&self) {
            for p in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.detach_().zero_();
                }
            }
        }
    }

    fn weights(lm: &LanguageModel) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = lm
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::Float).copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Five steps (lr 1e-3, so clipping and the moments matter) on the same gradients: the fused
    /// update over the flat buffers against torch's per-tensor formulas written out (what tttnn
    /// ran before the fused kernel). The gradients are the flat model's, given to both: some are
    /// rounding noise (the key bias's, which softmax cancels), which AdamW scales up to lr-sized
    /// steps, so two separate backward passes would compare noise, not the optimizer.
    #[test]
    fn fused_flat_adamw_equals_the_per_tensor_formulas() {
        let c = TrainConfig {
            lr: 1e-3,
            ..Default::default()
        };
        let chunks: Vec<Vec<i64>> = (0..5)
            .map(|s| (0..24).map(|i| (i * 37 + s * 11) % 200 + 3).collect())
            .collect();
        let reference = tiny_gpt2();
        let mut per_tensor = PerTensor::new(&reference, c);
        let reference_vars = reference.var_store().variables();
        let lm = tiny_gpt2();
        let mut flat = FlatWeights::new(&lm, Precision::Fp32).unwrap();
        let mut opt = AdamW::new(&flat, c);
        for ids in &chunks {
            flat.zero_grad();
            loss(&lm, ids).backward();
            per_tensor.zero_grad();
            loss(&reference, ids).backward();
            tch::no_grad(|| {
                for (name, t) in lm.var_store().variables() {
                    reference_vars[&name].grad().copy_(&t.grad());
                }
            });
            per_tensor.step();
            let _ = opt
                .step(
                    &mut flat,
                    &Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
                    None,
                )
                .unwrap();
        }
        let (want, got) = (weights(&reference), weights(&lm));
        assert_eq!(want.len(), got.len());
        let mut moved = 0.0f64;
        for ((name, a), (_, b)) in want.iter().zip(&got) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(
                d <= 1e-6,
                "{name}: fused and per-tensor AdamW differ by {d}"
            );
            let m = (a - flat.pretrained_of(name)).abs().max().double_value(&[]);
            moved = moved.max(m);
        }
        assert!(moved > 1e-3, "the weights hardly moved ({moved})");
    }
}
