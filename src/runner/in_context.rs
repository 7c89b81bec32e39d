//! In-context neighbours (docs/spec.md §4.1): the document scored after as much neighbour text as
//! fits its window, at each `eval_at` number of neighbours. A document longer than the window is
//! scored alone (recorded as a fallback), as the original does.
use super::outcome::Outcome;
use super::settings::ContextOrder;
use crate::error::Result;
use crate::eval;
use crate::lm::LanguageModel;
use crate::store::Neighbor;

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

/// A document's in-context scoring: its tokens and its neighbours'.
pub(super) struct InContext {
    tokens: Vec<i64>,
    neighbor_tokens: Vec<Vec<i64>>,
    /// Context tokens that fit before the document in one window.
    budget: usize,
    /// Whether the document fits one window at all (otherwise it is scored alone).
    fits: bool,
    order: ContextOrder,
    /// Context tokens in the last scored window.
    used: usize,
}

impl InContext {
    /// Tokenizes `text` and its `neighbors` for `lm`'s window.
    pub fn new(
        lm: &LanguageModel,
        text: &str,
        neighbors: &[Neighbor],
        order: ContextOrder,
    ) -> Result<Self> {
        let tokens = lm.encode(text)?;
        let fits = !tokens.is_empty() && tokens.len() <= lm.n_ctx;
        let neighbor_tokens = neighbors
            .iter()
            .map(|n| lm.encode(&n.text))
            .collect::<Result<_>>()?;
        Ok(Self {
            budget: (lm.n_ctx + 1).saturating_sub(tokens.len()),
            tokens,
            neighbor_tokens,
            fits,
            order,
            used: 0,
        })
    }

    /// Tokens of neighbour `rank` (1-based).
    pub fn neighbor_tokens(&self, rank: usize) -> usize {
        self.neighbor_tokens[rank - 1].len()
    }

    /// The document's log-likelihood after the first `k` neighbours (`alone`: its score without
    /// them, what a document longer than the window gets).
    pub fn score(&mut self, lm: &LanguageModel, k: usize, alone: f64) -> Result<f64> {
        if !self.fits {
            return Ok(alone);
        }
        let context = context_tokens(&self.neighbor_tokens, k, self.budget, self.order);
        self.used = context.len();
        Ok(eval::score_tokens(lm, &self.tokens, &context, None)?[0])
    }

    /// Books the window's use into the document's outcome.
    pub fn finish(&self, out: &mut Outcome) {
        out.context_fallback = Some(!self.fits);
        out.context_tokens = Some(self.used);
    }
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
