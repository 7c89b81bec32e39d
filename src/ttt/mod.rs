//! Test-time training as the original does it (docs/spec.md §2): each neighbour is tokenized whole, cut
//! into non-overlapping `max_length` chunks, and each chunk gets one AdamW step (batch 1, train
//! mode, mean causal-LM loss, clip-norm 1.0). Weights are restored in place after each document.
//! The weights train as views into flat buffers (`flat`), one set or one per lane (`lanes`), and
//! AdamW and clipping run on those buffers (`adamw`): a few kernels per step on any device;
//! `checkpoint` saves and restores AdamW's state.
use std::path::Path;

use tch::{Kind, Tensor};

mod adamw;
mod checkpoint;
mod flat;
pub mod graphs;
mod lanes;

pub use adamw::AdamW;
pub use flat::FlatWeights;
pub use graphs::CudaGraphs;
pub use lanes::{LanePlan, LaneRound, LaneTrainer, MAX_AUTO_LANES};

use crate::error::Result;

use crate::lm::{LanguageModel, Precision};

/// Label that contributes no loss (torch's default `ignore_index`).
pub(crate) const IGNORE_INDEX: i64 = -100;

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
    #[serde(default)]
    /// fp32 (the original) or bf16 mixed precision (fp32 masters and AdamW state, bf16 compute).
    pub precision: Precision,
    #[serde(default)]
    /// What a one-token chunk gets: the original's zero-gradient AdamW step, or none.
    pub short_chunks: ShortChunks,
    #[serde(default)]
    /// Dropout while training: as the model's config sets it (the original), or off.
    pub dropout: Dropout,
    #[serde(default)]
    /// Steps as captured CUDA graphs, or launched kernel by kernel.
    pub cuda_graphs: CudaGraphs,
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
            precision: Precision::Fp32,
            short_chunks: ShortChunks::Step,
            dropout: Dropout::Model,
            cuda_graphs: CudaGraphs::Off,
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

/// What a one-token chunk gets. It has no next token to predict, so its loss is empty.
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
pub enum ShortChunks {
    /// An AdamW step with zero gradient, as the original (its HF loss over no targets is NaN
    /// with zero gradients, and `optimizer.step()` still decays the weights, moves the moments
    /// and counts the step; docs/spec.md §2).
    #[default]
    Step,
    /// No step: a departure (tttnn before issue #15).
    Skip,
}

/// Dropout while training.
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
pub enum Dropout {
    /// As the model's config.json sets it: the original trains in HF's train mode (GPT-2: 0.1).
    #[default]
    Model,
    /// None: a departure. Lanes need it for a model with dropout, since they cannot draw each
    /// lane's masks as a run of one document at a time draws them.
    Off,
}

impl Dropout {
    /// Whether the forward pass draws dropout masks (`train` of the models' `forward`).
    pub fn on(self) -> bool {
        self == Dropout::Model
    }
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
    /// Chunks of one token (no next-token loss) stepped with zero gradient (`ShortChunks::Step`).
    pub zero_grad_steps: usize,
    /// Chunks of one token skipped (`ShortChunks::Skip`).
    pub skipped_short: usize,
    /// Chunks whose loss was NaN or infinite: skipped, never applied.
    pub skipped_nonfinite: usize,
    /// Mean loss over the steps taken.
    pub mean_loss: f64,
}

/// One training chunk of a text, as the original cuts it: `max_length` tokens, the last one
/// shorter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// At least two tokens (a next-token target): one AdamW step on their mean loss.
    Tokens(Vec<i64>),
    /// One token under [`ShortChunks::Step`]: an AdamW step with zero gradient, as the original.
    ZeroGrad,
    /// One token under [`ShortChunks::Skip`]: no step.
    Skipped,
}

impl Chunk {
    /// Tokens the chunk puts through the model (a one-token chunk none: it has no loss).
    pub fn len(&self) -> usize {
        match self {
            Chunk::Tokens(t) => t.len(),
            Chunk::ZeroGrad | Chunk::Skipped => 0,
        }
    }

    /// Whether it puts no token through the model.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `tokens` cut into `config.max_length` chunks in order, the one-token rule applied: the one
/// place a text becomes training steps.
pub fn chunks(tokens: &[i64], config: &TrainConfig) -> Vec<Chunk> {
    tokens
        .chunks(config.max_length.max(1))
        .map(|c| match (c.len(), config.short_chunks) {
            (2.., _) => Chunk::Tokens(c.to_vec()),
            (_, ShortChunks::Step) => Chunk::ZeroGrad,
            (_, ShortChunks::Skip) => Chunk::Skipped,
        })
        .collect()
}

/// What one chunk got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChunkStep {
    /// An AdamW step on this loss.
    Trained(f64),
    /// The loss was NaN or infinite: no step.
    NonFinite,
    /// One token, stepped with zero gradient (`ShortChunks::Step`).
    ZeroGrad,
    /// One token, skipped (`ShortChunks::Skip`).
    SkippedShort,
}

