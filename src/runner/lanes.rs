//! Lanes (`tttnn run --lanes L`): the session's documents trained L at a time, each in its own
//! lane (`ttt::LaneTrainer`), with continuous batching: a lane whose document ends is recorded,
//! reset and refilled with the next planned document at once.
//!
//! Each document is laid out as the work a run of one document at a time does, in the same
//! order (`Work`): score the document (k = 0), then for every neighbour (or dynamic-evaluation
//! pass) one step per `max_length` chunk and, at evaluation points, score it again. A round
//! gives every lane its next chunk in one batched AdamW step, then every lane whose next work is
//! an evaluation window its window in one batched forward. Records are those of a sequential run
//! with `--optimizer-state reset`; a record's `train_s` and `eval_s` are its share of the rounds
//! it took part in (the round's time over the lanes in it).
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use super::methods::{neighbor_record, Outcome};
use super::plan::PlannedDoc;
use super::session::{Retrieved, Session};
use super::settings::Method;
use super::Event;
use crate::error::Result;
use crate::eval::{self, DocScore, Window};
use crate::records::NeighborRecord;
use crate::ttt::{LaneTrainer, TextTraining};

/// One unit of a document's work, in the order a sequential run does it.
#[derive(Debug)]
enum Work {
    /// A training pass starts: on a neighbour, or a dynamic-evaluation pass over the prefix.
    StartPass {
        record: NeighborRecord,
        tokens: usize,
    },
    /// One AdamW step on this chunk.
    Chunk(Vec<i64>),
    /// The pass's chunks are done; `scored` when the document is scored after it.
    EndPass { scored: bool },
    /// Score this window of the scored text.
    Window(usize),
    /// Every window is scored: the score after the pass (k = 0 before the first).
    EndScore,
}

/// A training pass under way: its record and what its chunks got.
struct Pass {
    record: NeighborRecord,
    trained: TextTraining,
    train_s: f64,
}

/// A document in a lane.
struct LaneDoc<'p> {
    doc: &'p PlannedDoc,
    retrieved: Retrieved,
    /// The rolling windows of the scored text (the document, or its remainder under dynamic
    /// evaluation).
    windows: Vec<Window>,
    work: VecDeque<Work>,
    outcome: Outcome,
    /// The pass under way, and the one scored after it until its score is in.
    pass: Option<Pass>,
    /// The score being summed over windows, and its seconds.
    loglik: f64,
    eval_s: f64,
}

impl<'p> LaneDoc<'p> {
    /// Lays out `doc`'s work.
    fn new(session: &Session, doc: &'p PlannedDoc, retrieved: Retrieved) -> Result<Self> {
        let (cfg, lm) = (session.cfg, session.lm);
        // Passes: a neighbour each under TTT-NN; the prefix `neighbors` times under dynamic
        // evaluation, which scores the remainder (docs/spec.md §4.3).
        let (scored_text, passes): (String, Vec<(NeighborRecord, Vec<i64>)>) = match cfg.method {
            Method::DynamicEval => {
                let (prefix, rest) = eval::split_text(lm, &retrieved.text)?;
                let tokens = lm.encode(&prefix)?;
                let passes = (1..=cfg.neighbors)
                    .map(|rank| {
                        let record = NeighborRecord {
                            rank,
                            neighbor_id: doc.doc_id.clone(),
                            ..Default::default()
                        };
                        (record, tokens.clone())
                    })
                    .collect();
                (rest, passes)
            }
            _ => {
                let passes = retrieved
                    .neighbors
                    .iter()
                    .enumerate()
                    .map(|(r, nb)| Ok((neighbor_record(r + 1, nb), lm.encode(&nb.text)?)))
                    .collect::<Result<_>>()?;
                (retrieved.text.clone(), passes)
            }
        };
        let tokens = lm.encode(&scored_text)?;
        let windows = eval::rolling_windows(&tokens, lm.eot_id, lm.n_ctx);
        let n_windows = windows.len();
        let score_work = move || (0..n_windows).map(Work::Window).chain([Work::EndScore]);
        let mut work: VecDeque<Work> = score_work().collect();
        let last = passes.len();
        let max_length = cfg.max_length.unwrap_or(lm.n_ctx).max(1);
        for (record, pass_tokens) in passes {
            let scored = cfg.eval_at.includes(record.rank, last);
            work.push_back(Work::StartPass {
                record,
                tokens: pass_tokens.len(),
            });
            work.extend(
                pass_tokens
                    .chunks(max_length)
                    .map(|c| Work::Chunk(c.to_vec())),
            );
            work.push_back(Work::EndPass { scored });
            if scored {
                work.extend(score_work());
            }
        }
        let score = DocScore {
            loglik: 0.0,
            bytes: scored_text.len() as u64,
            words: eval::count_words(&scored_text),
            tokens: tokens.len() as u64,
        };
        let mut outcome = Outcome::unscored(score);
        if cfg.method == Method::TttNn {
            // The original keeps only documents with the full curve (docs/spec.md §2, failures).
            outcome.complete = retrieved.neighbors.len() == cfg.neighbors;
        }
        Ok(LaneDoc {
            doc,
            retrieved,
            windows,
            work,
            outcome,
            pass: None,
            loglik: 0.0,
            eval_s: 0.0,
        })
    }

