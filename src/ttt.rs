//! Test-time training as the original does it (spec §2): each neighbour is tokenized whole, cut
//! into non-overlapping `max_length` chunks, and each chunk gets one AdamW step (batch 1, train
//! mode, mean causal-LM loss, clip-norm 1.0). Weights are restored in place after each document.
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::lm::LanguageModel;

/// Label that contributes no loss (torch's default `ignore_index`).
const IGNORE_INDEX: i64 = -100;

/// Optimizer settings; defaults are torch's `AdamW(lr, eps=1e-8)` as the original builds it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Learning rate (2e-5 for GPT-2, 5e-6 for GPT-Neo in the paper).
    pub lr: f64,
    /// Tokens per training chunk (1024 for GPT-2, 2048 for GPT-Neo).
    pub max_length: usize,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Decoupled weight decay (torch's default 0.01, never overridden by the original).
    pub weight_decay: f64,
    /// Gradient-norm clip.
    pub clip_norm: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 2e-5,
            max_length: 1024,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            clip_norm: 1.0,
        }
    }
}

/// What happens to AdamW's moments between test documents.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerState {
    /// Keep them across documents, as the original does (its AdamW is created once per task).
    #[default]
    Carry,
    /// Start every document with fresh AdamW state: a departure from the original, order-independent.
    Reset,
}

/// What training on one text did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextTraining {
    /// Tokens in the text.
    pub tokens: usize,
    /// Chunks it was cut into.
    pub chunks: usize,
    /// AdamW steps taken.
    pub steps: usize,
    /// Chunks of one token: no next-token loss, skipped.
    pub skipped_short: usize,
    /// Chunks whose loss was NaN or infinite: skipped, never applied.
    pub skipped_nonfinite: usize,
    /// Mean loss over the steps taken.
    pub mean_loss: f64,
}

/// torch's `AdamW` (the single-tensor path `torch.optim.AdamW` takes on CPU), written out so its
/// moments can be saved and restored: a resumed run continues with the state the original carries
/// across documents (spec §2), which libtorch's C++ optimizer does not expose.
pub struct AdamW {
    config: TrainConfig,
    /// Weights by HF name, sorted, so a saved state maps back by name.
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
}

impl AdamW {
    /// Fresh state (zero moments, step 0) over all of `lm`'s weights.
    pub fn new(lm: &LanguageModel, config: TrainConfig) -> Self {
        let mut params: Vec<(String, Tensor)> = lm.var_store().variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &[(String, Tensor)]| -> Vec<Tensor> {
            tch::no_grad(|| p.iter().map(|(_, t)| t.zeros_like()).collect())
        };
        Self {
            config,
            exp_avg: zeros(&params),
            exp_avg_sq: zeros(&params),
            params,
            step: 0,
        }
    }

    fn zero_grad(&self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// `torch.nn.utils.clip_grad_norm_`: the 2-norm of the per-weight norms, coefficient clamped at 1.
    fn clip_grad_norm(&self, max_norm: f64) {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(|g| g.defined())
                .collect();
            if grads.is_empty() {
                return;
            }
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total = Tensor::stack(&norms, 0).norm();
            let coef = ((total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
            for mut g in grads {
                let _ = g.g_mul_(&coef);
            }
        })
    }

    fn update(&mut self) {
        self.step += 1;
        let c = &self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = c.lr / bias1;
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
                let m = &mut self.exp_avg[i];
                let _ = m.lerp_(&g, 1.0 - c.beta1);
                let v = &mut self.exp_avg_sq[i];
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                let denom = (v.sqrt() / bias2_sqrt) + c.eps;
                let _ = p.g_sub_(&(&*m / denom * step_size));
            }
        })
    }

    /// Writes the moments, step count and a caller's `tag` (safetensors, by weight name)
    /// atomically to `path`.
    pub fn save(&self, path: &Path, tag: i64) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((
                format!("exp_avg.{name}"),
                self.exp_avg[i].to_device(tch::Device::Cpu),
            ));
            named.push((
                format!("exp_avg_sq.{name}"),
                self.exp_avg_sq[i].to_device(tch::Device::Cpu),
            ));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        named.push(("tag".into(), Tensor::from_slice(&[tag])));
        let tmp = path.with_extension("tmp");
        Tensor::write_safetensors(&named, &tmp)
            .map_err(|e| Error::torch(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Restores state written by [`AdamW::save`] for the same model; returns its tag.
    pub fn load(&mut self, path: &Path) -> Result<i64> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_file(path, format!("not an optimizer state: {e}")))?;
        let mut by_name: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut take = |name: String| {
            by_name.remove(&name).ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!("optimizer state has no `{name}`: saved for another model?"),
                )
            })
        };
        let step = take("step".into())?;
        let tag = take("tag".into())?;
        let mut exp_avg = Vec::with_capacity(self.params.len());
        let mut exp_avg_sq = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            exp_avg.push(take(format!("exp_avg.{name}"))?.to_device(p.device()));
            exp_avg_sq.push(take(format!("exp_avg_sq.{name}"))?.to_device(p.device()));
        }
        self.exp_avg = exp_avg;
        self.exp_avg_sq = exp_avg_sq;
        self.step = step.int64_value(&[0]);
        Ok(tag.int64_value(&[0]))
    }
}

