//! The methods a run can apply to one document: TTT-NN, dynamic evaluation and in-context
//! neighbours here, `interpolate` in its own file. Each returns the document's [`Outcome`].
use std::time::Instant;

use super::plan::PlannedDoc;
use super::settings::{ContextOrder, RunConfig};
use super::{Alpha, Event};
use crate::error::Result;
use crate::eval::{self, DocScore};
use crate::lm::LanguageModel;
use crate::records::{DocRecord, NeighborRecord};
use crate::store::Neighbor;
use crate::ttt::{TextTraining, Trainer};

/// What scoring one document produced, whatever the method.
#[derive(Debug)]
pub(super) struct Outcome {
    /// What was scored (the whole document, or the remainder under dynamic evaluation).
    pub score: DocScore,
    /// Log-likelihood after k neighbours, at each evaluation point (k = 0 first).
    pub curve: Vec<(usize, f64)>,
    pub neighbors: Vec<NeighborRecord>,
    pub train_s: f64,
    pub eval_s: f64,
    pub steps: usize,
    pub skipped: usize,
    pub complete: bool,
    pub alpha: Option<Alpha>,
    pub context_tokens: Option<usize>,
    pub context_fallback: Option<bool>,
}

impl Outcome {
    /// Starts a document's outcome with the base model's score of `text` (k = 0), timed.
    pub fn scored(lm: &LanguageModel, text: &str) -> Result<Self> {
        let t = Instant::now();
        let mut out = Outcome::unscored(eval::loglikelihood(lm, text)?);
        out.curve.push((0, out.score.loglik));
        out.eval_s = t.elapsed().as_secs_f64();
        Ok(out)
    }

    /// A document's outcome before anything is scored: `score` without its curve.
    pub fn unscored(score: DocScore) -> Self {
        Outcome {
            curve: Vec::new(),
            score,
            neighbors: Vec::new(),
            train_s: 0.0,
            eval_s: 0.0,
            steps: 0,
            skipped: 0,
            complete: true,
            alpha: None,
            context_tokens: None,
            context_fallback: None,
        }
    }

    /// Books one training pass (on a neighbour, or a dynamic-evaluation pass) into its record
    /// and the document's totals.
    pub fn book_training(
        &mut self,
        record: &mut NeighborRecord,
        trained: &TextTraining,
        train_s: f64,
    ) {
        self.train_s += train_s;
        self.steps += trained.steps;
        self.skipped += trained.skipped_short + trained.skipped_nonfinite;
        record.tokens = trained.tokens;
        record.chunks = trained.chunks;
        record.train_loss = Some(trained.mean_loss);
        record.train_s = train_s;
    }

    /// Books the document's log-likelihood after `record.rank` passes, scored in `eval_s`
    /// seconds; returns its bits per byte.
    pub fn book_score(&mut self, record: &mut NeighborRecord, loglik: f64, eval_s: f64) -> f64 {
        self.eval_s += eval_s;
        record.eval_s = Some(eval_s);
        self.curve.push((record.rank, loglik));
        eval::bits_per_byte(loglik, self.score.bytes)
    }

    /// Bits per byte before (k = 0) and after the last evaluation point.
    pub fn before_after(&self) -> (f64, f64) {
        let before = self.curve[0].1;
        let after = self.curve.last().map(|c| c.1).unwrap_or(before);
        (
            eval::bits_per_byte(before, self.score.bytes),
            eval::bits_per_byte(after, self.score.bytes),
        )
    }

    /// The document's row in `docs`.
    pub fn record(&self, doc: &PlannedDoc, retrieval_s: f64) -> DocRecord {
        DocRecord {
            doc_id: doc.doc_id.clone(),
            task: doc.task.clone(),
            set_name: doc.set_name.clone(),
            position: doc.position,
            seq: doc.seq,
            bytes: self.score.bytes,
            words: self.score.words,
            tokens: self.score.tokens as usize,
            neighbors_used: self.neighbors.len(),
            complete: self.complete,
            retrieval_s,
            train_s: self.train_s,
            eval_s: self.eval_s,
            train_steps: self.steps,
            skipped_chunks: self.skipped,
            alpha: self.alpha.map(|a| a.value),
            alpha_source: self.alpha.map(|a| a.source.name().to_string()),
            context_tokens: self.context_tokens,
            context_fallback: self.context_fallback,
            max_jaccard13: self
                .neighbors
                .iter()
                .filter_map(|n| n.jaccard13)
                .reduce(f64::max),
        }
    }
}

