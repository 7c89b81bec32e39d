//! One TTT-NN run, as the original's `eval_tttlm.py` does it (docs/spec.md §2–§3), recorded in
//! DuckDB. The runner reads top-down, each file importing only from those below it:
//!
//! 1. [`settings`] (one struct from flag to record), [`plan`] (each task's test documents),
//!    `event.rs` (what a run reports);
//! 2. `retrieve.rs`: a document's text and neighbours; [`neighbors`] computes neighbour tables a
//!    run can read instead of searching;
//! 3. `outcome.rs` (what a document produced), the methods' scoring (`in_context.rs`,
//!    `interpolate.rs`);
//! 4. `work.rs`: a document's work, planned once for every method (the pass list and the rule
//!    that says whether a document counts);
//! 5. `backend.rs` (scoring, single, lanes) and `engine.rs`: the one loop that runs plans;
//! 6. `session.rs`: the run's lifecycle — create or resume it, run the engine, record each
//!    document in one transaction (a killed run resumes where it stopped);
//! 7. [`sweep`]: a grid of runs from one file, sharing neighbour tables, compared at the end.
mod backend;
mod engine;
mod event;
mod in_context;
mod interpolate;
pub mod neighbors;
mod outcome;
pub mod plan;
mod retrieve;
mod session;
pub mod settings;
pub mod sweep;
mod work;

pub use event::Event;
pub use interpolate::{Alpha, AlphaSource, ALPHA_GRID, DEFAULT_ALPHA};
pub use neighbors::{NeighborsConfig, NeighborsEvent, NeighborsSummary};
pub use plan::PlannedDoc;
pub use session::run;
pub use settings::{
    Adapter, ContextOrder, EvalAt, LaneOrder, Lanes, Method, NeighborOrder, RunConfig, Schedule,
    SettingsFile,
};