impl ChunkStep {
    /// A chunk with a loss: stepped when it is finite.
    pub fn trained(loss: f64) -> Self {
        if loss.is_finite() {
            ChunkStep::Trained(loss)
        } else {
            ChunkStep::NonFinite
        }
    }

    /// Whether the optimizer steps for it.
    pub fn steps(self) -> bool {
        matches!(self, ChunkStep::Trained(_) | ChunkStep::ZeroGrad)
    }
}

impl TextTraining {
    /// Nothing trained yet on a text of `tokens` tokens.
    pub fn new(tokens: usize) -> Self {
        Self {
            tokens,
            mean_loss: 0.0,
            ..Default::default()
        }
    }

    /// Books one chunk (`mean_loss` sums until [`TextTraining::finish`]).
    pub fn add(&mut self, step: ChunkStep) {
        self.chunks += 1;
        match step {
            ChunkStep::Trained(loss) => {
                self.steps += 1;
                self.mean_loss += loss;
            }
            ChunkStep::NonFinite => self.skipped_nonfinite += 1,
            ChunkStep::ZeroGrad => {
                self.steps += 1;
                self.zero_grad_steps += 1;
            }
            ChunkStep::SkippedShort => self.skipped_short += 1,
        }
    }

    /// The mean loss over the steps that had a loss (a one-token chunk's is empty).
    pub fn finish(mut self) -> Self {
        let with_loss = self.steps - self.zero_grad_steps;
        self.mean_loss = if with_loss > 0 {
            self.mean_loss / with_loss as f64
        } else {
            f64::NAN
        };
        self
    }
}

/// The mean next-token loss of `[1, n, vocab]` logits against `[1, n]` labels (`IGNORE_INDEX`
/// where a position has no target), in fp32.
fn mean_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (n, vocab) = (logits.size()[1], logits.size()[2]);
    logits
        .view([n, vocab])
        .to_kind(Kind::Float)
        .cross_entropy_loss::<Tensor>(
            &labels.view([n]),
            None,
            tch::Reduction::Mean,
            IGNORE_INDEX,
            0.0,
        )
}

/// Each lane's mean next-token loss (`[lanes]` fp32) from `[lanes, t, vocab]` logits, labels
/// (`IGNORE_INDEX` where a position has no target) and each lane's target count. The sum's gradient
/// in lane l is lane l's loss's alone, since no weight is shared between lanes.
fn lane_losses(logits: &Tensor, labels: &Tensor, targets: &Tensor) -> Tensor {
    let (l, t, vocab) = (logits.size()[0], logits.size()[1], logits.size()[2]);
    logits
        .view([l * t, vocab])
        .to_kind(Kind::Float)
        .cross_entropy_loss::<Tensor>(
            &labels.view([l * t]),
            None,
            tch::Reduction::None,
            IGNORE_INDEX,
            0.0,
        )
        .view([l, t])
        .sum_dim_intlist(&[1i64][..], false, Kind::Float)
        / targets
}

/// An LM being fine-tuned: its weights in flat buffers, the optimizer, the pretrained copy.
pub struct Trainer {
    weights: FlatWeights,
    opt: AdamW,
    config: TrainConfig,
    /// The captured steps, with `--cuda-graphs on`.
    graphs: Option<graphs::GraphedSteps>,
}

impl Trainer {
    /// Moves `lm`'s weights (loaded in fp32) into flat buffers in `config.precision`, snapshots them
    /// on the same device and creates a fresh AdamW state.
    pub fn new(lm: &LanguageModel, config: TrainConfig) -> Result<Self> {
        let weights = FlatWeights::new(lm, config.precision)?;
        let opt = AdamW::new(&weights, config);
        Ok(Self {
            weights,
            opt,
            config,
            graphs: graphs::GraphedSteps::for_config(&config, lm, 1)?,
        })
    }

    /// Restores the pretrained weights in place (no reload from disk).
    pub fn reset_weights(&mut self) {
        self.weights.reset();
    }

    /// Drops AdamW's moments and step count (a departure from the original, which carries them).
    pub fn reset_optimizer(&mut self) {
        self.opt.reset();
    }

    /// Writes AdamW's state and `tag` to `path` (see [`AdamW::save`]).
    pub fn save_optimizer(&self, path: &Path, tag: i64) -> Result<()> {
        self.opt.save(&self.weights, path, tag)
    }

    /// Restores AdamW's state from `path`; returns the tag saved with it.
    pub fn load_optimizer(&mut self, path: &Path) -> Result<i64> {
        self.opt.load(&self.weights, path)
    }

