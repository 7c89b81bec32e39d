//! The one loop every run goes through: documents are taken from the test-document plan in
//! order, each planned as `DocWork`, and their next steps handed to the backend a round at a time
//! (one slot for the scoring and single backends, L for lanes). A document whose work is done is
//! finished (weights reset, AdamW state as the policy says), handed to the run's lifecycle to be
//! recorded in one transaction, and its slot refilled.
//!
//! ```text
//!   plan (PlannedDoc, seq order) ──► DocWork per document ──► Engine rounds ──► Backend
//!                                        ▲   books steps          │  scoring / single / lanes
//!                                        └────────────────────────┘
//!   finished DocWork ──► lifecycle (session.rs): one transaction in DuckDB; carried AdamW saved
//! ```
//!
//! With lanes, a freed lane takes, among the next L waiting documents, the one whose chunks are
//! closest in length (their mean) to those of the documents in the other lanes (`--lane-order
//! length`): chunks of a round are padded to the longest, so this cuts padding; each lane computes
//! as its document alone, so no result changes.
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use super::backend::Backend;
use super::event::Event;
use super::interpolate::{choose_alpha, Alpha};
use super::outcome::Outcome;
use super::plan::PlannedDoc;
use super::retrieve::{Retrieved, Retriever};
use super::settings::{LaneOrder, Method, RunConfig};
use super::work::{DocWork, Next};
use crate::error::Result;
use crate::lm::LanguageModel;
use crate::ttt::TrainConfig;

/// A document the engine is done with, for the run's lifecycle to record.
pub(super) struct Finished<'p> {
    pub doc: &'p PlannedDoc,
    pub retrieved: Retrieved,
    pub outcome: Outcome,
}

/// What records a finished document (the run's lifecycle), with the run's listener.
pub(super) type Record<'p, 'f> = dyn FnMut(Finished<'p>, &mut dyn FnMut(Event)) -> Result<()> + 'f;

/// What the engine works with.
pub(super) struct Engine<'a> {
    pub cfg: &'a RunConfig,
    pub lm: &'a LanguageModel,
    pub retriever: &'a Retriever<'a>,
    pub backend: Backend,
    /// Where the AdamW state carried across documents is saved after each (`--optimizer-state
    /// carry`), in a directory that exists: None when nothing carries.
    pub checkpoint: Option<PathBuf>,
}

/// The documents waiting for a slot, planned ahead so lanes can pick by length.
struct Queue<'p> {
    pending: VecDeque<&'p PlannedDoc>,
    ready: VecDeque<DocWork<'p>>,
    /// Documents planned ahead (1: plan order).
    ahead: usize,
    /// interpolate's α, chosen once per task: (task_index, α).
    alpha: Option<(usize, Alpha)>,
}

