//! What doing one document produced, whatever the method: its score, curve and neighbour
//! records, booked as the work goes and turned into its `docs` row.
use super::interpolate::Alpha;
use super::plan::PlannedDoc;
use super::retrieve::Retrieved;
use crate::eval::{self, DocScore};
use crate::records::{CurveRecord, DocRecord, NeighborRecord};
use crate::store::Neighbor;
use crate::ttt::TextTraining;

/// What scoring one document produced, whatever the method.
#[derive(Debug)]
pub(super) struct Outcome {
    /// What was scored (the whole document, or the remainder under dynamic evaluation).
    pub score: DocScore,
    /// Log-likelihood after k neighbours trained, at each evaluation point (k = 0 first).
    pub curve: Vec<CurveRecord>,
    pub neighbors: Vec<NeighborRecord>,
    pub train_s: f64,
    pub eval_s: f64,
    pub steps: usize,
    pub skipped: usize,
    pub complete: bool,
    pub alpha: Option<Alpha>,
    pub context_tokens: Option<usize>,
    pub context_fallback: Option<bool>,
    /// Tokens its training put through the model (every chunk with a loss).
    pub trained_tokens: usize,
    /// Token positions its training computed, padding included (its share of each lanes round).
    pub computed_tokens: f64,
}

impl Outcome {
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
            trained_tokens: 0,
            computed_tokens: 0.0,
        }
    }

    /// Books one group of training steps (on a neighbour, on the neighbours of one group of
    /// `--neighbors-per-step`, or a dynamic-evaluation pass) into its records — each gets the
    /// group's mean loss and an equal share of its seconds — and the document's totals.
    pub fn book_training(
        &mut self,
        records: &mut [NeighborRecord],
        trained: &TextTraining,
        train_s: f64,
    ) {
        self.train_s += train_s;
        self.steps += trained.steps;
        self.skipped += trained.skipped_short + trained.skipped_nonfinite;
        let share = train_s / records.len() as f64;
        for record in records {
            record.train_loss = Some(trained.mean_loss);
            record.train_s = share;
        }
    }

    /// Books the document's log-likelihood after `record.k` neighbours trained (its pass
    /// `record.pass`), scored in `eval_s` seconds; returns its bits per byte.
    pub fn book_score(&mut self, record: &mut NeighborRecord, loglik: f64, eval_s: f64) -> f64 {
        self.eval_s += eval_s;
        record.eval_s = Some(eval_s);
        self.curve.push(CurveRecord {
            k: record.k,
            pass: record.pass,
            loglik,
        });
        eval::bits_per_byte(loglik, self.score.bytes)
    }

    /// Bits per byte before (k = 0) and after the last evaluation point.
    pub fn before_after(&self) -> (f64, f64) {
        let before = self.curve[0].loglik;
        let after = self.curve.last().map(|c| c.loglik).unwrap_or(before);
        (
            eval::bits_per_byte(before, self.score.bytes),
            eval::bits_per_byte(after, self.score.bytes),
        )
    }

    /// The document's row in `docs`.
    pub fn record(&self, doc: &PlannedDoc, retrieved: &Retrieved) -> DocRecord {
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
            retrieval_s: retrieved.retrieval_s,
            train_s: self.train_s,
            eval_s: self.eval_s,
            train_steps: self.steps,
            skipped_chunks: self.skipped,
            alpha: self.alpha.map(|a| a.value),
            alpha_source: self.alpha.map(|a| a.source.name().to_string()),
            context_tokens: self.context_tokens,
            context_fallback: self.context_fallback,
            train_tokens: self.trained_tokens,
            computed_tokens: self.computed_tokens,
            max_jaccard13: self
                .neighbors
                .iter()
                .filter_map(|n| n.jaccard13)
                .reduce(f64::max),
            retrieval_quality: retrieved.quality,
        }
    }
}

/// The record of the neighbour of search rank `rank` before anything is trained or scored on
/// it, as the paper uses it: the `rank`-th, in pass 1 (a schedule sets its place otherwise).
pub(super) fn neighbor_record(rank: usize, nb: &Neighbor) -> NeighborRecord {
    NeighborRecord {
        rank,
        neighbor_id: nb.id.clone(),
        distance: f64::from(nb.distance),
        position: rank,
        pass: 1,
        k: rank,
        ..Default::default()
    }
}