    /// Writes the fp32 weights (the masters under mixed precision) to `path` as safetensors.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        self.weights.save(path)
    }

    /// Ends a test document: restores the pretrained weights and applies the optimizer policy.
    pub fn finish_document(&mut self, policy: OptimizerState) {
        self.reset_weights();
        if policy == OptimizerState::Reset {
            self.reset_optimizer();
        }
    }

    /// One AdamW step per `max_length` chunk of `text`, in order.
    pub fn train_on_text(&mut self, lm: &LanguageModel, text: &str) -> Result<TextTraining> {
        let tokens = lm.encode(text)?;
        self.train_on_tokens(lm, &tokens)
    }

    /// One AdamW step per `max_length` chunk of `tokens`, in order.
    pub fn train_on_tokens(&mut self, lm: &LanguageModel, tokens: &[i64]) -> Result<TextTraining> {
        let mut out = TextTraining::new(tokens.len());
        for chunk in chunks(tokens, &self.config) {
            out.add(self.step(lm, &chunk)?);
        }
        Ok(out.finish())
    }

    /// What `chunk` gets: one AdamW step on its mean next-token loss (batch 1, train mode), a
    /// zero-gradient step, or none.
    pub fn step(&mut self, lm: &LanguageModel, chunk: &Chunk) -> Result<ChunkStep> {
        let chunk = match chunk {
            Chunk::Tokens(c) => c,
            Chunk::ZeroGrad => {
                self.weights.zero_grad();
                self.opt.step(&mut self.weights, &[true])?;
                return Ok(ChunkStep::ZeroGrad);
            }
            Chunk::Skipped => return Ok(ChunkStep::SkippedShort),
        };
        if self.graphs.is_some() {
            return self.graphed_step(lm, chunk);
        }
        let ids = Tensor::from_slice(chunk).unsqueeze(0).to(lm.device());
        let logits = lm.forward(&ids, self.config.dropout.on())?;
        let n = chunk.len() as i64;
        // As HF's ForCausalLMLoss: shift the labels (padding with ignore_index) rather than
        // slicing the logits, which would copy a [n, vocab] tensor every step.
        let labels = Tensor::cat(
            &[
                ids.narrow(1, 1, n - 1),
                Tensor::full([1, 1], IGNORE_INDEX, (Kind::Int64, lm.device())),
            ],
            1,
        );
        let loss = mean_loss(&logits, &labels);
        self.weights.zero_grad();
        loss.backward();
        // The one host sync of a step, after backward is queued so the GPU is busy meanwhile:
        // a non-finite loss must not reach the weights.
        let value = loss.double_value(&[]);
        let step = ChunkStep::trained(value);
        self.opt.step(&mut self.weights, &[step.steps()])?;
        Ok(step)
    }

    /// [`Trainer::step`] as a replay of its length bucket's captured graph (captured the first
    /// time): the body is [`Trainer::device_step`].
    fn graphed_step(&mut self, lm: &LanguageModel, chunk: &[i64]) -> Result<ChunkStep> {
        let mut graphs = self.graphs.take().expect("graphed steps have graphs");
        let input = [graphs::LaneInput {
            tokens: Some(chunk),
            steps: true,
        }];
        let replayed = graphs.step(&input, &mut |b| self.device_step(lm, b));
        self.graphs = Some(graphs);
        let replayed = replayed?.lanes[0];
        if replayed.skipped {
            return Ok(ChunkStep::NonFinite);
        }
        self.opt.count_step(0);
        Ok(ChunkStep::trained(replayed.loss))
    }

    /// The captured step's body ([`graphs::train_body`]) on one document's
    /// [`graphs::StepBuffers`].
    fn device_step(&mut self, lm: &LanguageModel, b: &graphs::StepBuffers) -> Result<()> {
        let dropout = self.config.dropout.on();
        graphs::train_body(&mut self.weights, &mut self.opt, dropout, lm, b)
    }

    /// The captured steps and scoring forwards, with `--cuda-graphs on`.
    pub(crate) fn graphs_mut(&mut self) -> Option<&mut graphs::GraphedSteps> {
        self.graphs.as_mut()
    }

    /// The host's cost of the replayed training steps (`None` without `--cuda-graphs on`).
    pub fn replay_stats(&self) -> Option<graphs::ReplayStats> {
        self.graphs.as_ref().map(|g| g.replay_stats())
    }

    /// Captured graphs' node counts by length bucket (empty without `--cuda-graphs on`).
    pub fn graph_stats(&self) -> Vec<graphs::BucketStats> {
        self.graphs.as_ref().map_or_else(Vec::new, |g| g.stats())
    }
}