/// A neighbour's record before anything is trained or scored on it.
pub(super) fn neighbor_record(rank: usize, nb: &Neighbor) -> NeighborRecord {
    NeighborRecord {
        rank,
        neighbor_id: nb.id.clone(),
        distance: f64::from(nb.distance),
        ..Default::default()
    }
}

/// What one document's training needs besides the trainer: settings, model, document, listener.
pub(super) struct DocRun<'a> {
    pub cfg: &'a RunConfig,
    pub lm: &'a LanguageModel,
    pub doc: &'a PlannedDoc,
    pub on_event: &'a mut dyn FnMut(Event),
}

/// One training pass: on a neighbour, or a dynamic-evaluation iteration.
struct Step<'a> {
    record: NeighborRecord,
    trained: &'a TextTraining,
    train_s: f64,
}

impl DocRun<'_> {
    /// Books one training pass into `out`, and evaluates `text` after it when its rank is an
    /// evaluation point (of `last`).
    fn after_step(&mut self, out: &mut Outcome, step: Step, last: usize, text: &str) -> Result<()> {
        let Step {
            mut record,
            trained,
            train_s,
        } = step;
        out.book_training(&mut record, trained, train_s);
        let mut bits_per_byte = None;
        if self.cfg.eval_at.includes(record.rank, last) {
            let t = Instant::now();
            let score = eval::loglikelihood(self.lm, text)?;
            bits_per_byte =
                Some(out.book_score(&mut record, score.loglik, t.elapsed().as_secs_f64()));
        }
        let rank = record.rank;
        (self.on_event)(Event::Neighbor {
            doc: self.doc,
            rank,
            record: &record,
            bits_per_byte,
        });
        out.neighbors.push(record);
        Ok(())
    }

    /// TTT-NN: train on each neighbour in order, evaluating after each (or at `eval_at` points).
    pub fn ttt_nn(
        &mut self,
        trainer: &mut Trainer,
        text: &str,
        neighbors: &[Neighbor],
    ) -> Result<Outcome> {
        let mut out = Outcome::scored(self.lm, text)?;
        let last = neighbors.len();
        for (r, nb) in neighbors.iter().enumerate() {
            let t = Instant::now();
            let trained = trainer.train_on_text(self.lm, &nb.text)?;
            let step = Step {
                record: neighbor_record(r + 1, nb),
                trained: &trained,
                train_s: t.elapsed().as_secs_f64(),
            };
            self.after_step(&mut out, step, last, text)?;
        }
        // The original keeps only documents with the full curve (docs/spec.md §2, failures).
        out.complete = neighbors.len() == self.cfg.neighbors;
        Ok(out)
    }

    /// Dynamic evaluation (docs/spec.md §4.3): the split protocol's prefix is trained on
    /// `neighbors` times (one step per max-length chunk each time) and the remainder evaluated,
    /// before and after.
    pub fn dynamic_eval(&mut self, trainer: &mut Trainer, text: &str) -> Result<Outcome> {
        let (prefix, rest) = eval::split_text(self.lm, text)?;
        let prefix_tokens = self.lm.encode(&prefix)?;
        let mut out = Outcome::scored(self.lm, &rest)?;
        let iterations = self.cfg.neighbors;
        for iteration in 1..=iterations {
            let t = Instant::now();
            let trained = trainer.train_on_tokens(self.lm, &prefix_tokens)?;
            let step = Step {
                record: NeighborRecord {
                    rank: iteration,
                    neighbor_id: self.doc.doc_id.clone(),
                    ..Default::default()
                },
                trained: &trained,
                train_s: t.elapsed().as_secs_f64(),
            };
            self.after_step(&mut out, step, iterations, &rest)?;
        }
        Ok(out)
    }
}

