//! A run's settings: one struct that is at once the `tttnn run` flags (with their `TTTNN_*` env
//! vars), the `--config` TOML schema and the config JSON recorded with the run, so a setting and
//! its default are written once. Precedence: flag > env var > TOML file > default (`file.rs`).
mod checks;
mod file;
mod groups;
mod values;

pub use file::SettingsFile;
pub use groups::{NeighborSearch, Schedule, TestDocs};
pub use values::{Adapter, ContextOrder, EvalAt, LaneOrder, Lanes, Method, NeighborOrder};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::lm::{Lora, Precision};
use crate::select::{Selection, Sift, SiftPool};
use crate::store::SearchMode;
use crate::task::{Shard, Task};
use crate::ttt::{CudaGraphs, Dropout, OptimizerState, ShortChunks};
use crate::Device;

/// Every setting of a run: the `tttnn run` flags, the `--config` TOML keys (snake_case) and the
/// run's recorded config JSON, so `--resume` redoes exactly it. Defaults are the original's.
// Not `deny_unknown_fields` (serde cannot with flattened groups): `--config` files are checked
// key by key (`file.rs`) and a recorded config starts from today's settings.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
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
    /// Which test documents (shared with `tttnn neighbors`).
    #[command(flatten)]
    #[serde(flatten)]
    pub docs: TestDocs,
    /// How their neighbours are searched (shared with `tttnn neighbors`).
    #[command(flatten)]
    #[serde(flatten)]
    pub search: NeighborSearch,
    /// ttt-nn (the paper), or a baseline: in-context, interpolate, dynamic-eval, none (base model).
    #[arg(long, value_enum, env = "TTTNN_METHOD", default_value_t = Method::TttNn)]
    pub method: Method,
    /// AdamW learning rate (the paper's GPT-2 value).
    #[arg(long, env = "TTTNN_LR", default_value_t = 2e-5)]
    pub lr: f64,
    /// How each document trains on its neighbours (ttt-nn): order, passes, neighbours per step,
    /// learning-rate schedule.
    #[command(flatten)]
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Tokens per training chunk [default: the model's context length].
    #[arg(long, env = "TTTNN_MAX_LENGTH")]
    pub max_length: Option<usize>,
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
    /// Which waiting document a freed lane takes: length (the one whose chunks are closest in
    /// mean length to the other lanes' documents', less padding) or plan (the next in plan
    /// order). Results are the same either way.
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
    /// Read each document's neighbours from this table (`tttnn neighbors`) instead of searching
    /// the store; its retrieval settings must be the run's.
    #[arg(long, env = "TTTNN_NEIGHBORS_FROM")]
    pub neighbors_from: Option<PathBuf>,
    /// Record each document's retrieval quality against this exact neighbour table of the same
    /// documents (`tttnn neighbors` without --nprobes or --datastore-fraction, k at least the
    /// run's): recall@k, the neighbours shared and their rank correlation (`sql retrieval_quality`).
    #[arg(long, env = "TTTNN_EXACT_REFERENCE")]
    pub exact_reference: Option<PathBuf>,
    /// Search exactly (the paper's flat index; the default).
    #[arg(long, conflicts_with = "nprobes")]
    pub exact: bool,
    /// Where the LM runs.
    #[arg(long, value_enum, env = "TTTNN_DEVICE", default_value_t = Device::Cpu)]
    pub device: Device,
    /// fp32 (faithful), or bf16 / tf32 (faster on GPUs; departures).
    #[arg(long, value_enum, env = "TTTNN_PRECISION", default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Training steps and scoring forwards as CUDA graphs: on (each chunk length's step and each
    /// scored length's forward captured once and replayed as one launch; --device cuda) or off
    /// (libtorch launches each kernel).
    #[arg(long, value_enum, env = "TTTNN_CUDA_GRAPHS", default_value_t = CudaGraphs::Off)]
    #[serde(default)]
    pub cuda_graphs: CudaGraphs,
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
            self.search.neighbors = 0;
        }
        if self.search.no_distance_threshold {
            self.search.distance_threshold = None;
        }
        if self.exact {
            self.search.nprobes = None;
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
        self.docs.task()
    }

    /// Exact search, or the IVF-PQ index with `nprobes` and re-ranking.
    pub fn search_mode(&self) -> SearchMode {
        self.search.mode()
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
        let mut cfg = self.clone();
        cfg.docs.shard = Shard::ALL;
        cfg
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
        assert_eq!(d.search.neighbors, 50);
        assert_eq!(d.lr, 2e-5);
        assert_eq!(d.search.distance_threshold, Some(4.0));
        assert_eq!(d.search.refine_factor, crate::store::DEFAULT_REFINE_FACTOR);
        assert_eq!(d.docs.shard, Shard::ALL);
        assert_eq!(d.sift(), Sift::default());
        assert_eq!(
            (d.docs.split.as_str(), d.search.neighbor_split.as_str()),
            ("test", "train")
        );
    }

    #[test]
    fn normalisation_is_per_method_and_checked() {
        let base = RunConfig {
            docs: TestDocs {
                task: Some(Task::All),
                ..RunConfig::default().docs
            },
            store: Some("s".into()),
            model: Some("m".into()),
            ..RunConfig::default()
        };
        let none = RunConfig {
            search: NeighborSearch {
                no_distance_threshold: true,
                ..base.clone().search
            },
            method: Method::None,
            ..base.clone()
        }
        .normalized()
        .unwrap();
        assert_eq!(
            (none.search.neighbors, none.search.distance_threshold),
            (0, None)
        );
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
            search: NeighborSearch {
                neighbors: 20,
                ..base.clone().search
            },
            method: Method::DynamicEval,
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
