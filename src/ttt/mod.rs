//! Test-time training as the original does it (docs/spec.md §2): each neighbour is tokenized whole, cut
//! into non-overlapping `max_length` chunks, and each chunk gets one AdamW step (batch 1, train
//! mode, mean causal-LM loss, clip-norm 1.0). Weights are restored in place after each document.
//! A [`Step`] may also hold the chunks of several consecutive neighbours (`--neighbors-per-step`)
//! and a learning rate of its own ([`LrSchedule`]): departures the runner plans, never defaults.
//! The weights train as views into flat buffers (`flat`), one set or one per lane (`lanes`), and
//! AdamW and clipping run on those buffers (`adamw`): a few kernels per step on any device;
//! `graphs` holds the step's body (eager or captured as a CUDA graph) and the scoring buffers;
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
    #[serde(default)]
    /// How the learning rate moves over a document's steps (constant: the paper).
    pub lr_schedule: LrSchedule,
    #[serde(default)]
    /// Steps of linear warm-up at the start of each document's schedule.
    pub warmup_steps: usize,
    #[serde(default = "one")]
    /// The most chunks one step of one set of weights trains on (1: the paper; more with
    /// `--neighbors-per-step`): the rows a captured step's buffers hold per set.
    pub neighbors_per_step: usize,
}

fn one() -> usize {
    1
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
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            neighbors_per_step: 1,
        }
    }
}

impl TrainConfig {
    /// The learning rate of step `step` (counted from 0) of a document's `steps`: `None` under the
    /// paper's constant rate without warm-up (the step takes [`TrainConfig::lr`] itself), else
    /// `lr` times the schedule's factor.
    pub fn lr_at(&self, step: usize, steps: usize) -> Option<f64> {
        self.lr_varies()
            .then(|| self.lr * self.lr_schedule.factor(step, steps, self.warmup_steps))
    }

    /// Whether steps take learning rates of their own (a schedule or a warm-up).
    pub fn lr_varies(&self) -> bool {
        self.lr_schedule != LrSchedule::Constant || self.warmup_steps > 0
    }
}

/// How the learning rate moves over the steps of one test document, restarted for each: the
/// paper's constant rate, or a decay as Hugging Face transformers' schedulers make it.
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
pub enum LrSchedule {
    /// The configured rate at every step (the paper; after a warm-up, if any).
    #[default]
    Constant,
    /// Linear decay to 0 over the document's steps (`get_linear_schedule_with_warmup`).
    Linear,
    /// Half a cosine from the rate to 0 (`get_cosine_schedule_with_warmup`, 0.5 cycles).
    Cosine,
}

impl LrSchedule {
    /// The factor of the learning rate at step `step` (from 0) of `steps`, after `warmup` steps of
    /// linear warm-up: transformers' schedule lambdas (`get_constant_schedule_with_warmup` and the
    /// two above) at the step about to be taken, as a scheduler stepped after each optimizer step
    /// gives them, so a warm-up's first step has factor 0 and a linear decay's last `1/steps`.
    pub fn factor(self, step: usize, steps: usize, warmup: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let span = steps.saturating_sub(warmup).max(1) as f64;
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear => (0.0f64).max((steps as f64 - step as f64) / span),
            LrSchedule::Cosine => {
                let progress = (step - warmup) as f64 / span;
                (0.0f64).max(0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos()))
            }
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
    /// No step: a departure from the original, which steps on them.
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
    /// Steps of one-token chunks only (no next-token loss), taken with zero gradient
    /// (`ShortChunks::Step`).
    pub zero_grad_steps: usize,
    /// Chunks of one token left out (`ShortChunks::Skip`).
    pub skipped_short: usize,
    /// Steps whose loss (or gradient norm) was NaN or infinite: skipped, never applied.
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

/// One AdamW step of one set of weights: the chunks it trains on and its learning rate. The
/// paper's step is one chunk at the configured rate ([`Step::of`]); with `--neighbors-per-step B`
/// it holds up to B chunks of consecutive neighbours, one mini-batch whose loss is the mean over
/// all their target tokens (as a padded batch's causal-LM loss with ignored labels is).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Its chunks, in the order of their neighbours.
    pub chunks: Vec<Chunk>,
    /// Its learning rate (`None`: [`TrainConfig::lr`], the paper's constant).
    pub lr: Option<f64>,
}

