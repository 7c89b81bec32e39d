//! A document's work, planned once for every method and every backend: the passes a run of one
//! document at a time makes, in its order (docs/spec.md §2, §4), and the rule that says whether the
//! document counts. The engine (`engine.rs`) hands the plan's next step to a backend and books what
//! came back here; nothing else knows what a method does.
//!
//! The plan of a document (`Work`, front to back):
//! 1. its score before anything (k = 0): one `Window` per rolling evaluation window, `EndScore`;
//! 2. per group of training steps — under TTT-NN a neighbour (the paper), or `--neighbors-per-step`
//!    consecutive ones, in the schedule's order, `--passes` times over; under dynamic evaluation
//!    one pass over the prefix, `neighbors` times — `StartGroup`, one `Step` per `max_length`
//!    chunk (of each neighbour of the group at once; the one-token rule applied by
//!    `ttt::chunks`), `EndGroup`, and at evaluation points (`--eval-at`, within each pass) the
//!    document's windows again; each step's learning rate is the schedule's at its place among
//!    the document's planned steps;
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
use crate::records::{CurveRecord, NeighborRecord};
use crate::ttt::{self, Step, StepLog, StepOutcome, TrainConfig};

/// One unit of a document's work, in the order a run of one document at a time does it.
#[derive(Debug)]
enum Work {
    /// A group of training steps starts: on one neighbour (the paper), on consecutive ones
    /// (`--neighbors-per-step`), or a dynamic-evaluation pass over the prefix; `tokens` in all.
    StartGroup {
        records: Vec<NeighborRecord>,
        tokens: usize,
    },
    /// One training step of the group.
    Step(Step),
    /// The group's steps are done; `scored` when the document is scored after it (as the curve's
    /// point of its last record's `k`).
    EndGroup { scored: bool },
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
    /// This training step.
    Step(&'w Step),
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

    /// The step, when a training step is next.
    pub fn step(&self) -> Option<&'w Step> {
        match self {
            Next::Step(s) => Some(s),
            _ => None,
        }
    }
}

/// How the methods without training score a document with its first k neighbours.
enum Scorer {
    InContext(InContext),
    Interpolate(Interpolate),
}

/// A group of training steps: its neighbours' records and what its steps got (their losses on
/// the device until the group is booked).
struct Group {
    records: Vec<NeighborRecord>,
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
    /// The group under way, and the one scored after it until its score is in.
    group: Option<Group>,
    /// Groups done and not scored, booked (their losses read from the device) at the next
    /// evaluation point or at the document's end, so no step waits for the device.
    unread: Vec<Group>,
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
        // Groups of steps: TTT-NN's neighbours in the schedule's order and grouping, pass after
        // pass; dynamic evaluation's passes over the prefix, which it scores the remainder after
        // (docs/spec.md §4.3).
        let (scored_text, mut groups): (String, Vec<Planned>) = match cfg.method {
            Method::DynamicEval => {
                let (prefix, rest) = eval::split_text(lm, &retrieved.text)?;
                let tokens = lm.encode(&prefix)?;
                let chunks = ttt::chunks(&tokens, train);
                let last = cfg.search.neighbors;
                let groups = (1..=last)
                    .map(|pass| Planned {
                        records: vec![NeighborRecord {
                            rank: pass,
                            neighbor_id: doc.doc_id.clone(),
                            tokens: tokens.len(),
                            chunks: chunks.len(),
                            position: 1,
                            pass,
                            k: pass,
                            ..Default::default()
                        }],
                        steps: chunks.iter().cloned().map(Step::of).collect(),
                        scored: cfg.eval_at.includes(pass, last),
                    })
                    .collect();
                (rest, groups)
            }
            Method::TttNn => {
                let encoded = neighbors
                    .iter()
                    .map(|nb| lm.encode(&nb.text))
                    .collect::<Result<Vec<_>>>()?;
                let oracle = retrieved.oracle_order.as_deref();
                let groups = plan_groups(cfg, train, doc, neighbors, &encoded, oracle);
                (retrieved.text.clone(), groups)
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
        set_learning_rates(&mut groups, train);
        for group in groups {
            let Planned {
                records,
                steps,
                scored,
            } = group;
            work.push_back(Work::StartGroup {
                tokens: records.iter().map(|r| r.tokens).sum(),
                records,
            });
            work.extend(steps.into_iter().map(Work::Step));
            work.push_back(Work::EndGroup { scored });
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
            group: None,
            unread: Vec::new(),
            loglik: 0.0,
            eval_s: 0.0,
        })
    }

