//! A document's work, planned once for every method and every backend: the passes a run of one
//! document at a time makes, in its order (docs/spec.md §2, §4), and the rule that says whether the
//! document counts. The engine (`engine.rs`) hands the plan's next step to a backend and books what
//! came back here; nothing else knows what a method does.
//!
//! The plan of a document (`Work`, front to back):
//! 1. its score before anything (k = 0): one `Window` per rolling evaluation window, `EndScore`;
//! 2. per training pass — a neighbour under TTT-NN (nearest first), the prefix `neighbors` times
//!    under dynamic evaluation — `StartPass`, one `Chunk` per `max_length` chunk (the one-token
//!    rule applied by `ttt::chunks`), `EndPass`, and at evaluation points (`--eval-at`) the
//!    document's windows again;
//! 3. or, for the methods that use neighbours without training (in-context, interpolate), one
//!    `Neighbor` per neighbour, scored at evaluation points with the first k of them.
use std::collections::VecDeque;
use std::time::Instant;

use super::event::Event;
use super::in_context::InContext;
use super::interpolate::{Alpha, Interpolate};
use super::outcome::{neighbor_record, Outcome};
use super::plan::PlannedDoc;
use super::retrieve::Retrieved;
use super::settings::{Method, RunConfig};
use crate::error::Result;
use crate::eval::{self, DocScore, NGrams, Window};
use crate::lm::LanguageModel;
use crate::records::NeighborRecord;
use crate::ttt::{self, Chunk, StepLog, StepOutcome, TrainConfig};

/// One unit of a document's work, in the order a run of one document at a time does it.
#[derive(Debug)]
enum Work {
    /// A training pass starts: on a neighbour, or a dynamic-evaluation pass over the prefix.
    StartPass {
        record: NeighborRecord,
        tokens: usize,
    },
    /// One training chunk of the pass.
    Chunk(Chunk),
    /// The pass's chunks are done; `scored` when the document is scored after it.
    EndPass { scored: bool },
    /// Score this window of the scored text.
    Window(usize),
    /// Every window is scored: the score after the pass (k = 0 before the first).
    EndScore,
    /// A neighbour used without training: recorded, and when `scored` the document is scored
    /// with the first `record.rank` neighbours.
    Neighbor {
        record: NeighborRecord,
        scored: bool,
    },
}

/// What a document needs next from the engine.
pub(super) enum Next<'w> {
    /// A training step on this chunk.
    Chunk(&'w Chunk),
    /// This window scored.
    Window(&'w Window),
    /// Its next neighbour scored in context or mixed in ([`DocWork::score_neighbor`]).
    Neighbor,
    /// Nothing: the document is done.
    Done,
}

impl<'w> Next<'w> {
    /// The window, when a window is next.
    pub fn window(&self) -> Option<&'w Window> {
        match self {
            Next::Window(w) => Some(w),
            _ => None,
        }
    }

    /// The chunk, when a chunk is next.
    pub fn chunk(&self) -> Option<&'w Chunk> {
        match self {
            Next::Chunk(c) => Some(c),
            _ => None,
        }
    }
}

/// How the methods without training score a document with its first k neighbours.
enum Scorer {
    InContext(InContext),
    Interpolate(Interpolate),
}

/// A training pass: its record and what its chunks got (their losses on the device until the
/// pass is booked).
struct Pass {
    record: NeighborRecord,
    trained: StepLog,
    train_s: f64,
}

/// One document's planned work and what it has produced so far.
pub(super) struct DocWork<'p> {
    pub doc: &'p PlannedDoc,
    pub retrieved: Retrieved,
    /// The rolling windows of the scored text (the document, or its remainder under dynamic
    /// evaluation).
    windows: Vec<Window>,
    work: VecDeque<Work>,
    pub outcome: Outcome,
    scorer: Option<Scorer>,
    /// The pass under way, and the one scored after it until its score is in.
    pass: Option<Pass>,
    /// Passes done and not scored, booked (their losses read from the device) at the next
    /// evaluation point or at the document's end, so no step waits for the device.
    unread: Vec<Pass>,
    /// The score being summed over windows, and its seconds.
    loglik: f64,
    eval_s: f64,
}

