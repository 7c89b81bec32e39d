//! Lanes (`tttnn run --lanes L`): L test documents train at once, each in its own lane with its
//! own copy of the weights and its own AdamW state (`FlatWeights::with_lanes`). A round gives
//! every lane that has a chunk one AdamW step on it, in one batched forward and backward: the
//! chunks are padded to the longest and each lane's loss is the mean over its own targets, so its
//! gradient, its clipping and its step are exactly what training it alone gives.
use super::graphs::GraphedSteps;
use super::{AdamW, FlatWeights, Step, StepOutcome, TrainConfig};
use crate::error::{Error, Result};
use crate::lm::LanguageModel;

/// The most lanes `--lanes auto` picks.
pub const MAX_AUTO_LANES: usize = 64;

/// The memory a run in lanes needs, planned before it starts (`--lanes`, `--memory-gib`).
#[derive(Debug, Clone, PartialEq)]
pub struct LanePlan {
    /// Lanes: the asked number, or the most that fit.
    pub lanes: usize,
    /// Bytes held once: the pretrained copy of what trains, and the frozen base under LoRA.
    pub shared_bytes: u64,
    /// Bytes each lane holds: its weights, gradients and AdamW moments (of what trains).
    pub lane_state_bytes: u64,
    /// Bytes each lane's step needs for its chunks (one `max_length` chunk, or
    /// `--neighbors-per-step` of them): activations kept for backward (Korthikanti et al. 2022:
    /// 34 · tokens · hidden bytes per layer in 16-bit, twice that in fp32, no attention scores as
    /// SDPA's fused kernels keep none) and the logits in the compute type plus their fp32 copy and
    /// gradient. An estimate; the state is exact.
    pub lane_activation_bytes: u64,
    /// Bytes each lane's captured steps add (`--cuda-graphs on`; 0 when off): the graphs' pool
    /// keeps the largest bucket's activations for the whole run, while the first step of a new
    /// bucket warms up on the side stream with the caching allocator's own blocks, so one more
    /// activation set than eager steps hold at their peak. An estimate, like the activations.
    pub lane_graph_bytes: u64,
    /// Tokens per chunk the activations are planned for.
    pub max_length: usize,
    /// Chunks per step the activations are planned for (`--neighbors-per-step`).
    pub chunks_per_step: usize,
    /// What the plan may use (None: unknown, so nothing is checked).
    pub budget_bytes: Option<u64>,
}

impl LanePlan {
    /// Plans `asked` lanes (None: as many as fit, at most [`MAX_AUTO_LANES`]) of `lm` trained
    /// with `config` within `budget_bytes`; refuses what does not fit.
    pub fn new(
        lm: &LanguageModel,
        config: &TrainConfig,
        asked: Option<usize>,
        budget_bytes: Option<u64>,
    ) -> Result<Self> {
        let (mut all, mut trained) = (0u64, 0u64);
        for t in lm.var_store().variables().values() {
            all += t.numel() as u64;
            if t.requires_grad() {
                trained += t.numel() as u64;
            }
        }
        let compute_bytes: u64 = match config.precision {
            crate::lm::Precision::Bf16 => 2,
            _ => 4,
        };
        // Frozen weights (LoRA's base) in the compute type; the pretrained copy in fp32.
        let shared_bytes = (all - trained) * compute_bytes + trained * 4;
        // fp32 weights (masters), gradients, two moments; bf16 has bf16 working weights and
        // gradients instead of fp32 gradients: the same 16 bytes.
        let lane_state_bytes = 16 * trained;
        // A step of B chunks holds B chunks' activations at once.
        let chunks_per_step = config.neighbors_per_step.max(1);
        let (t, h, v) = (
            (config.max_length * chunks_per_step) as u64,
            lm.hidden as u64,
            lm.vocab_size as u64,
        );
        let lane_activation_bytes =
            lm.n_layer as u64 * 34 * t * h * compute_bytes / 2 + t * v * (compute_bytes + 8);
        // The largest bucket is `max_length` itself (graphs::bucket_lengths).
        let lane_graph_bytes = match config.cuda_graphs {
            super::CudaGraphs::On => lane_activation_bytes,
            super::CudaGraphs::Off => 0,
        };
        let per_lane = lane_state_bytes + lane_activation_bytes + lane_graph_bytes;
        let fits = |lanes: u64| budget_bytes.is_none_or(|b| shared_bytes + lanes * per_lane <= b);
        let lanes = match asked {
            Some(n) => n,
            None => {
                if budget_bytes.is_none() {
                    return Err(Error::setting(
                        "lanes",
                        "auto needs the device's memory, which could not be read: give \
                         --memory-gib or a number of lanes",
                    ));
                }
                (1..=MAX_AUTO_LANES as u64)
                    .take_while(|&l| fits(l))
                    .last()
                    .unwrap_or(0) as usize
            }
        };
        let plan = LanePlan {
            lanes,
            shared_bytes,
            lane_state_bytes,
            lane_activation_bytes,
            lane_graph_bytes,
            max_length: config.max_length,
            chunks_per_step,
            budget_bytes,
        };
        if lanes == 0 || !fits(lanes as u64) {
            return Err(Error::setting(
                "lanes",
                format!(
                    "{} does not fit: {plan}. Fewer lanes, --adapter lora, a shorter \
                     --max-length or --precision bf16 need less; --memory-gib sets the budget",
                    if lanes == 0 {
                        "even one lane".to_string()
                    } else {
                        format!("{lanes} lanes")
                    },
                ),
            ));
        }
        Ok(plan)
    }