impl Step {
    /// One chunk at the configured learning rate: the paper's step.
    pub fn of(chunk: Chunk) -> Self {
        Step {
            chunks: vec![chunk],
            lr: None,
        }
    }

    /// Tokens it puts through the model.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Chunk::len).sum()
    }

    /// Whether it puts no token through the model.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens of its longest chunk: what a round pads its chunks to.
    pub fn longest(&self) -> usize {
        self.chunks.iter().map(Chunk::len).max().unwrap_or(0)
    }

    /// Whether the weights take an AdamW step: a chunk with a loss, or a one-token chunk stepped
    /// with zero gradient (a step of one-token chunks left out takes none).
    pub fn updates(&self) -> bool {
        self.chunks.iter().any(|c| !matches!(c, Chunk::Skipped))
    }

    /// Its one-token chunks left out (`ShortChunks::Skip`).
    pub fn skipped_short(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| matches!(c, Chunk::Skipped))
            .count()
    }

    /// What it got when known without the device (no chunk with a loss): a zero-gradient step,
    /// or none.
    fn known(&self) -> Option<ChunkStep> {
        if self.chunks.iter().any(|c| matches!(c, Chunk::Tokens(_))) {
            None
        } else if self.updates() {
            Some(ChunkStep::ZeroGrad)
        } else {
            Some(ChunkStep::SkippedShort)
        }
    }
}

/// What one step got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChunkStep {
    /// An AdamW step on this loss.
    Trained(f64),
    /// The loss (or the gradient norm) was NaN or infinite: no step.
    NonFinite,
    /// Only one-token chunks, stepped with zero gradient (`ShortChunks::Step`).
    ZeroGrad,
    /// Only one-token chunks, left out (`ShortChunks::Skip`): no step.
    SkippedShort,
}

impl ChunkStep {
    /// A step with a loss: taken when the loss is finite.
    pub fn trained(loss: f64) -> Self {
        if loss.is_finite() {
            ChunkStep::Trained(loss)
        } else {
            ChunkStep::NonFinite
        }
    }

    /// A step with a loss as it left it on the device: its loss, and whether the update was
    /// skipped there (a non-finite loss or gradient norm).
    fn from_device(loss: f32, skipped: f32) -> Self {
        if skipped != 0.0 {
            ChunkStep::NonFinite
        } else {
            ChunkStep::trained(loss as f64)
        }
    }
}

/// What a step got, as it leaves it: known on the host, or a loss still on the device.
#[derive(Debug)]
pub enum StepOutcome {
    /// Known without the device: a zero-gradient step of one-token chunks, or none.
    Known(ChunkStep),
    /// A step with a loss: lane `lane` of its round's `[2, lanes]` fp32 output on the device
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

/// One step as a [`StepLog`] books it: what it got and the chunks it covered.
#[derive(Debug)]
struct Booked {
    outcome: StepOutcome,
    chunks: usize,
    skipped_short: usize,
}

/// The steps of one text (or of the neighbours one group of steps covers) as they are taken;
/// their losses stay on the device until [`StepLog::finish`] reads them all at once, so a text's
/// steps queue on a GPU without a host sync between them.
#[derive(Debug, Default)]
pub struct StepLog {
    tokens: usize,
    steps: Vec<Booked>,
}

impl StepLog {
    /// No step yet on a text of `tokens` tokens.
    pub fn new(tokens: usize) -> Self {
        Self {
            tokens,
            steps: Vec::new(),
        }
    }

    /// Books what `step` got.
    pub fn add(&mut self, step: &Step, outcome: StepOutcome) {
        self.steps.push(Booked {
            outcome,
            chunks: step.chunks.len(),
            skipped_short: step.skipped_short(),
        });
    }

