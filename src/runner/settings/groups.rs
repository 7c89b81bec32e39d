//! The groups of settings `tttnn run` and `tttnn neighbors` share: which test documents, and how
//! their neighbours are searched. Each is flattened into both commands (`#[command(flatten)]`)
//! and into the recorded config (`#[serde(flatten)]`, the same flat keys as before), so a flag,
//! its `TTTNN_*` variable and its default are written once.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{SearchMode, DEFAULT_REFINE_FACTOR};
use crate::task::{Shard, Task, SEED};

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
}
