//! The cross-field rules of a run's settings: what `RunConfig::normalized` refuses, each with the
//! setting to change.
use super::{serde_name, Adapter, EvalAt, Lanes, Method, NeighborOrder, RunConfig};
use crate::error::{Error, Result};
use crate::ttt::{CudaGraphs, OptimizerState};

impl RunConfig {
    /// Checks the settings together.
    pub(super) fn validate(&self) -> Result<()> {
        self.model()?;
        self.store()?;
        self.task()?;
        self.search.check()?;
        if !(self.docs.val_portion > 0.0 && self.docs.val_portion <= 1.0) {
            return Err(Error::setting(
                "val_portion",
                format!("{} is not in (0, 1]", self.docs.val_portion),
            ));
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return Err(Error::setting(
                "lr",
                format!("{} is not a learning rate", self.lr),
            ));
        }
        if let Some(n) = self.max_length.filter(|&n| n < 2) {
            return Err(Error::setting(
                "max_length",
                format!("{n} leaves no next token to predict"),
            ));
        }
        if let Some(a) = self.alpha.filter(|a| !(0.0..=1.0).contains(a)) {
            return Err(Error::setting("alpha", format!("{a} is not in [0, 1]")));
        }
        if self.dynamic_eval_pass == 0 {
            return Err(Error::setting(
                "dynamic_eval_pass",
                "pass 0 is the base model: give a pass from 1 on",
            ));
        }
        if self.method == Method::DynamicEval
            && !self.eval_at.includes(
                self.dynamic_eval_pass.min(self.search.neighbors),
                self.search.neighbors,
            )
        {
            return Err(Error::setting(
                "eval_at",
                format!(
                    "dynamic evaluation reports pass {}: add it to --eval-at",
                    self.dynamic_eval_pass
                ),
            ));
        }
        if self.exact_reference.is_some() && !self.method.uses_neighbors() {
            return Err(Error::setting(
                "exact_reference",
                format!(
                    "{} retrieves no neighbours to compare with the exact ones",
                    serde_name(&self.method)
                ),
            ));
        }
        if self.lanes == Lanes::Fixed(0) {
            return Err(Error::setting("lanes", "give at least 1 lane"));
        }
        if let Some(m) = self.memory_gib.filter(|m| !(*m > 0.0 && m.is_finite())) {
            return Err(Error::setting(
                "memory_gib",
                format!("{m} is not an amount of memory"),
            ));
        }
        if self.lanes.many() && !self.method.trains() {
            return Err(Error::setting(
                "lanes",
                format!(
                    "lanes train several documents at once; {} does not train",
                    serde_name(&self.method)
                ),
            ));
        }
        if self.cuda_graphs == CudaGraphs::On {
            if !self.method.trains() {
                return Err(Error::setting(
                    "cuda_graphs",
                    format!(
                        "CUDA graphs capture training steps and the scoring between them; {} does not \
                         train",
                        serde_name(&self.method)
                    ),
                ));
            }
            if self.device == crate::device::Device::Cpu {
                return Err(Error::setting(
                    "cuda_graphs",
                    "--cuda-graphs on needs --device cuda (CUDA graphs capture GPU work)",
                ));
            }
        }
        if self.lanes.many() && self.optimizer_state == OptimizerState::Carry {
            // Refused rather than run with other semantics: under carry each document starts
            // from the AdamW state the previous one left, an order lanes cannot keep.
            return Err(Error::setting(
                "optimizer_state",
                "lanes cannot carry AdamW state from one document to the next, as the original \
                 does (the next document starts while the previous one still trains): give \
                 --optimizer-state reset",
            ));
        }
        if self.adapter == Adapter::Lora {
            if !self.method.trains() {
                return Err(Error::setting(
                    "adapter",
                    format!(
                        "LoRA adapters are trained; {} does not train",
                        serde_name(&self.method)
                    ),
                ));
            }
            if self.lora_rank < 1 {
                return Err(Error::setting("lora_rank", "give a rank of at least 1"));
            }
            if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
                return Err(Error::setting(
                    "lora_alpha",
                    format!("{} is not a positive scale", self.lora_alpha),
                ));
            }
        }
        if self.select.is_sift() && self.sift_candidates == 0 {
            return Err(Error::setting(
                "sift_candidates",
                "SIFT needs candidates to choose from",
            ));
        }
        self.validate_schedule()?;
        if let EvalAt::Points(p) = &self.eval_at {
            if let Some(k) = p.iter().find(|&&k| k > self.search.neighbors) {
                return Err(Error::setting(
                    "eval_at",
                    format!("{k} is more than --neighbors {}", self.search.neighbors),
                ));
            }
        }
        Ok(())
    }

    /// The schedule's rules: what each setting needs, and the methods it does not apply to
    /// (refused by name rather than ignored).
    fn validate_schedule(&self) -> Result<()> {
        let s = &self.schedule;
        if s.passes == 0 {
            return Err(Error::setting("passes", "give at least 1 pass"));
        }
        if s.neighbors_per_step == 0 {
            return Err(Error::setting(
                "neighbors_per_step",
                "give at least 1 neighbour per step",
            ));
        }
        if (s.neighbor_order == NeighborOrder::Oracle) != s.oracle_run.is_some() {
            return Err(Error::setting(
                "oracle_run",
                "--neighbor-order oracle and --oracle-run RUN go together: the oracle order is \
                 the one an earlier run's measured gains give",
            ));
        }
        if s.is_paper() {
            return Ok(());
        }
        let (field, given) = if s.neighbor_order != NeighborOrder::Nearest {
            ("neighbor_order", serde_name(&s.neighbor_order))
        } else if s.passes != 1 {
            ("passes", s.passes.to_string())
        } else if s.neighbors_per_step != 1 {
            ("neighbors_per_step", s.neighbors_per_step.to_string())
        } else if s.warmup_steps != 0 {
            ("warmup_steps", s.warmup_steps.to_string())
        } else {
            ("lr_schedule", serde_name(&s.lr_schedule))
        };
        match self.method {
            Method::TttNn => {}
            Method::DynamicEval => {
                // Its passes over the prefix are --neighbors; a learning-rate schedule applies.
                if matches!(field, "neighbor_order" | "passes" | "neighbors_per_step") {
                    return Err(Error::setting(
                        field,
                        format!(
                            "{given}: dynamic evaluation trains on the document's own prefix, \
                             one pass per --neighbors (k); neighbour order, passes and \
                             neighbours per step are ttt-nn's"
                        ),
                    ));
                }
            }
            other => {
                return Err(Error::setting(
                    field,
                    format!(
                        "{given}: a training schedule, and {} does not train",
                        serde_name(&other)
                    ),
                ))
            }
        }
        if self.sift_adaptive.is_some() && (s.passes != 1 || s.neighbors_per_step != 1) {
            // A document adaptive SIFT stops early for counts with fewer neighbours than k, its
            // curve filled to k with its last state: passes and groups would leave it holes.
            return Err(Error::setting(
                if s.passes != 1 {
                    "passes"
                } else {
                    "neighbors_per_step"
                },
                "adaptive SIFT (--sift-adaptive) trains on a varying number of neighbours: give \
                 --passes 1 and --neighbors-per-step 1, or a fixed SIFT budget",
            ));
        }
        Ok(())
    }
}
