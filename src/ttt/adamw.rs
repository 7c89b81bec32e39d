//! torch's AdamW with `clip_grad_norm_` on the flat buffers of [`FlatWeights`]: one routine for
//! one set of weights or for lanes, one step count per set. Written out (rather than libtorch's
//! C++ optimizer) so the moments can be saved and restored (`checkpoint.rs`): a resumed run goes on
//! with the state the original carries across documents (docs/spec.md §2).
use tch::{Kind, Tensor};

use super::{FlatWeights, TrainConfig};
use crate::lm::Layout;

/// The part of an AdamW step without per-step scalars, in place: `clip_grad_norm_` of `g` by its
/// `norm` (coefficient clamped at 1; one norm, or one per lane row), decoupled weight decay of `p`,
/// and both moments.
fn clip_decay_and_moments(
    c: &TrainConfig,
    g: &mut Tensor,
    norm: &Tensor,
    p: &mut Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) {
    let coef = ((norm + 1e-6).reciprocal() * c.clip_norm).clamp_max(1.0);
    let _ = g.g_mul_(&coef);
    let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
    let _ = m.lerp_(g, 1.0 - c.beta1);
    let _ = v.g_mul_scalar_(c.beta2);
    let _ = v.addcmul_(&(&*g * (1.0 - c.beta2)), g);
}

