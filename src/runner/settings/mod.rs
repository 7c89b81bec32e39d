//! A run's settings: one struct that is at once the `tttnn run` flags (with their `TTTNN_*` env
//! vars), the `--config` TOML schema and the config JSON recorded with the run, so a setting and
//! its default are written once. Precedence: flag > env var > TOML file > default (`file.rs`).
mod checks;
mod file;
mod values;

pub use file::SettingsFile;
pub use values::{Adapter, ContextOrder, EvalAt, LaneOrder, Lanes, Method};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::lm::{Lora, Precision};
use crate::select::{Selection, Sift, SiftPool};
use crate::store::{SearchMode, DEFAULT_REFINE_FACTOR};
use crate::task::{Shard, Task, SEED};
use crate::ttt::{Dropout, OptimizerState, ShortChunks};
use crate::Device;

/// Every setting of a run: the `tttnn run` flags, the `--config` TOML keys (snake_case) and the
/// run's recorded config JSON, so `--resume` redoes exactly it. Defaults are the original's.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Name for the run.
    #[arg(long, env = "TTTNN_NAME")]
    pub name: Option<String>,
    /// LanceDB corpus store (from `tttnn ingest`), holding train and test documents.
    #[arg(long, env = "TTTNN_STORE")]
    pub store: Option<PathBuf>,
    /// Encoder directory the store was embedded with (its dimension is checked).
    #[arg(long, env = "TTTNN_ENCODER")]
    pub encoder: Option<PathBuf>,
    /// HF model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "TTTNN_MODEL")]
    pub model: Option<PathBuf>,
    /// lm-eval task: pile_github, pile_wikipedia, ... or pile_all for every set in the store.
    #[arg(long, env = "TTTNN_TASK")]
    pub task: Option<Task>,
    /// ttt-nn (the paper), or a baseline: in-context, interpolate, dynamic-eval, none (base model).
    #[arg(long, value_enum, env = "TTTNN_METHOD", default_value_t = Method::TttNn)]
    pub method: Method,
    /// Neighbours to train on per document (the paper's k).
    #[arg(long, short = 'k', env = "TTTNN_NEIGHBORS", default_value_t = 50)]
    pub neighbors: usize,
    /// AdamW learning rate (the paper's GPT-2 value).
    #[arg(long, env = "TTTNN_LR", default_value_t = 2e-5)]
    pub lr: f64,
    /// Tokens per training chunk [default: the model's context length].
    #[arg(long, env = "TTTNN_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Split the test documents come from.
    #[arg(long, env = "TTTNN_SPLIT", default_value = "test")]
    pub split: String,
    /// Split neighbours are retrieved from (the original indexes only training documents).
    #[arg(long, env = "TTTNN_NEIGHBOR_SPLIT", default_value = "train")]
    pub neighbor_split: String,
    /// Fraction of each task's shuffled test documents evaluated.
    #[arg(long, env = "TTTNN_VAL_PORTION", default_value_t = 0.2)]
    pub val_portion: f64,
    /// Seed of Python's random.Random(seed).shuffle over the test documents.
    #[arg(long, env = "TTTNN_SEED", default_value_t = SEED)]
    pub seed: u64,
    /// Evaluate after every neighbour (`all`) or only after these counts, e.g. 1,2,5,10,20,50.
    #[arg(long, env = "TTTNN_EVAL_AT", default_value_t = EvalAt::All)]
    pub eval_at: EvalAt,
    /// AdamW state across documents of a task: carry (the original) or reset (order-independent).
    #[arg(long, value_enum, env = "TTTNN_OPTIMIZER_STATE", default_value_t = OptimizerState::Carry)]
    pub optimizer_state: OptimizerState,
    /// One-token chunks: step (the original: an AdamW step with zero gradient) or skip.
    #[arg(long, value_enum, env = "TTTNN_SHORT_CHUNKS", default_value_t = ShortChunks::Step)]
    pub short_chunks: ShortChunks,
    /// Dropout while training: model (as its config.json sets it, the original) or off (a
    /// departure; lets a model with dropout train in lanes).
    #[arg(long, value_enum, env = "TTTNN_DROPOUT", default_value_t = Dropout::Model)]
    pub dropout: Dropout,
    /// Test documents trained at once, each with its own weights and AdamW state (ttt-nn and
    /// dynamic-eval, with --optimizer-state reset): a number (1: one after another), or auto (as
    /// many as the memory plan fits).
    #[arg(long, env = "TTTNN_LANES", default_value_t = Lanes::Fixed(1))]
    pub lanes: Lanes,
    /// Which waiting document a freed lane takes: length (the one whose next chunk is closest
    /// in length to the other lanes', less padding) or plan (the next in plan order). Results
    /// are the same either way.
    #[arg(long, value_enum, env = "TTTNN_LANE_ORDER", default_value_t = LaneOrder::Length)]
    pub lane_order: LaneOrder,
    /// Memory (GiB) the lanes' memory plan may use [default: the device's: available RAM on the
    /// CPU, the GPU's memory on CUDA].
    #[arg(long, env = "TTTNN_MEMORY_GIB")]
    pub memory_gib: Option<f64>,
    /// What TTT trains: full (every weight, the paper) or lora (per-document adapters on a frozen
    /// base; a departure).
    #[arg(long, value_enum, env = "TTTNN_ADAPTER", default_value_t = Adapter::Full)]
    pub adapter: Adapter,
    /// --adapter lora: the adapters' rank r.
    #[arg(long, env = "TTTNN_LORA_RANK", default_value_t = 8)]
    pub lora_rank: i64,
    /// --adapter lora: α (updates are scaled by α / r; PEFT's default).
    #[arg(long, env = "TTTNN_LORA_ALPHA", default_value_t = 8.0)]
    pub lora_alpha: f64,
    /// --adapter lora: the linear layers adapted, e.g. q_proj,v_proj [default: PEFT's for the
    /// model type: c_attn for GPT-2, q_proj,v_proj otherwise].
    #[arg(long, env = "TTTNN_LORA_TARGETS", value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// dynamic-eval: the pass table1 reports (the original's script reports pass 6 of its 20;
    /// later passes overfit the prefix).
    #[arg(long, env = "TTTNN_DYNAMIC_EVAL_PASS", default_value_t = 6)]
    pub dynamic_eval_pass: usize,
    /// Drop neighbours farther than this unsquared L2 distance (the original's).
    #[arg(long, env = "TTTNN_DISTANCE_THRESHOLD", default_value = "4.0")]
    pub distance_threshold: Option<f32>,
    /// Keep every neighbour whatever its distance.
    #[arg(long, conflicts_with = "distance_threshold")]
    pub no_distance_threshold: bool,
    /// Read each document's neighbours from this table (`tttnn neighbors`) instead of searching
    /// the store; its retrieval settings must be the run's.
    #[arg(long, env = "TTTNN_NEIGHBORS_FROM")]
    pub neighbors_from: Option<PathBuf>,
    /// Search exactly (the paper's flat index; the default).
    #[arg(long, conflicts_with = "nprobes")]
    pub exact: bool,
    /// Search the vector index (`tttnn index`) probing this many partitions.
    #[arg(long, env = "TTTNN_NPROBES")]
    pub nprobes: Option<usize>,
    /// With --nprobes: re-rank this many times k candidates by exact distance; 0: none.
    #[arg(long, env = "TTTNN_REFINE_FACTOR", default_value_t = DEFAULT_REFINE_FACTOR)]
    pub refine_factor: u32,
    /// With --nprobes on an IVF-HNSW-SQ index: candidates visited per partition.
    #[arg(long, env = "TTTNN_EF")]
    pub ef: Option<usize>,
    /// At most this many documents per task, from the front of the shuffled subset.
    #[arg(long, env = "TTTNN_LIMIT_DOCS")]
    pub limit_docs: Option<usize>,
    /// This worker's share I/N: documents I, I+N, I+2N, ... of each task (as the original's ranks).
    #[arg(long, env = "TTTNN_SHARD", default_value_t = Shard::ALL)]
    pub shard: Shard,
    /// Where the LM runs.
    #[arg(long, value_enum, env = "TTTNN_DEVICE", default_value_t = Device::Cpu)]
    pub device: Device,
    /// fp32 (faithful), or bf16 / tf32 (faster on GPUs; departures).
    #[arg(long, value_enum, env = "TTTNN_PRECISION", default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Neighbour selection: nn (nearest first, the paper) or sift (greedy variance reduction).
    #[arg(long, value_enum, env = "TTTNN_SELECT", default_value_t = Selection::Nn)]
    pub select: Selection,
    /// SIFT: nearest candidates to choose from.
    #[arg(long, env = "TTTNN_SIFT_CANDIDATES", default_value_t = 200)]
    pub sift_candidates: usize,
    /// SIFT: candidates by l2 (the nearest, through the store's search) or inner-product
    /// (activeft's rule: the largest |⟨x, q⟩| for q and −q, exact search).
    #[arg(long, value_enum, env = "TTTNN_SIFT_POOL", default_value_t = SiftPool::L2)]
    pub sift_pool: SiftPool,
    /// SIFT: noise variance λ (activeft's).
    #[arg(long, env = "TTTNN_SIFT_LAMBDA", default_value_t = 0.01)]
    pub sift_lambda: f64,
    /// Adaptive SIFT with this α: stop once σ_n > 1/(α·n).
    #[arg(long, env = "TTTNN_SIFT_ADAPTIVE")]
    pub sift_adaptive: Option<f64>,
    /// interpolate: fix α (weight of the neighbours' distribution) instead of choosing it per task.
    #[arg(long, env = "TTTNN_ALPHA")]
    pub alpha: Option<f64>,
    /// interpolate: held-out documents per task to choose α on.
    #[arg(long, env = "TTTNN_ALPHA_DOCS", default_value_t = 20)]
    pub alpha_docs: usize,
    /// in-context: nearest-last (as the paper describes) or original (the original code's tail).
    #[arg(long, value_enum, env = "TTTNN_IN_CONTEXT_ORDER", default_value_t = ContextOrder::NearestLast)]
    pub in_context_order: ContextOrder,
}

