//! The groups of settings: which test documents and how their neighbours are searched (shared by
//! `tttnn run` and `tttnn neighbors`), and how a document trains on them (`tttnn run`). Each is
//! flattened into its commands (`#[command(flatten)]`) and into the recorded config
//! (`#[serde(flatten)]`, flat keys), so a flag, its `TTTNN_*` variable and its default are written
//! once.
use serde::{Deserialize, Serialize};

use super::values::NeighborOrder;
use crate::error::{Error, Result};
use crate::store::{DatastoreFraction, SearchMode, DEFAULT_REFINE_FACTOR};
use crate::task::{Shard, Task, SEED};
use crate::ttt::LrSchedule;

/// Which test documents, per task (docs/spec.md §3.1).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct TestDocs {
    /// lm-eval task: pile_github, pile_wikipedia, ... or pile_all for every set in the store.
    #[arg(long, env = "TTTNN_TASK")]
    pub task: Option<Task>,
    /// Split the test documents come from.
    #[arg(long, env = "TTTNN_SPLIT", default_value = "test")]
    pub split: String,
    /// Fraction of each task's shuffled test documents evaluated.
    #[arg(long, env = "TTTNN_VAL_PORTION", default_value_t = 0.2)]
    pub val_portion: f64,
    /// Seed of Python's random.Random(seed).shuffle over the test documents.
    #[arg(long, env = "TTTNN_SEED", default_value_t = SEED)]
    pub seed: u64,
    /// At most this many documents per task, from the front of the shuffled subset.
    #[arg(long, env = "TTTNN_LIMIT_DOCS")]
    pub limit_docs: Option<usize>,
    /// This worker's share I/N: documents I, I+N, I+2N, ... of each task (as the original's ranks).
    #[arg(long, env = "TTTNN_SHARD", default_value_t = Shard::ALL)]
    pub shard: Shard,
}

/// How a document's neighbours are searched.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct NeighborSearch {
    /// Neighbours per document (the paper's k; a neighbour table may hold more than a run takes).
    #[arg(long, short = 'k', env = "TTTNN_NEIGHBORS", default_value_t = 50)]
    pub neighbors: usize,
    /// Split neighbours are retrieved from (the original indexes only training documents).
    #[arg(long, env = "TTTNN_NEIGHBOR_SPLIT", default_value = "train")]
    pub neighbor_split: String,
    /// Drop neighbours farther than this unsquared L2 distance (the original's).
    #[arg(long, env = "TTTNN_DISTANCE_THRESHOLD", default_value = "4.0")]
    pub distance_threshold: Option<f32>,
    /// Keep every neighbour whatever its distance.
    #[arg(long, conflicts_with = "distance_threshold")]
    pub no_distance_threshold: bool,
    /// Search the vector index (`tttnn index`) probing this many partitions.
    #[arg(long, env = "TTTNN_NPROBES")]
    pub nprobes: Option<usize>,
    /// With --nprobes: re-rank this many times k candidates by exact distance; 0: none.
    #[arg(long, env = "TTTNN_REFINE_FACTOR", default_value_t = DEFAULT_REFINE_FACTOR)]
    pub refine_factor: u32,
    /// With --nprobes on an IVF-HNSW-SQ index: candidates visited per partition.
    #[arg(long, env = "TTTNN_EF")]
    pub ef: Option<usize>,
    /// Search only this fraction of the store (a departure, to measure how the datastore's size
    /// moves the gain): the rows whose seeded hash of their id falls below it, so a smaller
    /// fraction's rows are among a larger one's; 1: the whole store.
    #[arg(long, env = "TTTNN_DATASTORE_FRACTION", default_value_t = DatastoreFraction::WHOLE.fraction)]
    #[serde(default = "whole_store")]
    pub datastore_fraction: f64,
    /// --datastore-fraction: the seed of the hash that picks the rows.
    #[arg(long, env = "TTTNN_DATASTORE_SEED", default_value_t = DatastoreFraction::WHOLE.seed)]
    #[serde(default)]
    pub datastore_seed: u64,
}