/// `torch.optim.AdamW(lr, eps=1e-8)` (decoupled weight decay, bias correction) after
/// `clip_grad_norm_`, over the flat buffers of [`FlatWeights`], on the device without a host sync.
pub struct AdamW {
    pub(super) config: TrainConfig,
    pub(super) exp_avg: Tensor,
    pub(super) exp_avg_sq: Tensor,
    /// Steps taken (bias correction): one count per set of weights (one, or one per lane).
    pub(super) steps: Vec<i64>,
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
            steps: vec![0; weights.lanes()],
        }
    }

    /// Zero moments and step counts (of every lane).
    pub fn reset(&mut self) {
        let _ = self.exp_avg.zero_();
        let _ = self.exp_avg_sq.zero_();
        self.steps.iter_mut().for_each(|s| *s = 0);
    }

    /// Zero moments and step count of lane `lane` (of a laned layout).
    pub fn reset_lane(&mut self, lane: usize) {
        let _ = self.exp_avg.get(lane as i64).zero_();
        let _ = self.exp_avg_sq.get(lane as i64).zero_();
        self.steps[lane] = 0;
    }

    /// Each set's step count.
    pub fn steps(&self) -> &[i64] {
        &self.steps
    }

    /// `clip_grad_norm_(max_norm)` then one AdamW step of each set `s` with `stepping[s]` (one
    /// entry per set: `[true]` steps a single set); the others are left exactly as they are.
    ///
    /// The single layout keeps the kernels of torch's single-tensor path (one global norm, host
    /// scalars for the bias corrections): its runs stay bit-identical to those before lanes. With
    /// lanes each row gets its own norm and step count, so each lane's update is the single one
    /// on that lane alone (to rounding).
    pub fn step(&mut self, weights: &mut FlatWeights, stepping: &[bool]) {
        assert_eq!(
            stepping.len(),
            self.steps.len(),
            "one flag per set of weights"
        );
        match weights.layout() {
            Layout::Single => {
                if stepping[0] {
                    self.step_single(weights)
                }
            }
            Layout::Lanes(_) => self.step_lanes(weights, stepping),
        }
    }

    fn step_single(&mut self, weights: &mut FlatWeights) {
        let c = self.config;
        self.steps[0] += 1;
        let t = self.steps[0] as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = c.lr / bias1;
        tch::no_grad(|| {
            let mut g = weights.grad_fp32();
            // clip_grad_norm_: the 2-norm of all gradients.
            let norm = g.norm();
            let p = &mut weights.master;
            clip_decay_and_moments(
                &c,
                &mut g,
                &norm,
                p,
                &mut self.exp_avg,
                &mut self.exp_avg_sq,
            );
            let mut denom = self.exp_avg_sq.sqrt();
            let _ = denom.g_div_scalar_(bias2_sqrt);
            let _ = denom.g_add_scalar_(c.eps);
            let _ = p.g_sub_(&(&self.exp_avg / denom * step_size));
            weights.refresh_working();
        })
    }

    fn step_lanes(&mut self, weights: &mut FlatWeights, stepping: &[bool]) {
        let c = self.config;
        let rows: Vec<i64> = (0..stepping.len() as i64)
            .filter(|&l| stepping[l as usize])
            .collect();
        if rows.is_empty() {
            return;
        }
        let device = weights.master.device();
        let mut bias2_sqrt = Vec::with_capacity(rows.len());
        let mut step_size = Vec::with_capacity(rows.len());
        for &l in &rows {
            let t = &mut self.steps[l as usize];
            *t += 1;
            bias2_sqrt.push((1.0 - c.beta2.powi(*t as i32)).sqrt() as f32);
            step_size.push((c.lr / (1.0 - c.beta1.powi(*t as i32))) as f32);
        }
        let column = |v: &[f32]| Tensor::from_slice(v).to(device).unsqueeze(1);
        let (bias2_sqrt, step_size) = (column(&bias2_sqrt), column(&step_size));
        tch::no_grad(|| {
            // Every lane stepping (the usual round) updates the buffers in place; otherwise the
            // stepping rows are gathered, updated and put back.
            let all = rows.len() == stepping.len();
            let index = Tensor::from_slice(&rows).to(device);
            let rows_of = |t: &Tensor| {
                if all {
                    t.shallow_clone()
                } else {
                    t.index_select(0, &index)
                }
            };
            let mut g = rows_of(&weights.grad_fp32());
            // Each lane's own gradient norm.
            let norm = g.norm_scalaropt_dim(2, [1], true);
            let mut p = rows_of(&weights.master);
            let mut m = rows_of(&self.exp_avg);
            let mut v = rows_of(&self.exp_avg_sq);
            clip_decay_and_moments(&c, &mut g, &norm, &mut p, &mut m, &mut v);
            let mut denom = v.sqrt();
            let _ = denom.g_div_(&bias2_sqrt);
            let _ = denom.g_add_scalar_(c.eps);
            let _ = p.g_sub_(&(&m / denom * step_size));
            if !all {
                let _ = weights.master.index_copy_(0, &index, &p);
                let _ = self.exp_avg.index_copy_(0, &index, &m);
                let _ = self.exp_avg_sq.index_copy_(0, &index, &v);
            }
            weights.refresh_working();
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

    /// Five steps (lr 1e-3, so clipping and the moments matter) on the same chunks.
    #[test]
    fn flat_adamw_equals_the_per_tensor_version() {
        let c = TrainConfig {
            lr: 1e-3,
            ..Default::default()
        };
        let chunks: Vec<Vec<i64>> = (0..5)
            .map(|s| (0..24).map(|i| (i * 37 + s * 11) % 200 + 3).collect())
            .collect();

        let reference = tiny_gpt2();
        let mut per_tensor = PerTensor::new(&reference, c);
        for ids in &chunks {
            per_tensor.zero_grad();
            loss(&reference, ids).backward();
            per_tensor.step();
        }

        let lm = tiny_gpt2();
        let mut flat = FlatWeights::new(&lm, Precision::Fp32).unwrap();
        let mut opt = AdamW::new(&flat, c);
        for ids in &chunks {
            flat.zero_grad();
            loss(&lm, ids).backward();
            opt.step(&mut flat, &[true]);
        }
        let (want, got) = (weights(&reference), weights(&lm));
        assert_eq!(want.len(), got.len());
        let mut moved = 0.0f64;
        for ((name, a), (_, b)) in want.iter().zip(&got) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d <= 1e-6, "{name}: flat and per-tensor AdamW differ by {d}");
            let m = (a - flat.pretrained_of(name)).abs().max().double_value(&[]);
            moved = moved.max(m);
        }
        assert!(moved > 1e-3, "the weights hardly moved ({moved})");
    }
}
