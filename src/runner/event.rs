//! What a run reports while it works (the CLI prints it).
use super::plan::PlannedDoc;
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
    /// Trained on one neighbour (in one of its passes: `record.k` neighbours trained so far),
    /// and evaluated after it if `bits_per_byte` is set.
    Neighbor {
        doc: &'a PlannedDoc,
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