/// The datastore fraction of runs recorded before it existed.
fn whole_store() -> f64 {
    DatastoreFraction::WHOLE.fraction
}

/// How a document trains on its neighbours: in which order, how many times over, how many per
/// step, at which learning rates (docs/runner.md, "Schedules"). Every default is the paper's
/// schedule: each neighbour once, nearest first, one AdamW step per chunk, a constant rate.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct Schedule {
    /// Order the neighbours are trained in: nearest first (the paper), farthest first, random
    /// (a permutation per document and pass, from --order-seed and the document's id), or oracle
    /// (most helpful first, as --oracle-run measured them).
    #[arg(long, value_enum, env = "TTTNN_NEIGHBOR_ORDER", default_value_t = NeighborOrder::Nearest)]
    pub neighbor_order: NeighborOrder,
    /// --neighbor-order random: the permutations' seed [default: --seed].
    #[arg(long, env = "TTTNN_ORDER_SEED")]
    pub order_seed: Option<u64>,
    /// --neighbor-order oracle: the earlier run (in the same results database, of the same
    /// documents and neighbours, evaluated after every neighbour) whose measured gains order them.
    #[arg(long, env = "TTTNN_ORACLE_RUN")]
    pub oracle_run: Option<i64>,
    /// Passes over a document's neighbours (the paper: 1); evaluation points apply within each,
    /// the curve's k counting every neighbour trained so far.
    #[arg(long, env = "TTTNN_PASSES", default_value_t = 1)]
    pub passes: usize,
    /// Neighbours per AdamW step (the paper: 1): the chunks of B consecutive neighbours in one
    /// mini-batch (the i-th step of a group takes each one's i-th chunk), one loss: the mean over
    /// all their target tokens.
    #[arg(long, env = "TTTNN_NEIGHBORS_PER_STEP", default_value_t = 1)]
    pub neighbors_per_step: usize,
    /// Learning rate over a document's planned steps, restarted per document: constant (the
    /// paper), linear or cosine decay to 0 (transformers' schedules).
    #[arg(long, value_enum, env = "TTTNN_LR_SCHEDULE", default_value_t = LrSchedule::Constant)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from 0 at the start of each document's schedule.
    #[arg(long, env = "TTTNN_WARMUP_STEPS", default_value_t = 0)]
    pub warmup_steps: usize,
}

impl Schedule {
    /// Whether this is the paper's schedule.
    pub fn is_paper(&self) -> bool {
        self.neighbor_order == NeighborOrder::Nearest
            && self.passes == 1
            && self.neighbors_per_step == 1
            && self.lr_schedule == LrSchedule::Constant
            && self.warmup_steps == 0
    }
}

impl TestDocs {
    /// The task (a required setting).
    pub fn task(&self) -> Result<&Task> {
        self.task.as_ref().ok_or_else(|| {
            Error::setting(
                "task",
                "missing: give --task (`tttnn run`: or set it in --config)",
            )
        })
    }
}

impl NeighborSearch {
    /// The distance threshold as given (`None`: `--no-distance-threshold`).
    pub fn max_distance(&self) -> Option<f32> {
        self.distance_threshold
            .filter(|_| !self.no_distance_threshold)
    }

    /// Exact search, or the vector index with `nprobes` and re-ranking.
    pub fn mode(&self) -> SearchMode {
        SearchMode::new(self.nprobes, self.refine_factor, self.ef)
    }

    /// The part of the store searched.
    pub fn datastore(&self) -> DatastoreFraction {
        DatastoreFraction {
            fraction: self.datastore_fraction,
            seed: self.datastore_seed,
        }
    }

    /// Checks the search's own settings.
    pub fn check(&self) -> Result<()> {
        self.datastore().check()
    }
}