    /// Does the bookkeeping at the front of the work until a chunk or a window is next;
    /// returns false when the document is done.
    fn settle(&mut self, on_event: &mut dyn FnMut(Event)) -> bool {
        loop {
            match self.work.front() {
                None => return false,
                Some(Work::Chunk(_) | Work::Window(_)) => return true,
                Some(_) => {}
            }
            match self.work.pop_front() {
                Some(Work::StartPass { record, tokens }) => {
                    self.pass = Some(Pass {
                        record,
                        trained: TextTraining::new(tokens),
                        train_s: 0.0,
                    });
                }
                Some(Work::EndPass { scored }) => {
                    let pass = self.pass.as_mut().expect("a pass is under way");
                    let trained = std::mem::take(&mut pass.trained).finish();
                    self.outcome
                        .book_training(&mut pass.record, &trained, pass.train_s);
                    if !scored {
                        let pass = self.pass.take().expect("a pass is under way");
                        self.report(pass.record, None, on_event);
                    }
                }
                Some(Work::EndScore) => {
                    let (loglik, eval_s) = (self.loglik, self.eval_s);
                    (self.loglik, self.eval_s) = (0.0, 0.0);
                    match self.pass.take() {
                        None => {
                            // k = 0: the base model's score, as `Outcome::scored`.
                            self.outcome.score.loglik = loglik;
                            self.outcome.curve.push((0, loglik));
                            self.outcome.eval_s += eval_s;
                        }
                        Some(mut pass) => {
                            let bpb = self.outcome.book_score(&mut pass.record, loglik, eval_s);
                            self.report(pass.record, Some(bpb), on_event);
                        }
                    }
                }
                _ => unreachable!("chunks and windows return above"),
            }
        }
    }

    /// A pass's record is complete: report it and keep it.
    fn report(
        &mut self,
        record: NeighborRecord,
        bits_per_byte: Option<f64>,
        on_event: &mut dyn FnMut(Event),
    ) {
        on_event(Event::Neighbor {
            doc: self.doc,
            rank: record.rank,
            record: &record,
            bits_per_byte,
        });
        self.outcome.neighbors.push(record);
    }

    /// The chunk to train on next, if a chunk is next.
    fn chunk(&self) -> Option<&[i64]> {
        match self.work.front() {
            Some(Work::Chunk(c)) => Some(c),
            _ => None,
        }
    }

    /// The window to score next, if a window is next.
    fn window(&self) -> Option<&Window> {
        match self.work.front() {
            Some(Work::Window(i)) => Some(&self.windows[*i]),
            _ => None,
        }
    }
}

impl Session<'_> {
    /// Does every planned document not in `done` in the lanes of `lanes`, recording each as it
    /// ends (documents end out of plan order; each record carries its `seq`).
    pub(super) fn documents_in_lanes(
        &self,
        lanes: &mut LaneTrainer,
        plan: &[PlannedDoc],
        run_id: i64,
        done: &mut HashSet<usize>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let todo: Vec<&PlannedDoc> = plan.iter().filter(|d| !done.contains(&d.seq)).collect();
        let mut pending = todo.into_iter();
        let mut slots: Vec<Option<LaneDoc>> = (0..lanes.lanes()).map(|_| None).collect();
        loop {
            // Record what ended, refill the empty lanes, and bring every lane to its next chunk
            // or window.
            for (l, slot) in slots.iter_mut().enumerate() {
                loop {
                    if let Some(lane) = slot {
                        if lane.settle(on_event) {
                            break;
                        }
                        let mut ended = slot.take().expect("the lane has a document");
                        self.record(
                            run_id,
                            ended.doc,
                            &ended.retrieved,
                            &mut ended.outcome,
                            on_event,
                        )?;
                        done.insert(ended.doc.seq);
                    }
                    let Some(doc) = pending.next() else {
                        break;
                    };
                    lanes.reset_lane(l);
                    let retrieved = self.retrieve(doc)?;
                    *slot = Some(LaneDoc::new(self, doc, retrieved)?);
                }
            }
            if slots.iter().all(Option::is_none) {
                return Ok(());
            }

            let chunks: Vec<Option<&[i64]>> = slots
                .iter()
                .map(|s| s.as_ref().and_then(LaneDoc::chunk))
                .collect();
            let training = chunks.iter().filter(|c| c.is_some()).count();
            let windows: Vec<Option<&Window>> = slots
                .iter()
                .map(|s| s.as_ref().and_then(LaneDoc::window))
                .collect();
            let scoring = windows.iter().filter(|w| w.is_some()).count();

            let scores = if scoring > 0 {
                let t = Instant::now();
                let scores = eval::score_windows_in_lanes(self.lm, &windows);
                Some((scores, t.elapsed().as_secs_f64() / scoring as f64))
            } else {
                None
            };
            let steps = if training > 0 {
                let t = Instant::now();
                let steps = lanes.step(self.lm, &chunks)?;
                Some((steps, t.elapsed().as_secs_f64() / training as f64))
            } else {
                None
            };
            for (l, slot) in slots.iter_mut().enumerate() {
                let Some(lane) = slot else { continue };
                if let Some((scores, share)) = &scores {
                    if let Some(ll) = scores[l] {
                        lane.loglik += ll;
                        lane.eval_s += share;
                        lane.work.pop_front();
                        continue;
                    }
                }
                if let Some((steps, share)) = &steps {
                    if let Some(step) = steps[l] {
                        let pass = lane.pass.as_mut().expect("a chunk belongs to a pass");
                        pass.trained.add(step);
                        pass.train_s += share;
                        lane.work.pop_front();
                    }
                }
            }
        }
    }
}
