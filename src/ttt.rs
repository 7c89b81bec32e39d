//! Test-time training as the original does it (spec §2): each neighbour is tokenized whole, cut
//! into non-overlapping `max_length` chunks, and each chunk gets one AdamW step (batch 1, train
//! mode, mean causal-LM loss, clip-norm 1.0). Weights are restored in place after each document.
use tch::nn::{self, OptimizerConfig};
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

/// An LM being fine-tuned, with its optimizer and a copy of the pretrained weights.
pub struct Trainer {
    opt: nn::Optimizer,
    config: TrainConfig,
    pretrained: Vec<(Tensor, Tensor)>,
}

impl Trainer {
    /// Creates the AdamW optimizer over all of `lm`'s weights and snapshots them on the same device.
    pub fn new(lm: &LanguageModel, config: TrainConfig) -> Result<Self> {
        let opt = Self::optimizer(lm, &config)?;
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

    fn optimizer(lm: &LanguageModel, c: &TrainConfig) -> Result<nn::Optimizer> {
        nn::AdamW {
            beta1: c.beta1,
            beta2: c.beta2,
            wd: c.weight_decay,
            eps: c.eps,
            amsgrad: false,
        }
        .build(lm.var_store(), c.lr)
        .map_err(|e| Error::torch("creating AdamW", e))
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
        self.opt = Self::optimizer(lm, &self.config)?;
        Ok(())
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
            self.opt.step();
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