impl Default for RunConfig {
    /// The declared defaults (the `default_value`s above), with no env var or flag read.
    fn default() -> Self {
        crate::settings::declared_defaults()
    }
}

impl RunConfig {
    /// The config as recorded with the run (JSON).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::json("run settings", e))
    }

    /// The settings as a run uses them: method-specific normalisation, then checks.
    pub fn normalized(mut self) -> Result<Self> {
        // The base model alone has no neighbours; its one curve point is k = 0.
        if self.method == Method::None {
            self.neighbors = 0;
        }
        if self.no_distance_threshold {
            self.distance_threshold = None;
        }
        if self.exact {
            self.nprobes = None;
        }
        self.validate()?;
        Ok(self)
    }

    /// The corpus store (a required setting).
    pub fn store(&self) -> Result<&Path> {
        required(self.store.as_deref(), "store")
    }

    /// The model directory (a required setting).
    pub fn model(&self) -> Result<&Path> {
        required(self.model.as_deref(), "model")
    }

    /// The task (a required setting).
    pub fn task(&self) -> Result<&Task> {
        required(self.task.as_ref(), "task")
    }

    /// Exact search, or the IVF-PQ index with `nprobes` and re-ranking.
    pub fn search_mode(&self) -> SearchMode {
        SearchMode::new(self.nprobes, self.refine_factor, self.ef)
    }

    /// The LoRA adapters to train, with `--adapter lora`.
    pub fn lora(&self) -> Option<Lora> {
        (self.adapter == Adapter::Lora).then(|| Lora {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            targets: self.lora_targets.clone(),
        })
    }

    /// SIFT's λ and adaptive rule.
    pub fn sift(&self) -> Sift {
        Sift {
            lambda: self.sift_lambda,
            adaptive: self.sift_adaptive,
        }
    }

    /// These settings as another shard would have them: shards of one run differ only there.
    pub fn without_shard(&self) -> Self {
        Self {
            shard: Shard::ALL,
            ..self.clone()
        }
    }
}