/// The window context of the first `k` neighbours' tokens, at most `budget` tokens.
pub(super) fn context_tokens(
    tokens: &[Vec<i64>],
    k: usize,
    budget: usize,
    order: ContextOrder,
) -> Vec<i64> {
    let seq: Vec<i64> = match order {
        ContextOrder::NearestLast => tokens[..k].iter().rev().flatten().copied().collect(),
        ContextOrder::Original => tokens[..k].iter().flatten().copied().collect(),
    };
    seq[seq.len().saturating_sub(budget)..].to_vec()
}

/// Records each neighbour and, at every `eval_at` number of neighbours k, the document's score
/// with the first k of them (the methods that use neighbours without training on them).
pub(super) fn score_at_points(
    cfg: &RunConfig,
    neighbors: &[Neighbor],
    out: &mut Outcome,
    mut score: impl FnMut(usize) -> Result<f64>,
) -> Result<()> {
    let last = neighbors.len();
    for (r, nb) in neighbors.iter().enumerate() {
        let k = r + 1;
        let mut record = neighbor_record(k, nb);
        if cfg.eval_at.includes(k, last) {
            let t = Instant::now();
            let ll = score(k)?;
            let s = t.elapsed().as_secs_f64();
            out.eval_s += s;
            record.eval_s = Some(s);
            out.curve.push((k, ll));
        }
        out.neighbors.push(record);
    }
    Ok(())
}

/// In-context neighbours (docs/spec.md §4.1): the document scored after as much neighbour text as
/// fits its window, at each `eval_at` number of neighbours. A document longer than the window is
/// scored alone (recorded as a fallback), as the original does.
pub(super) fn in_context(
    cfg: &RunConfig,
    lm: &LanguageModel,
    text: &str,
    neighbors: &[Neighbor],
) -> Result<Outcome> {
    let mut out = Outcome::scored(lm, text)?;
    let tokens = lm.encode(text)?;
    let fits = !tokens.is_empty() && tokens.len() <= lm.n_ctx;
    let nb_tokens: Vec<Vec<i64>> = neighbors
        .iter()
        .map(|n| lm.encode(&n.text))
        .collect::<Result<_>>()?;
    let budget = (lm.n_ctx + 1).saturating_sub(tokens.len());
    let (base, mut used) = (out.score.loglik, 0);
    score_at_points(cfg, neighbors, &mut out, |k| {
        Ok(if fits {
            let context = context_tokens(&nb_tokens, k, budget, cfg.in_context_order);
            used = context.len();
            eval::score_tokens(lm, &tokens, &context, None)?[0]
        } else {
            base
        })
    })?;
    for r in &mut out.neighbors {
        r.tokens = nb_tokens[r.rank - 1].len();
    }
    out.context_fallback = Some(!fits);
    out.context_tokens = Some(used);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_last_puts_the_nearest_next_to_the_document_and_cuts_the_farthest() {
        let t = vec![vec![1, 2], vec![3, 4, 5], vec![6]];
        assert_eq!(
            context_tokens(&t, 3, 10, ContextOrder::NearestLast),
            [6, 3, 4, 5, 1, 2]
        );
        // The budget keeps the end next to the document: the farthest neighbour's head goes.
        assert_eq!(
            context_tokens(&t, 3, 4, ContextOrder::NearestLast),
            [4, 5, 1, 2]
        );
        assert_eq!(context_tokens(&t, 1, 10, ContextOrder::NearestLast), [1, 2]);
    }

    #[test]
    fn original_order_keeps_the_tail_of_the_farthest() {
        let t = vec![vec![1, 2], vec![3, 4, 5], vec![6]];
        assert_eq!(
            context_tokens(&t, 3, 10, ContextOrder::Original),
            [1, 2, 3, 4, 5, 6]
        );
        // Left truncation, as the original: the nearest neighbour is what is lost.
        assert_eq!(context_tokens(&t, 3, 3, ContextOrder::Original), [4, 5, 6]);
        assert!(context_tokens(&t, 2, 0, ContextOrder::Original).is_empty());
    }
}
