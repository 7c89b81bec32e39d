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
#[cfg(test)]
mod legacy;

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
    /// Chunks whose loss (or gradient norm) was NaN or infinite: skipped, never applied.
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

    /// A chunk with a loss as its step left it on the device: its loss, and whether the update
    /// was skipped there (a non-finite loss or gradient norm).
    fn from_device(loss: f32, skipped: f32) -> Self {
        if skipped != 0.0 {
            ChunkStep::NonFinite
        } else {
            ChunkStep::trained(loss as f64)
        }
    }
}

/// What a chunk got, as its step leaves it: known on the host, or a loss still on the device.
#[derive(Debug)]
pub enum StepOutcome {
    /// Known without the device: a one-token chunk's zero-gradient step, or its skip.
    Known(ChunkStep),
    /// A chunk with a loss: lane `lane` of its round's `[2, lanes]` fp32 output on the device
    /// (the mean loss, then 1 where the update was skipped on the device).
    OnDevice { out: Tensor, lane: i64 },
}

#[cfg(test)]
impl StepOutcome {
    /// What this one step got, read at once (a host sync; [`StepLog`] reads a text's steps together).
    pub(crate) fn read(self) -> ChunkStep {
        match self {
            StepOutcome::Known(c) => c,
            StepOutcome::OnDevice { out, lane } => ChunkStep::from_device(
                out.double_value(&[0, lane]) as f32,
                out.double_value(&[1, lane]) as f32,
            ),
        }
    }
}

/// The steps of one text as they are taken; their losses stay on the device until
/// [`StepLog::finish`] reads them all at once, so a text's steps queue on a GPU without a host
/// sync between them.
#[derive(Debug, Default)]
pub struct StepLog {
    tokens: usize,
    steps: Vec<StepOutcome>,
}

impl StepLog {
    /// No step yet on a text of `tokens` tokens.
    pub fn new(tokens: usize) -> Self {
        Self {
            tokens,
            steps: Vec::new(),
        }
    }

    /// Books one chunk's step.
    pub fn add(&mut self, step: StepOutcome) {
        self.steps.push(step);
    }

    /// What the text's training did, its losses read from the device in one host sync (none
    /// when no chunk had a loss).
    pub fn finish(self) -> Result<TextTraining> {
        let on_device: Vec<Tensor> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                StepOutcome::OnDevice { out, lane } => Some(out.select(1, *lane)),
                StepOutcome::Known(_) => None,
            })
            .collect();
        let values = if on_device.is_empty() {
            Vec::new()
        } else {
            let host = Tensor::stack(&on_device, 0).to_device(tch::Device::Cpu);
            Vec::<f32>::try_from(host.view([-1]))
                .map_err(|e| crate::error::Error::torch("reading a text's step losses", e))?
        };
        let mut read = values.chunks_exact(2);
        let mut out = TextTraining::new(self.tokens);
        for step in self.steps {
            out.add(match step {
                StepOutcome::Known(c) => c,
                StepOutcome::OnDevice { .. } => match read.next() {
                    Some(&[loss, skipped]) => ChunkStep::from_device(loss, skipped),
                    _ => unreachable!("one [loss, skipped] pair per step on the device"),
                },
            });
        }
        Ok(out.finish())
    }
}