fn required<'a, T: ?Sized>(value: Option<&'a T>, field: &str) -> Result<&'a T> {
    value.ok_or_else(|| {
        Error::setting(
            field,
            format!(
                "missing: give --{} (or set it in --config)",
                field.replace('_', "-")
            ),
        )
    })
}

/// The name serde gives a value (`nearest-last`, `ttt-nn`): what records and queries use.
pub(crate) fn serde_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("<{e}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_points_always_include_both_ends() {
        let e: EvalAt = "5,1,2".parse().unwrap();
        assert_eq!(e.to_string(), "1,2,5");
        assert!(e.includes(0, 7) && e.includes(2, 7) && e.includes(7, 7) && !e.includes(3, 7));
        assert!(EvalAt::All.includes(3, 7));
        assert!("1,x".parse::<EvalAt>().unwrap_err().contains("`x`"));
    }

    #[test]
    fn lanes_are_a_number_or_auto_in_flags_toml_and_records() {
        assert_eq!("4".parse::<Lanes>().unwrap(), Lanes::Fixed(4));
        assert_eq!("auto".parse::<Lanes>().unwrap(), Lanes::Auto);
        assert!("x".parse::<Lanes>().unwrap_err().contains("`x`"));
        for lanes in [Lanes::Fixed(3), Lanes::Auto] {
            let json = serde_json::to_string(&lanes).unwrap();
            assert_eq!(serde_json::from_str::<Lanes>(&json).unwrap(), lanes);
        }
        assert_eq!(serde_json::to_string(&Lanes::Fixed(3)).unwrap(), "3");
        assert_eq!(RunConfig::default().lanes, Lanes::Fixed(1));
        assert!(!RunConfig::default().lanes.many() && Lanes::Auto.many());
    }

    #[test]
    fn defaults_are_the_declared_ones() {
        let d = RunConfig::default();
        assert_eq!(d.neighbors, 50);
        assert_eq!(d.lr, 2e-5);
        assert_eq!(d.distance_threshold, Some(4.0));
        assert_eq!(d.refine_factor, DEFAULT_REFINE_FACTOR);
        assert_eq!(d.shard, Shard::ALL);
        assert_eq!(d.sift(), Sift::default());
        assert_eq!(
            (d.split.as_str(), d.neighbor_split.as_str()),
            ("test", "train")
        );
    }

    #[test]
    fn normalisation_is_per_method_and_checked() {
        let base = RunConfig {
            store: Some("s".into()),
            model: Some("m".into()),
            task: Some(Task::All),
            ..RunConfig::default()
        };
        let none = RunConfig {
            method: Method::None,
            no_distance_threshold: true,
            ..base.clone()
        }
        .normalized()
        .unwrap();
        assert_eq!((none.neighbors, none.distance_threshold), (0, None));
        let e = RunConfig {
            lr: -1.0,
            ..base.clone()
        }
        .normalized()
        .unwrap_err();
        assert!(e.to_string().contains("`lr`"), "{e}");
        let e = RunConfig {
            model: None,
            ..base.clone()
        }
        .normalized()
        .unwrap_err();
        assert!(e.to_string().contains("give --model"), "{e}");
        let dynamic = RunConfig {
            method: Method::DynamicEval,
            neighbors: 20,
            ..base.clone()
        };
        assert_eq!(dynamic.clone().normalized().unwrap().dynamic_eval_pass, 6);
        let e = RunConfig {
            eval_at: "1,20".parse().unwrap(),
            ..dynamic.clone()
        }
        .normalized()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("reports pass 6: add it to --eval-at"),
            "{e}"
        );
        let e = RunConfig {
            dynamic_eval_pass: 0,
            ..dynamic
        }
        .normalized()
        .unwrap_err();
        assert!(e.to_string().contains("`dynamic_eval_pass`"), "{e}");
        assert_eq!(serde_name(&ContextOrder::NearestLast), "nearest-last");
        assert_eq!(serde_name(&Method::TttNn), "ttt-nn");
    }
}