impl<'p> DocWork<'p> {
    /// Plans `doc`'s work under `cfg`'s method (`alpha`: interpolate's, chosen for its task).
    pub fn new(
        cfg: &RunConfig,
        train: &TrainConfig,
        lm: &LanguageModel,
        doc: &'p PlannedDoc,
        retrieved: Retrieved,
        alpha: Option<Alpha>,
    ) -> Result<Self> {
        let neighbors = &retrieved.neighbors;
        // Passes: a neighbour each under TTT-NN; the prefix `neighbors` times under dynamic
        // evaluation, which scores the remainder (docs/spec.md §4.3).
        let (scored_text, passes): (String, Vec<(NeighborRecord, Vec<i64>)>) = match cfg.method {
            Method::DynamicEval => {
                let (prefix, rest) = eval::split_text(lm, &retrieved.text)?;
                let tokens = lm.encode(&prefix)?;
                let passes = (1..=cfg.search.neighbors)
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
            Method::TttNn => {
                let passes = neighbors
                    .iter()
                    .enumerate()
                    .map(|(r, nb)| Ok((neighbor_record(r + 1, nb), lm.encode(&nb.text)?)))
                    .collect::<Result<_>>()?;
                (retrieved.text.clone(), passes)
            }
            Method::InContext | Method::Interpolate | Method::None => {
                (retrieved.text.clone(), Vec::new())
            }
        };
        let tokens = lm.encode(&scored_text)?;
        let windows = eval::rolling_windows(&tokens, lm.eot_id, lm.n_ctx);
        let n_windows = windows.len();
        let score_work = move || (0..n_windows).map(Work::Window).chain([Work::EndScore]);
        let mut work: VecDeque<Work> = score_work().collect();
        let last = passes.len();
        for (record, pass_tokens) in passes {
            let scored = cfg.eval_at.includes(record.rank, last);
            work.push_back(Work::StartPass {
                record,
                tokens: pass_tokens.len(),
            });
            work.extend(
                ttt::chunks(&pass_tokens, train)
                    .into_iter()
                    .map(Work::Chunk),
            );
            work.push_back(Work::EndPass { scored });
            if scored {
                work.extend(score_work());
            }
        }
        let scorer = match cfg.method {
            Method::InContext => Some(Scorer::InContext(InContext::new(
                lm,
                &retrieved.text,
                neighbors,
                cfg.in_context_order,
            )?)),
            Method::Interpolate => {
                let alpha = alpha.expect("interpolate's α is chosen before its documents");
                Some(Scorer::Interpolate(Interpolate::new(
                    lm,
                    &retrieved.text,
                    neighbors,
                    alpha,
                )?))
            }
            _ => None,
        };
        if let Some(scorer) = &scorer {
            let last = neighbors.len();
            for (r, nb) in neighbors.iter().enumerate() {
                let mut record = neighbor_record(r + 1, nb);
                if let Scorer::InContext(c) = scorer {
                    record.tokens = c.neighbor_tokens(r + 1);
                }
                let scored = cfg.eval_at.includes(record.rank, last);
                work.push_back(Work::Neighbor { record, scored });
            }
        }
        let score = DocScore {
            loglik: 0.0,
            bytes: scored_text.len() as u64,
            words: eval::count_words(&scored_text),
            tokens: tokens.len() as u64,
        };
        let mut outcome = Outcome::unscored(score);
        if let Some(Scorer::Interpolate(i)) = &scorer {
            outcome.alpha = Some(i.alpha);
        }
        Ok(DocWork {
            doc,
            retrieved,
            windows,
            work,
            outcome,
            scorer,
            pass: None,
            unread: Vec::new(),
            loglik: 0.0,
            eval_s: 0.0,
        })
    }

    /// Does the bookkeeping at the front of the work until a step is next; returns it. Passes'
    /// losses are read from the device here, at evaluation points and at the end (one host sync
    /// each), never between steps.
    pub fn next(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<Next<'_>> {
        loop {
            match self.work.front() {
                None => {
                    self.book_unread(on_event)?;
                    return Ok(Next::Done);
                }
                Some(Work::Chunk(_) | Work::Window(_) | Work::Neighbor { .. }) => break,
                Some(_) => {}
            }
            match self.work.pop_front() {
                Some(Work::StartPass { record, tokens }) => {
                    self.pass = Some(Pass {
                        record,
                        trained: StepLog::new(tokens),
                        train_s: 0.0,
                    });
                }
                Some(Work::EndPass { scored }) => {
                    if !scored {
                        let pass = self.pass.take().expect("a pass is under way");
                        self.unread.push(pass);
                    }
                }
                Some(Work::EndScore) => {
                    let (loglik, eval_s) = (self.loglik, self.eval_s);
                    (self.loglik, self.eval_s) = (0.0, 0.0);
                    self.book_unread(on_event)?;
                    match self.pass.take() {
                        None => {
                            // k = 0: the base model's score.
                            self.outcome.score.loglik = loglik;
                            self.outcome.curve.push((0, loglik));
                            self.outcome.eval_s += eval_s;
                        }
                        Some(pass) => {
                            let mut record = self.book_pass(pass)?;
                            let bpb = self.outcome.book_score(&mut record, loglik, eval_s);
                            self.report(record, Some(bpb), on_event);
                        }
                    }
                }
                _ => unreachable!("steps break out above"),
            }
        }
        Ok(match self.work.front() {
            Some(Work::Chunk(c)) => Next::Chunk(c),
            Some(Work::Window(i)) => Next::Window(&self.windows[*i]),
            _ => Next::Neighbor,
        })
    }

    /// Books a pass's training into its record and the document's totals, its losses read from
    /// the device.
    fn book_pass(&mut self, pass: Pass) -> Result<NeighborRecord> {
        let Pass {
            mut record,
            trained,
            train_s,
        } = pass;
        let trained = trained.finish()?;
        self.outcome.book_training(&mut record, &trained, train_s);
        Ok(record)
    }

    /// Books and reports the passes done and not scored, in order.
    fn book_unread(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        for pass in std::mem::take(&mut self.unread) {
            let record = self.book_pass(pass)?;
            self.report(record, None, on_event);
        }
        Ok(())
    }

    /// The mean length of the chunks this document has still to train on (None: none left):
    /// what lanes are filled by, as a document's neighbours tend to be alike in length.
    pub fn chunk_len(&self) -> Option<usize> {
        let (n, total) = self.work.iter().fold((0, 0), |(n, total), w| match w {
            Work::Chunk(c) if !c.is_empty() => (n + 1, total + c.len()),
            _ => (n, total),
        });
        (n > 0).then(|| total / n)
    }

    /// Books the score of the window that was next, computed in `eval_s` seconds.
    pub fn scored(&mut self, loglik: f64, eval_s: f64) {
        debug_assert!(matches!(self.work.front(), Some(Work::Window(_))));
        self.loglik += loglik;
        self.eval_s += eval_s;
        self.work.pop_front();
    }

    /// Books what the chunk that was next got, in `train_s` seconds and `computed_tokens` token
    /// positions (its share of the step, padding included).
    pub fn trained(&mut self, step: StepOutcome, train_s: f64, computed_tokens: f64) {
        let Some(Work::Chunk(chunk)) = self.work.pop_front() else {
            unreachable!("a chunk was next");
        };
        let pass = self.pass.as_mut().expect("a chunk belongs to a pass");
        pass.trained.add(step);
        pass.train_s += train_s;
        self.outcome.trained_tokens += chunk.len();
        self.outcome.computed_tokens += computed_tokens;
    }

    /// Records the neighbour that was next and, at an evaluation point, scores the document
    /// with the first k neighbours in context or mixed in.
    pub fn score_neighbor(&mut self, lm: &LanguageModel) -> Result<()> {
        let Some(Work::Neighbor { mut record, scored }) = self.work.pop_front() else {
            unreachable!("a neighbour was next");
        };
        if scored {
            let k = record.rank;
            let t = Instant::now();
            let loglik = match self.scorer.as_mut().expect("a scorer plans neighbours") {
                Scorer::InContext(c) => c.score(lm, k, self.outcome.score.loglik)?,
                Scorer::Interpolate(i) => i.score(lm, k)?,
            };
            let s = t.elapsed().as_secs_f64();
            self.outcome.eval_s += s;
            record.eval_s = Some(s);
            self.outcome.curve.push((k, loglik));
        }
        self.outcome.neighbors.push(record);
        Ok(())
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

    /// The document's outcome once its work is done, completed as every method needs: whether it
    /// counts, its curve to k, the leakage audit.
    pub fn finish(mut self, cfg: &RunConfig) -> (&'p PlannedDoc, Retrieved, Outcome) {
        debug_assert!(self.work.is_empty());
        if let Some(Scorer::InContext(c)) = &self.scorer {
            c.finish(&mut self.outcome);
        }
        let out = &mut self.outcome;
        let (text, neighbors) = (&self.retrieved.text, &self.retrieved.neighbors);
        // Whether the document counts. TTT-NN with nearest neighbours keeps the original's rule:
        // only documents with the full curve count (docs/spec.md §2, failures), so a document
        // with fewer than k neighbours within the distance threshold is dropped. Fewer
        // neighbours than k otherwise: adaptive SIFT stopped (activeft trains on what it picked,
        // possibly nothing), or in-context and interpolate kept only those within the threshold
        // (the original scores the document with whatever survived, even none, and averages
        // over every document). The model stays as it is, so the curve's end point at k is its
        // last state and the document counts. Dynamic evaluation and the base model always do.
        let scores_what_survived =
            cfg.select.is_sift() || matches!(cfg.method, Method::InContext | Method::Interpolate);
        out.complete = match cfg.method {
            Method::TttNn => scores_what_survived || neighbors.len() == cfg.search.neighbors,
            _ => true,
        };
        if scores_what_survived {
            // Every evaluation point past the last neighbour holds that last state, so the
            // curve (bpb_vs_k) averages the same documents at every k.
            let &(k, last) = out.curve.last().expect("the curve starts at k = 0");
            let points = (k + 1..=cfg.search.neighbors)
                .filter(|&p| cfg.eval_at.includes(p, cfg.search.neighbors));
            out.curve.extend(points.map(|p| (p, last)));
        }
        if cfg.method.uses_neighbors() {
            // The leakage audit: how much of each neighbour is the document itself.
            let grams = NGrams::new(text);
            for r in &mut out.neighbors {
                let nb = &neighbors[r.rank - 1];
                r.jaccard13 = Some(grams.jaccard(&NGrams::new(&nb.text)));
            }
        }
        (self.doc, self.retrieved, self.outcome)
    }
}