    /// What the training did, its losses read from the device in one host sync (none when no
    /// step had a loss).
    pub fn finish(self) -> Result<TextTraining> {
        let on_device: Vec<Tensor> = self
            .steps
            .iter()
            .filter_map(|s| match &s.outcome {
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
            let got = match step.outcome {
                StepOutcome::Known(c) => c,
                StepOutcome::OnDevice { .. } => match read.next() {
                    Some(&[loss, skipped]) => ChunkStep::from_device(loss, skipped),
                    _ => unreachable!("one [loss, skipped] pair per step on the device"),
                },
            };
            out.add(got, step.chunks, step.skipped_short);
        }
        Ok(out.finish())
    }
}

/// Each set's learning rate in a round of `steps`, when a step has one of its own (`None`: every
/// set takes `config.lr`; a set without a step takes it too).
pub(crate) fn round_rates(config: &TrainConfig, steps: &[Option<&Step>]) -> Option<Vec<f64>> {
    steps
        .iter()
        .any(|s| s.is_some_and(|s| s.lr.is_some()))
        .then(|| {
            steps
                .iter()
                .map(|s| s.and_then(|s| s.lr).unwrap_or(config.lr))
                .collect()
        })
}

/// One training step of each set of `weights` on its [`Step`] (`None`: the set sits the round
/// out), for both trainers (one set, or one per lane): the chunks with a loss in one forward and
/// backward ([`graphs::train_body`], replayed from its length bucket's graph when the steps are
/// `captured`, else run on buffers of the round's longest chunk and most chunks per set), then
/// one AdamW step per stepping set at its step's learning rate, a non-finite loss or gradient
/// norm skipped on the device. Nothing is read back: the losses stay on the device in the
/// returned round.
fn train_round(
    weights: &mut FlatWeights,
    opt: &mut AdamW,
    config: &TrainConfig,
    captured: Option<&mut graphs::GraphedSteps>,
    lm: &LanguageModel,
    steps: &[Option<&Step>],
) -> Result<LaneRound> {
    assert_eq!(
        steps.len(),
        opt.sets(),
        "one step (or none) per set of weights"
    );
    let inputs: Vec<graphs::LaneInput> = steps.iter().map(|s| graphs::LaneInput::of(*s)).collect();
    let lr = round_rates(config, steps);
    let dropout = config.dropout.on();
    let longest = inputs
        .iter()
        .flat_map(|i| i.tokens.iter().map(|t| t.len()))
        .max();
    let (out, computed_tokens) = match (longest, captured) {
        // No chunk with a loss: the zero-gradient steps of one-token chunks, if any.
        (None, _) => {
            if inputs.iter().any(|i| i.steps) {
                let skip: Vec<f32> = inputs.iter().map(|i| f32::from(!i.steps)).collect();
                weights.zero_grad();
                let skip = adamw::upload(Tensor::from_slice(&skip), lm.device())?;
                let lr = lr
                    .as_deref()
                    .map(|v| adamw::lr_tensor(v, lm.device()))
                    .transpose()?;
                // A zero gradient is finite: every stepping set steps, no flag to read.
                let _ = opt.step(weights, &skip, lr.as_ref())?;
            }
            (None, 0)
        }
        (Some(_), Some(captured)) => {
            let r = captured.step(&inputs, lr.as_deref(), &mut |b| {
                graphs::train_body(weights, opt, dropout, lm, b)
            })?;
            (Some(r.out), steps.len() * r.rows * r.bucket_len)
        }
        (Some(len), None) => {
            let rows = inputs.iter().map(|i| i.tokens.len()).max().unwrap_or(1);
            let b = graphs::StepBuffers::eager(
                &inputs,
                rows,
                len,
                lr.as_deref(),
                IGNORE_INDEX,
                lm.device(),
            )?;
            graphs::train_body(weights, opt, dropout, lm, &b)?;
            (Some(b.out), steps.len() * rows * len)
        }
    };
    let steps = steps
        .iter()
        .enumerate()
        .map(|(l, s)| {
            let s = s.as_ref()?;
            Some(match s.known() {
                Some(known) => StepOutcome::Known(known),
                None => StepOutcome::OnDevice {
                    out: out
                        .as_ref()
                        .expect("a step with tokens ran")
                        .shallow_clone(),
                    lane: l as i64,
                },
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

    /// Books one step over `chunks` chunks, `skipped_short` of them one-token chunks left out
    /// (`mean_loss` sums until [`TextTraining::finish`]).
    pub fn add(&mut self, step: ChunkStep, chunks: usize, skipped_short: usize) {
        self.chunks += chunks;
        self.skipped_short += skipped_short;
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
            ChunkStep::SkippedShort => {}
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

/// Each set's mean next-token loss (`[sets]` fp32) from `[sets·rows, t, vocab]` logits, labels
/// (`IGNORE_INDEX` where a position has no target; a set's rows are consecutive) and each set's
/// target count: the mean over every target token of the set's rows, as a padded batch's
/// causal-LM loss is. The sum's gradient in set s is set s's loss's alone, since no weight is
/// shared between sets.
fn lane_losses(logits: &Tensor, labels: &Tensor, targets: &Tensor) -> Tensor {
    let (sets, vocab) = (targets.size()[0], logits.size()[2]);
    logits
        .view([-1, vocab])
        .to_kind(Kind::Float)
        .cross_entropy_loss::<Tensor>(
            &labels.view([-1]),
            None,
            tch::Reduction::None,
            IGNORE_INDEX,
            0.0,
        )
        .view([sets, -1])
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
            let step = Step::of(chunk);
            let outcome = self.step(lm, &step)?;
            log.add(&step, outcome);
        }
        log.finish()
    }

    /// What `step` gets: one AdamW step on the mean next-token loss of its chunks (train mode),
    /// a zero-gradient step, or none; its loss stays on the device.
    pub fn step(&mut self, lm: &LanguageModel, step: &Step) -> Result<StepOutcome> {
        let round = self.round(lm, &[Some(step)])?;
        Ok(round
            .steps
            .into_iter()
            .next()
            .flatten()
            .expect("one step, one outcome"))
    }

    /// [`Trainer::step`] as a round of one slot (`None`: nothing to train), as the engine's
    /// backend calls it.
    pub fn round(&mut self, lm: &LanguageModel, steps: &[Option<&Step>]) -> Result<LaneRound> {
        let graphs = self.graphs.as_mut();
        train_round(
            &mut self.weights,
            &mut self.opt,
            &self.config,
            graphs,
            lm,
            steps,
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
            let step = Step::of(chunk.clone());
            let outcome = trainer.step(&lm, &step).unwrap();
            match (&outcome, chunk) {
                (StepOutcome::OnDevice { out, .. }, Chunk::Tokens(_)) => {
                    each.push(out.double_value(&[0, 0]));
                }
                (StepOutcome::Known(ChunkStep::ZeroGrad), Chunk::ZeroGrad) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
            log.add(&step, outcome);
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

    /// A step at a rate of its own (a schedule's) is bit for bit the step of a trainer configured
    /// with that rate: on the CPU the kernel takes the rate as the double it is. Zero-gradient
    /// steps (whose weight decay reads the rate) too.
    #[test]
    fn a_steps_own_learning_rate_is_that_rate_configured() {
        let tokens: Vec<i64> = (0..30).map(|i| (i * 37) % 200 + 3).collect();
        for rate in [3e-4, 7.5e-6] {
            let (scheduled_lm, configured_lm) = (tiny_gpt2(), tiny_gpt2());
            let mut scheduled = Trainer::new(&scheduled_lm, config()).unwrap();
            let configured_config = TrainConfig {
                lr: rate,
                ..config()
            };
            let mut configured = Trainer::new(&configured_lm, configured_config).unwrap();
            for chunk in [
                Chunk::Tokens(tokens[..24].to_vec()),
                Chunk::ZeroGrad,
                Chunk::Tokens(tokens[6..].to_vec()),
            ] {
                let own = Step {
                    chunks: vec![chunk.clone()],
                    lr: Some(rate),
                };
                scheduled.step(&scheduled_lm, &own).unwrap().read();
                configured
                    .step(&configured_lm, &Step::of(chunk))
                    .unwrap()
                    .read();
            }
            let same = scheduled
                .weights
                .master
                .eq_tensor(&configured.weights.master)
                .all()
                .int64_value(&[]);
            assert_eq!(same, 1, "rate {rate}");
            let moved = (&scheduled.weights.master - &scheduled.weights.pretrained)
                .abs()
                .max()
                .double_value(&[]);
            assert!(moved > 0.0);
        }
    }

    /// A step of several chunks (`--neighbors-per-step`) is one AdamW step on the mean over all
    /// their target tokens, as a padded batch's causal-LM loss with ignored labels: Σ of each
    /// chunk's token losses (each computed alone) over Σ of their targets; one step counted.
    #[test]
    fn a_step_of_several_chunks_is_one_step_on_their_mean_token_loss() {
        let lm = tiny_gpt2();
        let a: Vec<i64> = (0..24).map(|i| (i * 37) % 200 + 3).collect();
        let b: Vec<i64> = (0..9).map(|i| (i * 11) % 200 + 5).collect();
        let summed = |t: &[i64]| -> f64 {
            tch::no_grad(|| {
                let n = t.len() as i64;
                let logits = lm
                    .forward(&Tensor::from_slice(t).view([1, n]), false)
                    .unwrap();
                logits
                    .get(0)
                    .narrow(0, 0, n - 1)
                    .cross_entropy_loss::<Tensor>(
                        &Tensor::from_slice(&t[1..]),
                        None,
                        tch::Reduction::Sum,
                        IGNORE_INDEX,
                        0.0,
                    )
                    .double_value(&[])
            })
        };
        let want = (summed(&a) + summed(&b)) / (a.len() - 1 + b.len() - 1) as f64;
        let mut trainer = Trainer::new(&lm, config()).unwrap();
        let step = Step {
            chunks: vec![Chunk::Tokens(a), Chunk::ZeroGrad, Chunk::Tokens(b)],
            lr: None,
        };
        let ChunkStep::Trained(got) = trainer.step(&lm, &step).unwrap().read() else {
            panic!("a finite step");
        };
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        assert_eq!(trainer.opt.steps().unwrap(), [1]);
        let mut log = StepLog::new(33);
        log.add(&step, StepOutcome::Known(ChunkStep::Trained(got)));
        let t = log.finish().unwrap();
        assert_eq!((t.chunks, t.steps, t.zero_grad_steps), (3, 1, 0));
    }

    /// The schedules are transformers' lambdas: a warm-up from 0, linear decay to 1/steps at the
    /// last step, half a cosine; restarted per document (the factor depends on the step of the
    /// document only).
    #[test]
    fn the_learning_rate_schedules_are_transformers_formulas() {
        let f = |s: LrSchedule, step, steps, warmup| s.factor(step, steps, warmup);
        assert_eq!(f(LrSchedule::Constant, 7, 10, 0), 1.0);
        assert_eq!(f(LrSchedule::Constant, 0, 10, 4), 0.0);
        assert_eq!(f(LrSchedule::Constant, 2, 10, 4), 0.5);
        assert_eq!(f(LrSchedule::Constant, 4, 10, 4), 1.0);
        assert_eq!(f(LrSchedule::Linear, 0, 10, 0), 1.0);
        assert_eq!(f(LrSchedule::Linear, 9, 10, 0), 0.1);
        assert_eq!(f(LrSchedule::Linear, 3, 10, 2), 7.0 / 8.0);
        assert_eq!(f(LrSchedule::Linear, 1, 10, 2), 0.5);
        assert_eq!(f(LrSchedule::Cosine, 0, 10, 0), 1.0);
        let half = f(LrSchedule::Cosine, 5, 10, 0);
        assert!((half - 0.5).abs() < 1e-15, "{half}");
        let want = 0.5 * (1.0 + (std::f64::consts::PI * 3.0 / 8.0).cos());
        assert_eq!(f(LrSchedule::Cosine, 5, 10, 2), want);
        // Warm-up longer than the document: transformers' max(1, steps - warmup).
        assert_eq!(f(LrSchedule::Linear, 3, 2, 5), 0.6);
        let c = TrainConfig {
            lr: 1e-3,
            lr_schedule: LrSchedule::Linear,
            ..config()
        };
        assert_eq!(c.lr_at(0, 4), Some(1e-3));
        assert_eq!(c.lr_at(3, 4), Some(1e-3 * 0.25));
        assert_eq!(
            config().lr_at(3, 4),
            None,
            "the paper's rate is the configured one"
        );
        let warm = TrainConfig {
            warmup_steps: 2,
            ..config()
        };
        assert_eq!(warm.lr_at(1, 4), Some(1e-3 * 0.5));
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