/// One training step of each set of `weights` on its chunk (`None`: the set sits the round out),
/// for both trainers (one set, or one per lane): the chunks with a loss in one forward and
/// backward ([`graphs::train_body`], replayed from its length bucket's graph when the steps are
/// `captured`, else run on buffers of the round's longest chunk), then one AdamW step per stepping set,
/// a non-finite loss or gradient norm skipped on the device. Nothing is read back: the losses stay
/// on the device in the returned round.
fn train_round(
    weights: &mut FlatWeights,
    opt: &mut AdamW,
    config: &TrainConfig,
    captured: Option<&mut graphs::GraphedSteps>,
    lm: &LanguageModel,
    chunks: &[Option<&Chunk>],
) -> Result<LaneRound> {
    assert_eq!(
        chunks.len(),
        opt.sets(),
        "one chunk (or none) per set of weights"
    );
    let inputs: Vec<graphs::LaneInput> = chunks.iter().map(|c| graphs::LaneInput::of(*c)).collect();
    let dropout = config.dropout.on();
    let longest = inputs
        .iter()
        .filter_map(|i| i.tokens.map(<[i64]>::len))
        .max();
    let (out, computed_tokens) = match (longest, captured) {
        // No chunk with a loss: the zero-gradient steps of one-token chunks, if any.
        (None, _) => {
            if inputs.iter().any(|i| i.steps) {
                let skip: Vec<f32> = inputs.iter().map(|i| f32::from(!i.steps)).collect();
                weights.zero_grad();
                let skip = adamw::upload(Tensor::from_slice(&skip), lm.device())?;
                // A zero gradient is finite: every stepping set steps, no flag to read.
                let _ = opt.step(weights, &skip)?;
            }
            (None, 0)
        }
        (Some(_), Some(captured)) => {
            let r = captured.step(&inputs, &mut |b| {
                graphs::train_body(weights, opt, dropout, lm, b)
            })?;
            (Some(r.out), chunks.len() * r.bucket_len)
        }
        (Some(len), None) => {
            let b = graphs::StepBuffers::eager(&inputs, len, IGNORE_INDEX, lm.device())?;
            graphs::train_body(weights, opt, dropout, lm, &b)?;
            (Some(b.out), chunks.len() * len)
        }
    };
    let steps = chunks
        .iter()
        .enumerate()
        .map(|(l, c)| {
            Some(match c.as_ref()? {
                Chunk::Tokens(_) => StepOutcome::OnDevice {
                    out: out
                        .as_ref()
                        .expect("a chunk with tokens ran")
                        .shallow_clone(),
                    lane: l as i64,
                },
                Chunk::ZeroGrad => StepOutcome::Known(ChunkStep::ZeroGrad),
                Chunk::Skipped => StepOutcome::Known(ChunkStep::SkippedShort),
            })
        })
        .collect();
    Ok(LaneRound {
        steps,
        computed_tokens,
    })
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

    /// One AdamW step per `max_length` chunk of `tokens`, in order; the losses are read once, at
    /// the end.
    pub fn train_on_tokens(&mut self, lm: &LanguageModel, tokens: &[i64]) -> Result<TextTraining> {
        let mut log = StepLog::new(tokens.len());
        for chunk in chunks(tokens, &self.config) {
            log.add(self.step(lm, &chunk)?);
        }
        log.finish()
    }

    /// What `chunk` gets: one AdamW step on its mean next-token loss (batch 1, train mode), a
    /// zero-gradient step, or none; its loss stays on the device.
    pub fn step(&mut self, lm: &LanguageModel, chunk: &Chunk) -> Result<StepOutcome> {
        let round = self.round(lm, &[Some(chunk)])?;
        Ok(round
            .steps
            .into_iter()
            .next()
            .flatten()
            .expect("one chunk, one outcome"))
    }

    /// [`Trainer::step`] as a round of one slot (`None`: nothing to train), as the engine's
    /// backend calls it.
    pub fn round(&mut self, lm: &LanguageModel, chunks: &[Option<&Chunk>]) -> Result<LaneRound> {
        let graphs = self.graphs.as_mut();
        train_round(
            &mut self.weights,
            &mut self.opt,
            &self.config,
            graphs,
            lm,
            chunks,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ttt::flat::tests::tiny_gpt2;

    fn config() -> TrainConfig {
        TrainConfig {
            lr: 1e-3,
            max_length: 24,
            dropout: Dropout::Off,
            ..Default::default()
        }
    }

    /// A text's steps leave their losses on the device (no read between steps); its log reads
    /// them at once and books what eager reading of each step would have: a one-token chunk's
    /// zero-gradient step known on the host, the losses and their mean.
    #[test]
    fn a_texts_losses_stay_on_the_device_until_its_log_is_read() {
        let tokens: Vec<i64> = (0..49).map(|i| (i * 37) % 200 + 3).collect();
        let cut = chunks(&tokens, &config());
        assert_eq!(cut.len(), 3);
        assert_eq!(cut[2], Chunk::ZeroGrad);
        let lm = tiny_gpt2();
        let mut trainer = Trainer::new(&lm, config()).unwrap();
        let mut log = StepLog::new(tokens.len());
        let mut each = Vec::new();
        for chunk in &cut {
            let step = trainer.step(&lm, chunk).unwrap();
            match (&step, chunk) {
                (StepOutcome::OnDevice { out, .. }, Chunk::Tokens(_)) => {
                    each.push(out.double_value(&[0, 0]));
                }
                (StepOutcome::Known(ChunkStep::ZeroGrad), Chunk::ZeroGrad) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
            log.add(step);
        }
        let t = log.finish().unwrap();
        assert_eq!(
            (t.tokens, t.chunks, t.steps, t.zero_grad_steps),
            (49, 3, 3, 1)
        );
        let mean = each.iter().sum::<f64>() / 2.0;
        assert!(
            (t.mean_loss - mean).abs() <= 1e-12,
            "{} vs {mean}",
            t.mean_loss
        );
        assert_eq!(trainer.opt.steps().unwrap(), [3]);
    }

    /// A NaN loss skips the step on the device, as eager reading skipped it: the weights and the
    /// step count stay, and the text's training counts the chunk as non-finite.
    #[test]
    fn a_nonfinite_loss_skips_its_step_on_the_device() {
        let lm = tiny_gpt2();
        let mut trainer = Trainer::new(&lm, config()).unwrap();
        // One NaN weight (the flat buffer's first, used at every position): the loss is NaN.
        tch::no_grad(|| {
            let _ = trainer.weights.master.get(0).fill_(f64::NAN);
        });
        trainer.weights.refresh_working();
        let before = trainer.weights.master.narrow(0, 1, 1000).copy();
        let tokens: Vec<i64> = (0..24).map(|i| (i * 37) % 200 + 3).collect();
        let t = trainer.train_on_tokens(&lm, &tokens).unwrap();
        assert_eq!((t.chunks, t.steps, t.skipped_nonfinite), (1, 0, 1));
        assert!(t.mean_loss.is_nan(), "no step had a loss");
        let after = trainer.weights.master.narrow(0, 1, 1000);
        assert_eq!(
            after.ne_tensor(&before).sum(Kind::Int64).int64_value(&[]),
            0
        );
        assert_eq!(trainer.opt.steps().unwrap(), [0]);
        // The pretrained weights again: the same chunk steps.
        trainer.reset_weights();
        let t = trainer.train_on_tokens(&lm, &tokens).unwrap();
        assert_eq!((t.steps, t.skipped_nonfinite), (1, 0));
        assert_eq!(trainer.opt.steps().unwrap(), [1]);
    }
}