/// An LM being fine-tuned, with its optimizer and a copy of the pretrained weights.
pub struct Trainer {
    opt: AdamW,
    config: TrainConfig,
    pretrained: Vec<(Tensor, Tensor)>,
}

impl Trainer {
    /// Creates the AdamW optimizer over all of `lm`'s weights and snapshots them on the same device.
    pub fn new(lm: &LanguageModel, config: TrainConfig) -> Result<Self> {
        let opt = AdamW::new(lm, config);
        let pretrained = tch::no_grad(|| {
            lm.var_store().trainable_variables().into_iter().map(|v| {
                let copy = v.detach().copy();
                (v, copy)
            })
        })
        .collect();
        Ok(Self {
            opt,
            config,
            pretrained,
        })
    }

    /// Restores the pretrained weights in place (no reload from disk).
    pub fn reset_weights(&mut self) {
        tch::no_grad(|| {
            for (var, copy) in &mut self.pretrained {
                var.copy_(copy);
            }
        });
    }

    /// Drops AdamW's moments and step count (a departure from the original, which carries them).
    pub fn reset_optimizer(&mut self, lm: &LanguageModel) -> Result<()> {
        self.opt = AdamW::new(lm, self.config);
        Ok(())
    }

    /// The optimizer, to save or restore its state.
    pub fn optimizer(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    /// Ends a test document: restores the pretrained weights and applies the optimizer policy.
    pub fn finish_document(&mut self, lm: &LanguageModel, policy: OptimizerState) -> Result<()> {
        self.reset_weights();
        if policy == OptimizerState::Reset {
            self.reset_optimizer(lm)?;
        }
        Ok(())
    }

    /// One AdamW step per `max_length` chunk of `text`, in order.
    pub fn train_on_text(&mut self, lm: &LanguageModel, text: &str) -> Result<TextTraining> {
        let tokens = lm.encode(text)?;
        self.train_on_tokens(lm, &tokens)
    }

    /// One AdamW step per `max_length` chunk of `tokens`, in order.
    pub fn train_on_tokens(&mut self, lm: &LanguageModel, tokens: &[i64]) -> Result<TextTraining> {
        let mut out = TextTraining {
            tokens: tokens.len(),
            ..Default::default()
        };
        let mut loss_sum = 0.0;
        for chunk in tokens.chunks(self.config.max_length.max(1)) {
            out.chunks += 1;
            if chunk.len() < 2 {
                out.skipped_short += 1;
                continue;
            }
            let ids = Tensor::from_slice(chunk).unsqueeze(0).to(lm.device());
            let logits = lm.forward(&ids, true);
            let n = chunk.len() as i64;
            let vocab = logits.size()[2];
            // As HF's ForCausalLMLoss: shift the labels (padding with ignore_index) rather than
            // slicing the logits, which would copy a [n, vocab] tensor every step.
            let labels = Tensor::cat(
                &[
                    ids.narrow(1, 1, n - 1),
                    Tensor::full([1, 1], IGNORE_INDEX, (Kind::Int64, lm.device())),
                ],
                1,
            );
            let loss = logits
                .view([n, vocab])
                .to_kind(Kind::Float)
                .cross_entropy_loss::<Tensor>(
                    &labels.view([n]),
                    None,
                    tch::Reduction::Mean,
                    IGNORE_INDEX,
                    0.0,
                );
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                out.skipped_nonfinite += 1;
                continue;
            }
            self.opt.zero_grad();
            loss.backward();
            self.opt.clip_grad_norm(self.config.clip_norm);
            self.opt.update();
            loss_sum += value;
            out.steps += 1;
        }
        out.mean_loss = if out.steps > 0 {
            loss_sum / out.steps as f64
        } else {
            f64::NAN
        };
        Ok(out)
    }
}