    /// Does the bookkeeping at the front of the work until a step is next; returns it. Groups'
    /// losses are read from the device here, at evaluation points and at the end (one host sync
    /// each), never between steps.
    pub fn next(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<Next<'_>> {
        loop {
            match self.work.front() {
                None => {
                    self.book_unread(on_event)?;
                    return Ok(Next::Done);
                }
                Some(Work::Step(_) | Work::Window(_) | Work::Neighbor { .. }) => break,
                Some(_) => {}
            }
            match self.work.pop_front() {
                Some(Work::StartGroup { records, tokens }) => {
                    self.group = Some(Group {
                        records,
                        trained: StepLog::new(tokens),
                        train_s: 0.0,
                    });
                }
                Some(Work::EndGroup { scored }) => {
                    if !scored {
                        let group = self.group.take().expect("a group is under way");
                        self.unread.push(group);
                    }
                }
                Some(Work::EndScore) => {
                    let (loglik, eval_s) = (self.loglik, self.eval_s);
                    (self.loglik, self.eval_s) = (0.0, 0.0);
                    self.book_unread(on_event)?;
                    match self.group.take() {
                        None => {
                            // k = 0: the base model's score.
                            self.outcome.score.loglik = loglik;
                            self.outcome.curve.push(CurveRecord {
                                k: 0,
                                pass: 0,
                                loglik,
                            });
                            self.outcome.eval_s += eval_s;
                        }
                        Some(group) => {
                            let mut records = self.book_group(group)?;
                            let last = records.last_mut().expect("a group has a neighbour");
                            let bpb = self.outcome.book_score(last, loglik, eval_s);
                            self.report(records, Some(bpb), on_event);
                        }
                    }
                }
                _ => unreachable!("steps break out above"),
            }
        }
        Ok(match self.work.front() {
            Some(Work::Step(s)) => Next::Step(s),
            Some(Work::Window(i)) => Next::Window(&self.windows[*i]),
            _ => Next::Neighbor,
        })
    }

    /// Books a group's training into its records and the document's totals, its losses read
    /// from the device.
    fn book_group(&mut self, group: Group) -> Result<Vec<NeighborRecord>> {
        let Group {
            mut records,
            trained,
            train_s,
        } = group;
        let trained = trained.finish()?;
        self.outcome.book_training(&mut records, &trained, train_s);
        Ok(records)
    }

    /// Books and reports the groups done and not scored, in order.
    fn book_unread(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        for group in std::mem::take(&mut self.unread) {
            let records = self.book_group(group)?;
            self.report(records, None, on_event);
        }
        Ok(())
    }

