//! What computes a run's steps: the engine (`engine.rs`) hands a backend one step per document
//! slot and books what comes back.
//!
//! - `Scoring`: the methods that never train (in-context, interpolate, none) score on the model's
//!   own weights: no trainer, no flat buffers, no AdamW state.
//! - `Single`: one document at a time on the model's own (unlaned) weights and kernels. Its records
//!   were bit-identical to the original engine's on the CPU when the engine was gated (907cc18);
//!   since then the fused AdamW moves weights within 1.2e-7 of the per-tensor formulas, and each
//!   later change to the step was gated the same way (04acf01). On CUDA, SDPA's backward is not
//!   deterministic.
//! - `Lanes`: L documents per step, each in its own lane with its own weights and AdamW state
//!   (`ttt::LaneTrainer`); `--lanes 1` is the single backend, never one lane.
use std::path::Path;

use super::event::Event;
use super::settings::{Lanes, RunConfig};
use crate::error::{Error, Result};
use crate::eval::{self, Window};
use crate::lm::LanguageModel;
use crate::ttt::{LanePlan, LaneRound, LaneTrainer, OptimizerState, Step, TrainConfig, Trainer};

/// The backend a run's steps go to.
pub(super) enum Backend {
    /// No training: the model's own weights score.
    Scoring,
    /// One document at a time.
    Single(Trainer),
    /// L documents at a time.
    Lanes(LaneTrainer),
}

/// The optimizer settings of a run of `lm` under `cfg`.
pub(super) fn train_config(cfg: &RunConfig, lm: &LanguageModel) -> TrainConfig {
    TrainConfig {
        lr: cfg.lr,
        max_length: cfg.max_length.unwrap_or(lm.n_ctx),
        precision: cfg.precision,
        short_chunks: cfg.short_chunks,
        dropout: cfg.dropout,
        cuda_graphs: cfg.cuda_graphs,
        lr_schedule: cfg.schedule.lr_schedule,
        warmup_steps: cfg.schedule.warmup_steps,
        neighbors_per_step: cfg.schedule.neighbors_per_step,
        ..Default::default()
    }
}

impl Backend {
    /// The backend `cfg` asks for: lanes are planned against the device's memory (reported as
    /// [`Event::Planned`]) and a plan of one lane is the single backend.
    pub fn new(
        cfg: &RunConfig,
        lm: &mut LanguageModel,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Self> {
        if !cfg.method.trains() {
            // Evaluation alone runs in the run's precision on the model's own weights.
            lm.set_precision(cfg.precision)?;
            return Ok(Backend::Scoring);
        }
        // The trainer moves the fp32 weights into flat buffers; bf16 is mixed precision.
        let train = train_config(cfg, lm);
        if train.max_length > lm.n_ctx {
            // Positions past the model's context have no embedding (GPT-2's learned positions).
            return Err(Error::setting(
                "max_length",
                format!(
                    "{} tokens per chunk exceed the {}-token context of {}",
                    train.max_length,
                    lm.n_ctx,
                    lm.dir.join("config.json").display()
                ),
            ));
        }
        if !cfg.lanes.many() {
            return Ok(Backend::Single(Trainer::new(lm, train)?));
        }
        if cfg.dropout.on() && lm.dropout > 0.0 {
            // Each lane would need its own document's stream of masks, drawn as a run of one
            // document at a time draws them; one batched draw cannot give that.
            return Err(Error::setting(
                "dropout",
                format!(
                    "{} trains with dropout {} and lanes cannot draw each document's masks as \
                     a run without lanes does: give --dropout off (a departure) or --lanes 1",
                    lm.dir.join("config.json").display(),
                    lm.dropout
                ),
            ));
        }
        let asked = match cfg.lanes {
            Lanes::Fixed(n) => Some(n),
            Lanes::Auto => None,
        };
        let budget = match cfg.memory_gib {
            Some(gib) => Some((gib * (1u64 << 30) as f64) as u64),
            None => cfg.device.memory_bytes(),
        };
        let plan = LanePlan::new(lm, &train, asked, budget)?;
        on_event(Event::Planned { plan: &plan });
        Ok(if plan.lanes > 1 {
            Backend::Lanes(LaneTrainer::new(lm, train, plan.lanes)?)
        } else {
            Backend::Single(Trainer::new(lm, train)?)
        })
    }

    /// Documents worked on at once.
    pub fn lanes(&self) -> usize {
        match self {
            Backend::Scoring | Backend::Single(_) => 1,
            Backend::Lanes(l) => l.lanes(),
        }
    }

    /// Σ log p(target) of each slot's window (`None`: the slot scores nothing this round).
    pub fn score(
        &mut self,
        lm: &LanguageModel,
        windows: &[Option<&Window>],
    ) -> Result<Vec<Option<f64>>> {
        // With --cuda-graphs on, the trainer's captured forward scores.
        let graphs = match self {
            Backend::Single(t) => t.graphs_mut(),
            Backend::Lanes(l) => l.graphs_mut(),
            Backend::Scoring => None,
        };
        if let Some(g) = graphs {
            return g.score_windows(lm, windows);
        }
        match self {
            Backend::Lanes(_) => eval::score_windows_in_lanes(lm, windows),
            Backend::Scoring | Backend::Single(_) => windows
                .iter()
                .map(|w| w.map(|w| eval::score_window(lm, w)).transpose())
                .collect(),
        }
    }

    /// One training step of each slot (`None`: the slot trains nothing this round).
    pub fn train(&mut self, lm: &LanguageModel, steps: &[Option<&Step>]) -> Result<LaneRound> {
        match self {
            Backend::Lanes(lanes) => lanes.step(lm, steps),
            Backend::Single(trainer) => trainer.round(lm, steps),
            Backend::Scoring => Err(Error::internal("a method without training planned a chunk")),
        }
    }

    /// A task starts: the original builds a new AdamW per task (a new TTTLM each), so state
    /// carries only within a task.
    pub fn start_task(&mut self) {
        if let Backend::Single(trainer) = self {
            trainer.reset_optimizer();
        }
    }

    /// The document in `slot` is done: pretrained weights again, and AdamW state as `policy`
    /// says (lanes always start fresh: they never carry).
    pub fn finish_document(&mut self, slot: usize, policy: OptimizerState) {
        match self {
            Backend::Scoring => {}
            Backend::Single(trainer) => trainer.finish_document(policy),
            Backend::Lanes(lanes) => lanes.reset_lane(slot),
        }
    }

    /// Writes the AdamW state a run carries to the next document, tagged with the `seq` of the
    /// last document it has seen.
    pub fn save_optimizer(&self, path: &Path, seq: i64) -> Result<()> {
        match self {
            Backend::Single(trainer) => trainer.save_optimizer(path, seq),
            Backend::Lanes(lanes) => lanes.save_optimizer(path, seq),
            Backend::Scoring => Ok(()),
        }
    }

    /// Restores the AdamW state saved at `path`; returns the `seq` it was saved after.
    pub fn load_optimizer(&mut self, path: &Path) -> Result<Option<i64>> {
        Ok(match self {
            Backend::Single(trainer) => Some(trainer.load_optimizer(path)?),
            Backend::Lanes(lanes) => Some(lanes.load_optimizer(path)?),
            Backend::Scoring => None,
        })
    }
}