    /// Bytes the plan uses in all.
    pub fn total_bytes(&self) -> u64 {
        self.shared_bytes
            + self.lanes as u64
                * (self.lane_state_bytes + self.lane_activation_bytes + self.lane_graph_bytes)
    }
}

/// `bytes` in GiB, or MiB below one GiB.
fn human(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.1} MiB", gib * 1024.0)
    }
}

impl std::fmt::Display for LanePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lanes need {} ({} shared + per lane {} of weights, gradients and AdamW state \
             and {} of activations for {})",
            self.lanes,
            human(self.total_bytes()),
            human(self.shared_bytes),
            human(self.lane_state_bytes),
            human(self.lane_activation_bytes),
            match self.chunks_per_step {
                1 => format!("a {}-token chunk", self.max_length),
                n => format!("{n} {}-token chunks", self.max_length),
            }
        )?;
        if self.lane_graph_bytes > 0 {
            write!(
                f,
                ", with {} more per lane for CUDA graphs",
                human(self.lane_graph_bytes)
            )?;
        }
        match self.budget_bytes {
            Some(b) => write!(f, " of {}", human(b)),
            None => write!(f, " (device memory unknown: not checked)"),
        }
    }
}

/// The weights and AdamW states of L lanes.
pub struct LaneTrainer {
    weights: FlatWeights,
    opt: AdamW,
    config: TrainConfig,
    /// The captured rounds, with `--cuda-graphs on`.
    graphs: Option<GraphedSteps>,
}

/// What one round of the lanes did (of the single trainer: one lane), its losses on the device.
#[derive(Debug)]
pub struct LaneRound {
    /// What each lane's chunk got (`None`: the lane sat the round out).
    pub steps: Vec<Option<StepOutcome>>,
    /// Token positions the round's forward and backward computed: every lane, idle or not,
    /// padded to the longest chunk (0 when no chunk had a loss).
    pub computed_tokens: usize,
}

impl LaneTrainer {
    /// Moves `lm`'s weights into `lanes` copies (each pretrained) and fresh AdamW states; from
    /// then on `lm` is laid out for `lanes` lanes (`lm::Layout`) and computes lane by lane.
    pub fn new(lm: &mut LanguageModel, config: TrainConfig, lanes: usize) -> Result<Self> {
        let weights = FlatWeights::with_lanes(lm, config.precision, lanes)?;
        let opt = AdamW::new(&weights, config);
        let graphs = GraphedSteps::for_config(&config, lm, lanes)?;
        Ok(Self {
            weights,
            opt,
            config,
            graphs,
        })
    }

    /// Number of lanes.
    pub fn lanes(&self) -> usize {
        self.weights.lanes()
    }

    /// Starts a new document in `lane`: pretrained weights, fresh AdamW state.
    pub fn reset_lane(&mut self, lane: usize) {
        self.weights.reset_lane(lane);
        self.opt.reset_lane(lane);
    }

    /// Writes every lane's AdamW state (moments and step counts) and `tag` to `path`.
    pub fn save_optimizer(&self, path: &std::path::Path, tag: i64) -> Result<()> {
        self.opt.save(&self.weights, path, tag)
    }

    /// Restores every lane's AdamW state from `path`; returns the tag saved with it.
    pub fn load_optimizer(&mut self, path: &std::path::Path) -> Result<i64> {
        self.opt.load(&self.weights, path)
    }