    /// The mean padded length (its longest chunk's) of the steps this document has still to
    /// take (None: none left): what lanes are filled by, as a document's neighbours tend to be
    /// alike in length.
    pub fn chunk_len(&self) -> Option<usize> {
        let (n, total) = self.work.iter().fold((0, 0), |(n, total), w| match w {
            Work::Step(s) if !s.is_empty() => (n + 1, total + s.longest()),
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

    /// Books what the step that was next got, in `train_s` seconds and `computed_tokens` token
    /// positions (its share of the round, padding included).
    pub fn trained(&mut self, outcome: StepOutcome, train_s: f64, computed_tokens: f64) {
        let Some(Work::Step(step)) = self.work.pop_front() else {
            unreachable!("a step was next");
        };
        let group = self.group.as_mut().expect("a step belongs to a group");
        group.trained.add(&step, outcome);
        group.train_s += train_s;
        self.outcome.trained_tokens += step.len();
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
            self.outcome.curve.push(CurveRecord { k, pass: 1, loglik });
        }
        self.outcome.neighbors.push(record);
        Ok(())
    }

    /// A group's records are complete: report them (the score after the group, if any, with the
    /// last) and keep them.
    fn report(
        &mut self,
        records: Vec<NeighborRecord>,
        bits_per_byte: Option<f64>,
        on_event: &mut dyn FnMut(Event),
    ) {
        let last = records.len() - 1;
        for (i, record) in records.into_iter().enumerate() {
            on_event(Event::Neighbor {
                doc: self.doc,
                record: &record,
                bits_per_byte: bits_per_byte.filter(|_| i == last),
            });
            self.outcome.neighbors.push(record);
        }
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
            let last = *out.curve.last().expect("the curve starts at k = 0");
            let points = (last.k + 1..=cfg.search.neighbors)
                .filter(|&p| cfg.eval_at.includes(p, cfg.search.neighbors));
            out.curve
                .extend(points.map(|k| CurveRecord { k, pass: 1, ..last }));
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

/// One group of steps as planned: its neighbours' records, its steps (learning rates not yet
/// set), and whether the document is scored after it.
struct Planned {
    records: Vec<NeighborRecord>,
    steps: Vec<Step>,
    scored: bool,
}

/// Each step's learning rate: the schedule's at its place among the document's planned steps (a
/// step of one-token chunks left out is none; one skipped on the device for a non-finite loss
/// keeps its place).
fn set_learning_rates(groups: &mut [Planned], train: &TrainConfig) {
    let planned = groups
        .iter()
        .flat_map(|g| &g.steps)
        .filter(|s| s.updates())
        .count();
    let steps = groups
        .iter_mut()
        .flat_map(|g| &mut g.steps)
        .filter(|s| s.updates());
    for (taken, step) in steps.enumerate() {
        step.lr = train.lr_at(taken, planned);
    }
}

/// TTT-NN's groups of steps for `doc`'s `neighbors` (as retrieved, nearest first; `encoded`,
/// their tokens; `oracle`, the oracle order when it is the schedule's), under `cfg`'s schedule:
/// each pass takes them in the schedule's order, in groups of `--neighbors-per-step` consecutive
/// ones whose i-th step holds each one's i-th chunk (a neighbour out of chunks sits the group's
/// later steps out). A group is scored when one of its
/// neighbours' places in the pass is an evaluation point (the last always is); its curve point
/// counts every neighbour trained so far, passes before included.
fn plan_groups(
    cfg: &RunConfig,
    train: &TrainConfig,
    doc: &PlannedDoc,
    neighbors: &[crate::store::Neighbor],
    encoded: &[Vec<i64>],
    oracle: Option<&[usize]>,
) -> Vec<Planned> {
    let s = &cfg.schedule;
    let n = neighbors.len();
    let seed = s.order_seed.unwrap_or(cfg.docs.seed);
    let cut: Vec<Vec<ttt::Chunk>> = encoded.iter().map(|t| ttt::chunks(t, train)).collect();
    let mut groups = Vec::new();
    for pass in 1..=s.passes {
        let order = s.neighbor_order.arrange(n, seed, &doc.doc_id, pass, oracle);
        for (g, members) in order.chunks(s.neighbors_per_step.max(1)).enumerate() {
            let first = g * s.neighbors_per_step.max(1) + 1;
            let records = members
                .iter()
                .enumerate()
                .map(|(i, &nb)| {
                    let position = first + i;
                    NeighborRecord {
                        tokens: encoded[nb].len(),
                        chunks: cut[nb].len(),
                        position,
                        pass,
                        k: (pass - 1) * n + position,
                        ..neighbor_record(nb + 1, &neighbors[nb])
                    }
                })
                .collect();
            let most = members.iter().map(|&nb| cut[nb].len()).max().unwrap_or(0);
            let steps = (0..most)
                .map(|i| Step {
                    chunks: members
                        .iter()
                        .filter_map(|&nb| cut[nb].get(i).cloned())
                        .collect(),
                    lr: None,
                })
                .collect();
            let scored = (first..first + members.len()).any(|p| cfg.eval_at.includes(p, n));
            groups.push(Planned {
                records,
                steps,
                scored,
            });
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::settings::{NeighborOrder, Schedule};
    use crate::store::Neighbor;
    use crate::task::Task;
    use crate::ttt::{Chunk, LrSchedule};

    fn doc() -> PlannedDoc {
        PlannedDoc {
            seq: 0,
            task_index: 0,
            task: "pile_github".into(),
            set_name: "Github".into(),
            position: 0,
            doc_id: "test.jsonl:7".into(),
        }
    }

    /// Neighbours of 5, 1, 12, 4 tokens (rank 1..4) and their tokens, 4 tokens per chunk.
    fn neighbors() -> (Vec<Neighbor>, Vec<Vec<i64>>, TrainConfig) {
        let lens = [5usize, 1, 12, 4];
        let nbs = (0..lens.len())
            .map(|i| Neighbor {
                id: format!("train.jsonl:{i}"),
                set_name: "Github".into(),
                distance: i as f32,
                text: String::new(),
                embedding: Vec::new(),
            })
            .collect();
        let tokens = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n as i64).map(|t| 100 * i as i64 + t).collect())
            .collect();
        let train = TrainConfig {
            max_length: 4,
            ..Default::default()
        };
        (nbs, tokens, train)
    }

    fn cfg(schedule: Schedule) -> RunConfig {
        let mut cfg = RunConfig {
            schedule,
            ..RunConfig::default()
        };
        cfg.docs.task = Some(Task::All);
        cfg.search.neighbors = 4;
        cfg
    }

    fn paper() -> Schedule {
        RunConfig::default().schedule
    }

    #[test]
    fn the_papers_schedule_is_each_neighbour_once_nearest_first_a_step_per_chunk() {
        let (nbs, tokens, train) = neighbors();
        let groups = plan_groups(&cfg(paper()), &train, &doc(), &nbs, &tokens, None);
        let ranks: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.records.iter().map(|r| r.rank).collect())
            .collect();
        assert_eq!(ranks, [[1], [2], [3], [4]]);
        for (i, g) in groups.iter().enumerate() {
            let r = &g.records[0];
            assert_eq!((r.position, r.pass, r.k), (i + 1, 1, i + 1));
            let want: Vec<Step> = ttt::chunks(&tokens[i], &train)
                .into_iter()
                .map(Step::of)
                .collect();
            assert_eq!(g.steps, want, "neighbour {i}: one step per chunk");
            assert!(g.scored);
        }
        let mut groups = groups;
        set_learning_rates(&mut groups, &train);
        assert!(groups.iter().flat_map(|g| &g.steps).all(|s| s.lr.is_none()));
    }

    #[test]
    fn orders_are_the_permutations_claimed_and_passes_repeat_them() {
        let (nbs, tokens, train) = neighbors();
        let order = |o: NeighborOrder, passes: usize| {
            let s = Schedule {
                neighbor_order: o,
                passes,
                ..paper()
            };
            plan_groups(&cfg(s), &train, &doc(), &nbs, &tokens, None)
                .iter()
                .map(|g| {
                    let r = &g.records[0];
                    (r.rank, r.position, r.pass, r.k)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            order(NeighborOrder::Farthest, 1),
            [(4, 1, 1, 1), (3, 2, 1, 2), (2, 3, 1, 3), (1, 4, 1, 4)]
        );
        // Random: the permutation of the seed and the document id; each pass draws its own.
        let random = order(NeighborOrder::Random, 2);
        for pass in 1..=2 {
            let want =
                NeighborOrder::Random.arrange(4, crate::task::SEED, "test.jsonl:7", pass, None);
            let got: Vec<usize> = random[(pass - 1) * 4..pass * 4]
                .iter()
                .map(|&(rank, ..)| rank - 1)
                .collect();
            assert_eq!(got, want, "pass {pass}");
        }
        let mut sorted: Vec<usize> = random[..4].iter().map(|r| r.0).collect();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3, 4], "a permutation");
        assert_eq!(
            random.iter().map(|r| (r.1, r.2, r.3)).collect::<Vec<_>>(),
            (1..=8)
                .map(|k| ((k - 1) % 4 + 1, (k - 1) / 4 + 1, k))
                .collect::<Vec<_>>()
        );
        // Nearest twice: the same order each pass, k counting on.
        let twice = order(NeighborOrder::Nearest, 2);
        assert_eq!(twice[4], (1, 1, 2, 5));
        // Another document, another seed: other permutations (of 8 neighbours, 8! of them).
        let shuffle = |seed, id| NeighborOrder::Random.arrange(8, seed, id, 1, None);
        assert_ne!(shuffle(1, "a"), shuffle(1, "b"));
        assert_ne!(shuffle(1, "a"), shuffle(2, "a"));
        assert_eq!(shuffle(1, "a"), shuffle(1, "a"));
        // One neighbour: every order is the same.
        for o in [NeighborOrder::Farthest, NeighborOrder::Random] {
            assert_eq!(o.arrange(1, 5, "x", 1, None), [0]);
        }
    }

    #[test]
    fn neighbours_per_step_put_each_ones_ith_chunk_in_the_ith_step() {
        let (nbs, tokens, train) = neighbors();
        let s = Schedule {
            neighbors_per_step: 3,
            ..paper()
        };
        let mut c = cfg(s);
        c.eval_at = "2".parse().unwrap();
        let groups = plan_groups(&c, &train, &doc(), &nbs, &tokens, None);
        assert_eq!(groups.len(), 2);
        let cut = |i: usize| ttt::chunks(&tokens[i], &train);
        // Neighbours 1..3: 2, 1 and 3 chunks: three steps, the second without neighbour 2's.
        let first = &groups[0];
        assert_eq!(
            first
                .records
                .iter()
                .map(|r| (r.rank, r.k))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 2), (3, 3)]
        );
        assert_eq!(first.steps.len(), 3);
        assert_eq!(
            first.steps[0].chunks,
            [cut(0)[0].clone(), Chunk::ZeroGrad, cut(2)[0].clone()]
        );
        assert_eq!(
            first.steps[1].chunks,
            [cut(0)[1].clone(), cut(2)[1].clone()]
        );
        assert_eq!(first.steps[2].chunks, [cut(2)[2].clone()]);
        assert!(first.scored, "holds the evaluation point 2");
        assert_eq!(groups[1].records[0].k, 4);
        assert!(groups[1].scored, "the last neighbour always is");
    }

    #[test]
    fn each_steps_learning_rate_is_the_schedules_at_its_place() {
        let (nbs, tokens, train) = neighbors();
        let train = TrainConfig {
            lr: 1e-3,
            lr_schedule: LrSchedule::Cosine,
            warmup_steps: 2,
            short_chunks: crate::ttt::ShortChunks::Skip,
            ..train
        };
        let s = Schedule {
            passes: 2,
            ..paper()
        };
        let mut groups = plan_groups(&cfg(s), &train, &doc(), &nbs, &tokens, None);
        set_learning_rates(&mut groups, &train);
        let steps: Vec<&Step> = groups.iter().flat_map(|g| &g.steps).collect();
        // Per pass, chunks of 4+1, 1, 4+4+4 and 4 tokens: 7 steps, the two of one token left
        // out, so 10 steps update over two passes.
        assert_eq!(steps.len(), 14);
        let planned = 10;
        let mut taken = 0;
        for step in steps {
            if step.updates() {
                let want = 1e-3 * LrSchedule::Cosine.factor(taken, planned, 2);
                assert_eq!(step.lr, Some(want), "step {taken}");
                taken += 1;
            } else {
                assert_eq!(step.lr, None);
            }
        }
        assert_eq!(taken, planned);
    }
}
