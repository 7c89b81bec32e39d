//! One TTT-NN run, as the original's `eval_tttlm.py` does it (docs/spec.md §2–§3), recorded in
//! DuckDB: [`plan`] picks each task's test documents; the session (`session.rs`) retrieves each
//! one's neighbours, evaluates it, trains on the neighbours nearest first (evaluating after each,
//! or at `eval_at` points), resets the weights, and records the document in one transaction; a
//! killed run resumes where it stopped. The [`settings`] are one struct from flag to record; the
//! methods live in `methods.rs` and `interpolate.rs`; [`neighbors`] computes neighbour tables a
//! run can read instead of searching.
mod interpolate;
mod lanes;
mod methods;
pub mod neighbors;
pub mod plan;
mod session;
pub mod settings;

pub use interpolate::{Alpha, AlphaSource, ALPHA_GRID, DEFAULT_ALPHA};
pub use neighbors::{NeighborsConfig, NeighborsEvent, NeighborsSummary};
pub use plan::PlannedDoc;
pub use session::run;
pub use settings::{Adapter, ContextOrder, EvalAt, Lanes, Method, RunConfig, SettingsFile};

use crate::records::{DocRecord, NeighborRecord};

/// What a run reports while it works.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The plan is known: `total` documents, `done` of them already recorded.
    Started {
        run_id: i64,
        total: usize,
        done: usize,
    },
    /// The lanes' memory plan (`--lanes`), before the first document.
    Planned { plan: &'a crate::ttt::LanePlan },
    /// Trained on one neighbour (and evaluated after it if `bits_per_byte` is set).
    Neighbor {
        doc: &'a PlannedDoc,
        rank: usize,
        record: &'a NeighborRecord,
        bits_per_byte: Option<f64>,
    },
    /// A document is recorded.
    Document {
        doc: &'a PlannedDoc,
        record: &'a DocRecord,
        bpb_before: f64,
        bpb_after: f64,
    },
}