    /// One round: lane `l` takes `steps[l]` (one step, or `None` to sit the round out), the
    /// chunks with a loss in one batched forward and backward, then one AdamW step per stepping
    /// lane; the losses stay on the device.
    pub fn step(&mut self, lm: &LanguageModel, steps: &[Option<&Step>]) -> Result<LaneRound> {
        let graphs = self.graphs.as_mut();
        super::train_round(
            &mut self.weights,
            &mut self.opt,
            &self.config,
            graphs,
            lm,
            steps,
        )
    }

    /// The captured steps and scoring forwards, with `--cuda-graphs on`.
    pub(crate) fn graphs_mut(&mut self) -> Option<&mut super::graphs::GraphedSteps> {
        self.graphs.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ttt::Trainer;
    use crate::Device;
    use tch::{Kind, Tensor};

    fn fixture(name: &str) -> LanguageModel {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name);
        LanguageModel::load(&dir, Device::Cpu).unwrap()
    }

    fn weights(lm: &LanguageModel, lane: Option<i64>) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = lm
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, lane.map_or_else(|| t.copy(), |l| t.get(l).copy())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The captured round's body, run on the CPU without a capture, equals the eager round: lanes
    /// of different lengths padded to a longer bucket, an idle lane, a one-token chunk's
    /// zero-gradient step, steps of two chunks padded to a bucket's rows beside steps of one,
    /// learning rates of each lane's own; each lane's weights and step counts (host and device).
    #[test]
    fn the_graph_round_equals_the_eager_round() {
        use crate::ttt::graphs::{train_body, LaneInput, StepBuffers};
        use crate::ttt::{Chunk, ChunkStep, StepOutcome, IGNORE_INDEX};
        // The paper's lr (the key bias's noise gradients, AdamW-scaled, stay small: graphs.rs).
        let config = TrainConfig {
            lr: 2e-5,
            max_length: 24,
            dropout: crate::ttt::Dropout::Off,
            ..Default::default()
        };
        let chunk = |seed: i64, n: i64| -> Chunk {
            Chunk::Tokens((0..n).map(|i| (i * 37 + seed * 11) % 200 + 3).collect())
        };
        let one = |c: Chunk| Some(Step::of(c));
        let two = |a: Chunk, b: Chunk, lr: f64| {
            Some(Step {
                chunks: vec![a, b],
                lr: Some(lr),
            })
        };
        let rounds: Vec<Vec<Option<Step>>> = vec![
            vec![one(chunk(1, 24)), one(chunk(2, 9)), one(chunk(3, 17))],
            vec![one(chunk(4, 5)), None, one(chunk(5, 24))],
            vec![one(Chunk::ZeroGrad), one(chunk(6, 12)), one(chunk(7, 2))],
            vec![
                two(chunk(8, 20), chunk(9, 7), 1e-5),
                one(chunk(10, 11)),
                two(Chunk::ZeroGrad, chunk(11, 15), 3e-5),
            ],
        ];
        let (mut eager_lm, mut body_lm) = (fixture("tiny-gpt2"), fixture("tiny-gpt2"));
        let mut eager = LaneTrainer::new(&mut eager_lm, config, 3).unwrap();
        let mut body = LaneTrainer::new(&mut body_lm, config, 3).unwrap();
        for round in &rounds {
            let steps: Vec<Option<&Step>> = round.iter().map(Option::as_ref).collect();
            let want = eager.step(&eager_lm, &steps).unwrap();
            let inputs: Vec<LaneInput> = steps.iter().map(|s| LaneInput::of(*s)).collect();
            let lr = crate::ttt::round_rates(&config, &steps);
            let device = Device::Cpu.to_tch().unwrap();
            // A bucket of two rows per lane, longer than every chunk.
            let b =
                StepBuffers::eager(&inputs, 2, 32, lr.as_deref(), IGNORE_INDEX, device).unwrap();
            train_body(&mut body.weights, &mut body.opt, false, &body_lm, &b).unwrap();
            let skipped = Vec::<f32>::try_from(b.out.get(1)).unwrap();
            let losses = Vec::<f32>::try_from(b.out.get(0)).unwrap();
            for (l, step) in want.steps.into_iter().enumerate() {
                let step = step.map(StepOutcome::read);
                assert_eq!(skipped[l] != 0.0, step.is_none(), "lane {l}");
                if let Some(ChunkStep::Trained(loss)) = step {
                    let d = (losses[l] as f64 - loss).abs();
                    assert!(
                        d <= 1e-5 * loss.abs(),
                        "lane {l}: loss {} vs {loss}",
                        losses[l]
                    );
                }
            }
        }
        for lane in 0..3 {
            let (want, got) = (
                weights(&eager_lm, Some(lane)),
                weights(&body_lm, Some(lane)),
            );
            for ((name, a), (_, b)) in want.iter().zip(&got) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d <= 1e-6, "lane {lane}: {name} differs by {d}");
            }
        }
        assert_eq!(body.opt.steps().unwrap(), eager.opt.steps().unwrap());
        assert_eq!(body.opt.steps().unwrap(), [4, 3, 4]);
        assert_eq!(
            Vec::<f32>::try_from(&body.opt.step_counts).unwrap(),
            [4.0, 3.0, 4.0]
        );
    }

    /// Three lanes with chunks of different lengths, one lane idle for a round and a one-token
    /// chunk end where training each lane's chunks alone ends, for every model family.
    #[test]
    fn each_lane_trains_as_its_document_alone() {
        let config = TrainConfig {
            lr: 1e-3,
            ..Default::default()
        };
        let chunk = |seed: i64, n: i64| -> Vec<i64> {
            (0..n).map(|i| (i * 37 + seed * 11) % 200 + 3).collect()
        };
        // rounds[r][l]: lane l's chunk in round r.
        let rounds: Vec<Vec<Option<Vec<i64>>>> = vec![
            vec![Some(chunk(1, 24)), Some(chunk(2, 9)), Some(chunk(3, 17))],
            vec![Some(chunk(4, 5)), None, Some(chunk(5, 24))],
            vec![Some(vec![7]), Some(chunk(6, 12)), Some(chunk(7, 2))],
        ];
        for family in ["tiny-gpt2", "tiny-gptneo", "tiny-llama", "tiny-qwen2"] {
            let mut lm = fixture(family);
            let mut lanes = LaneTrainer::new(&mut lm, config, 3).unwrap();
            for round in &rounds {
                let cut: Vec<Option<Step>> = round
                    .iter()
                    .map(|c| {
                        c.as_ref()
                            .map(|c| Step::of(crate::ttt::chunks(c, &config).remove(0)))
                    })
                    .collect();
                let steps: Vec<Option<&Step>> = cut.iter().map(Option::as_ref).collect();
                lanes.step(&lm, &steps).unwrap();
            }
            for lane in 0..3 {
                let alone = fixture(family);
                let mut trainer = Trainer::new(&alone, config).unwrap();
                for round in &rounds {
                    if let Some(c) = &round[lane] {
                        trainer.train_on_tokens(&alone, c).unwrap();
                    }
                }
                let (want, got) = (weights(&alone, None), weights(&lm, Some(lane as i64)));
                assert_eq!(want.len(), got.len());
                let mut worst = 0.0f64;
                for ((name, a), (_, b)) in want.iter().zip(&got) {
                    // Batched and single matmuls sum in different orders; AdamW's normalised
                    // steps (≈ lr each) turn that rounding into ~1e-6 here. A wrong lane would be
                    // off by a whole step.
                    let d = (a - b).abs().max().double_value(&[]);
                    assert!(d <= 1e-5, "{family} lane {lane} {name}: differs by {d}");
                    worst = worst.max(d);
                }
                eprintln!("{family} lane {lane}: largest difference {worst:.2e}");
            }
            // A reset lane is pretrained again.
            lanes.reset_lane(1);
            let pretrained = weights(&fixture(family), None);
            for ((name, a), (_, b)) in pretrained.iter().zip(&weights(&lm, Some(1))) {
                assert_eq!(
                    a.ne_tensor(b).sum(Kind::Int64).int64_value(&[]),
                    0,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn a_laned_model_refuses_other_batches_and_its_checkpoint_keeps_each_lanes_steps() {
        let config = TrainConfig {
            lr: 1e-3,
            ..Default::default()
        };
        let mut lm = fixture("tiny-gpt2");
        let mut lanes = LaneTrainer::new(&mut lm, config, 2).unwrap();
        assert_eq!(lm.layout(), crate::lm::Layout::Lanes(2));
        // One sequence through two lanes' weights: an error, not a broadcast.
        let one = Tensor::from_slice(&[5i64, 6, 7]).unsqueeze(0);
        let err = lm.forward(&one, false).unwrap_err().to_string();
        assert!(
            err.contains("a batch of 1 sequences") && err.contains("2 lanes"),
            "{err}"
        );
        assert!(
            Trainer::new(&lm, config).is_err(),
            "one set over laned weights"
        );
        // Lane 0 steps twice, lane 1 once.
        let a = Step::of(crate::ttt::Chunk::Tokens(vec![5, 6, 7, 8]));
        lanes.step(&lm, &[Some(&a), Some(&a)]).unwrap();
        lanes.step(&lm, &[Some(&a), None]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        lanes.save_optimizer(&path, 41).unwrap();
        let mut fresh_lm = fixture("tiny-gpt2");
        let mut fresh = LaneTrainer::new(&mut fresh_lm, config, 2).unwrap();
        assert_eq!(fresh.load_optimizer(&path).unwrap(), 41);
        assert_eq!(fresh.opt.steps().unwrap(), [2, 1]);
        assert_eq!(
            (&fresh.opt.exp_avg - &lanes.opt.exp_avg)
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
        let mut three_lm = fixture("tiny-gpt2");
        let mut three = LaneTrainer::new(&mut three_lm, config, 3).unwrap();
        let err = three.load_optimizer(&path).unwrap_err().to_string();
        assert!(
            err.contains("saved for 2 set(s)") && err.contains("has 3"),
            "{err}"
        );
    }

    #[test]
    fn the_memory_plan_fits_lanes_to_the_budget_and_lora_fits_more() {
        let config = TrainConfig {
            max_length: 64,
            ..Default::default()
        };
        let lm = fixture("tiny-gpt2");
        let one = LanePlan::new(&lm, &config, Some(1), None).unwrap();
        let per_lane = one.lane_state_bytes + one.lane_activation_bytes;
        let params: u64 = lm
            .var_store()
            .variables()
            .values()
            .map(|t| t.numel() as u64)
            .sum();
        assert_eq!(
            one.lane_state_bytes,
            16 * params,
            "weights, gradients, two moments"
        );
        assert_eq!(one.shared_bytes, 4 * params, "the pretrained copy");
        let budget = one.shared_bytes + 5 * per_lane + per_lane / 2;
        let auto = LanePlan::new(&lm, &config, None, Some(budget)).unwrap();
        assert_eq!(auto.lanes, 5);
        assert!(LanePlan::new(&lm, &config, Some(5), Some(budget)).is_ok());
        let err = LanePlan::new(&lm, &config, Some(6), Some(budget))
            .unwrap_err()
            .to_string();
        assert!(err.contains("6 lanes does not fit"), "{err}");
        let err = LanePlan::new(&lm, &config, None, Some(one.shared_bytes))
            .unwrap_err()
            .to_string();
        assert!(err.contains("even one lane"), "{err}");

        let lora = crate::lm::Lora {
            rank: 4,
            alpha: 8.0,
            targets: Vec::new(),
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/tiny-gpt2");
        let adapted = LanguageModel::load_with(&dir, Device::Cpu, Some(&lora)).unwrap();
        let plan = LanePlan::new(&adapted, &config, None, Some(budget)).unwrap();
        assert!(plan.lane_state_bytes < one.lane_state_bytes / 4, "{plan}");
        assert!(plan.lanes > 5, "{plan}");
    }

    #[test]
    fn cuda_graphs_plan_one_more_activation_set_per_lane() {
        let eager = TrainConfig {
            max_length: 64,
            ..Default::default()
        };
        let graphed = TrainConfig {
            cuda_graphs: super::super::CudaGraphs::On,
            ..eager
        };
        let lm = fixture("tiny-gpt2");
        let one = LanePlan::new(&lm, &eager, Some(1), None).unwrap();
        assert_eq!(one.lane_graph_bytes, 0);
        let g = LanePlan::new(&lm, &graphed, Some(1), None).unwrap();
        assert_eq!(g.lane_graph_bytes, g.lane_activation_bytes);
        assert_eq!(
            g.total_bytes(),
            one.total_bytes() + one.lane_activation_bytes
        );
        assert!(
            g.to_string().contains("more per lane for CUDA graphs"),
            "{g}"
        );
        // A budget of five eager lanes holds fewer graphed ones.
        let per_lane = one.lane_state_bytes + one.lane_activation_bytes;
        let budget = one.shared_bytes + 5 * per_lane + per_lane / 2;
        assert_eq!(
            LanePlan::new(&lm, &eager, None, Some(budget))
                .unwrap()
                .lanes,
            5
        );
        let fewer = LanePlan::new(&lm, &graphed, None, Some(budget)).unwrap();
        let per_graphed = per_lane + g.lane_graph_bytes;
        assert_eq!(
            fewer.lanes as u64,
            (budget - one.shared_bytes) / per_graphed
        );
        assert!(fewer.lanes < 5, "{fewer}");
    }
}