impl<'a> Engine<'a> {
    /// Does every document of `plan` not in `done`, handing each to `record` as it is finished
    /// (with lanes, out of plan order; each record carries its `seq`).
    pub fn run<'p>(
        &mut self,
        plan: &'p [PlannedDoc],
        done: &HashSet<usize>,
        record: &mut Record<'p, '_>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let lanes = self.backend.lanes();
        let ahead = match (lanes, self.cfg.lane_order) {
            (1, _) | (_, LaneOrder::Plan) => 1,
            (l, LaneOrder::Length) => l,
        };
        let mut queue = Queue {
            pending: plan.iter().filter(|d| !done.contains(&d.seq)).collect(),
            ready: VecDeque::new(),
            ahead,
            alpha: None,
        };
        let mut slots: Vec<Option<DocWork<'p>>> = (0..lanes).map(|_| None).collect();
        let train = super::backend::train_config(self.cfg, self.lm);
        loop {
            // Finish and record what ended, refill the empty slots, and bring every slot to its
            // next step.
            for l in 0..slots.len() {
                loop {
                    if let Some(work) = &mut slots[l] {
                        if !matches!(work.next(on_event)?, Next::Done) {
                            break;
                        }
                        let ended = slots[l].take().expect("the slot has a document");
                        self.finish(l, ended, record, on_event)?;
                    }
                    let running: Vec<usize> = slots
                        .iter()
                        .flatten()
                        .filter_map(DocWork::chunk_len)
                        .collect();
                    let Some(work) = self.admit(plan, &mut queue, &train, &running)? else {
                        break;
                    };
                    slots[l] = Some(work);
                }
            }
            if slots.iter().all(Option::is_none) {
                return Ok(());
            }
            self.round(&mut slots, on_event)?;
        }
    }

    /// The next document for a free slot: the next in plan order, or with lanes the one of the
    /// next L whose chunks are closest in mean length to the median of `running` (the other
    /// lanes' documents' mean chunk lengths).
    fn admit<'p>(
        &mut self,
        plan: &'p [PlannedDoc],
        queue: &mut Queue<'p>,
        train: &TrainConfig,
        running: &[usize],
    ) -> Result<Option<DocWork<'p>>> {
        while queue.ready.len() < queue.ahead {
            let Some(doc) = queue.pending.pop_front() else {
                break;
            };
            let work = self.plan_document(plan, doc, train, &mut queue.alpha)?;
            queue.ready.push_back(work);
        }
        let pick = match median(running) {
            Some(target) if queue.ready.len() > 1 => {
                let distance = |w: &DocWork| w.chunk_len().map(|n| n.abs_diff(target));
                (0..queue.ready.len())
                    .min_by_key(|&i| (distance(&queue.ready[i]).unwrap_or(usize::MAX), i))
                    .unwrap_or(0)
            }
            _ => 0,
        };
        Ok(queue.ready.remove(pick))
    }

    /// Starts `doc`: a new task's fresh AdamW state, its dropout seed, its text and neighbours,
    /// its plan.
    fn plan_document<'p>(
        &mut self,
        plan: &'p [PlannedDoc],
        doc: &'p PlannedDoc,
        train: &TrainConfig,
        alpha: &mut Option<(usize, Alpha)>,
    ) -> Result<DocWork<'p>> {
        let cfg = self.cfg;
        // At resume the loaded state is kept unless this document starts a task.
        let starts_task = doc.seq == 0 || plan[doc.seq - 1].task_index != doc.task_index;
        if starts_task && cfg.method.trains() {
            self.backend.start_task();
        }
        tch::manual_seed(doc.seed(cfg.docs.seed));
        let retrieved = self.retriever.retrieve(doc)?;
        let a = match (cfg.method, *alpha) {
            (Method::Interpolate, Some((task, a))) if task == doc.task_index => Some(a),
            (Method::Interpolate, _) => {
                let a = choose_alpha(self.retriever, self.lm, &doc.set_name)?;
                *alpha = Some((doc.task_index, a));
                Some(a)
            }
            _ => None,
        };
        DocWork::new(cfg, train, self.lm, doc, retrieved, a)
    }

    /// One round: every slot's next step, windows in one scoring call and training steps in one
    /// round of the trainer; each document's share of the round's seconds (and token positions) is
    /// booked into it.
    fn round(
        &mut self,
        slots: &mut [Option<DocWork>],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let lm = self.lm;
        let mut scores = None;
        let mut trained = None;
        let mut neighbors = Vec::new();
        {
            let nexts: Vec<Next> = slots
                .iter_mut()
                .map(|s| s.as_mut().map_or(Ok(Next::Done), |w| w.next(on_event)))
                .collect::<Result<_>>()?;
            let windows: Vec<_> = nexts.iter().map(Next::window).collect();
            let steps: Vec<_> = nexts.iter().map(Next::step).collect();
            for (l, n) in nexts.iter().enumerate() {
                if matches!(n, Next::Neighbor) {
                    neighbors.push(l);
                }
            }
            let scoring = windows.iter().flatten().count();
            if scoring > 0 {
                let t = Instant::now();
                let s = self.backend.score(lm, &windows)?;
                scores = Some((s, t.elapsed().as_secs_f64() / scoring as f64));
            }
            let training = steps.iter().flatten().count();
            if training > 0 {
                let t = Instant::now();
                let r = self.backend.train(lm, &steps)?;
                trained = Some((r, t.elapsed().as_secs_f64() / training as f64, training));
            }
        }
        for l in neighbors {
            slots[l]
                .as_mut()
                .expect("a neighbour is a slot's")
                .score_neighbor(lm)?;
        }
        for (l, slot) in slots.iter_mut().enumerate() {
            let Some(work) = slot else { continue };
            if let Some((scores, share)) = &scores {
                if let Some(loglik) = scores[l] {
                    work.scored(loglik, *share);
                    continue;
                }
            }
            if let Some((round, share, training)) = &mut trained {
                if let Some(step) = round.steps[l].take() {
                    let computed = round.computed_tokens as f64 / *training as f64;
                    work.trained(step, *share, computed);
                }
            }
        }
        Ok(())
    }

    /// The document in `slot` is done: the backend resets the slot, the lifecycle records the
    /// document, and carried AdamW state is saved after it.
    fn finish<'p>(
        &mut self,
        slot: usize,
        work: DocWork<'p>,
        record: &mut Record<'p, '_>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let (doc, retrieved, outcome) = work.finish(self.cfg);
        self.backend.finish_document(slot, self.cfg.optimizer_state);
        record(
            Finished {
                doc,
                retrieved,
                outcome,
            },
            on_event,
        )?;
        if let Some(path) = &self.checkpoint {
            self.backend.save_optimizer(path, doc.seq as i64)?;
        }
        Ok(())
    }
}

/// The middle of `lengths` (None when empty).
fn median(lengths: &[usize]) -> Option<usize> {
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}
