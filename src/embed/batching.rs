//! How token sequences become padded encoder batches: sorted by length, then cut so that no batch
//! holds more than `max_rows` sequences or more than `max_tokens` positions counting padding. A
//! batch's width is its longest sequence, so sorting keeps the padding small and the token budget
//! lets a batch of short documents hold more of them than a batch of long ones.
use serde::{Deserialize, Serialize};

/// The batching policy of an encoder call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batching {
    /// Most sequences in one batch.
    pub max_rows: usize,
    /// Most positions in one batch, padding included (rows × longest sequence).
    pub max_tokens: usize,
}

impl Batching {
    /// Batches of at most `max_rows` sequences, whatever their length.
    pub fn rows(max_rows: usize) -> Self {
        Self {
            max_rows,
            max_tokens: usize::MAX,
        }
    }

    /// The batches for sequences of `lengths`: indices into `lengths`, shortest sequences first,
    /// equal lengths in input order. Every batch has at least one sequence, however long.
    pub fn plan(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| lengths[i]);
        let max_rows = self.max_rows.max(1);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        for i in order {
            // Sorted ascending: the newcomer is the batch's longest, so it sets the width.
            let width = lengths[i].max(1);
            let fits = current.len() < max_rows
                && (current.len() + 1).saturating_mul(width) <= self.max_tokens;
            if !fits && !current.is_empty() {
                batches.push(std::mem::take(&mut current));
            }
            current.push(i);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }
}

/// What a set of batches computed: sequences, real tokens and positions including padding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BatchStats {
    /// Sequences embedded.
    pub sequences: u64,
    /// Encoder calls.
    pub batches: u64,
    /// Real tokens (special tokens included).
    pub tokens: u64,
    /// Positions computed: rows × width summed over batches.
    pub padded_tokens: u64,
}

impl BatchStats {
    /// The stats of one batch of sequences of `lengths`.
    pub fn of_batch(lengths: impl Iterator<Item = usize>) -> Self {
        let (mut rows, mut tokens, mut width) = (0u64, 0u64, 0u64);
        for l in lengths {
            rows += 1;
            tokens += l as u64;
            width = width.max(l as u64);
        }
        Self {
            sequences: rows,
            batches: 1,
            tokens,
            padded_tokens: rows * width.max(1),
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: BatchStats) {
        self.sequences += other.sequences;
        self.batches += other.batches;
        self.tokens += other.tokens;
        self.padded_tokens += other.padded_tokens;
    }

    /// Share of the computed positions that were padding: 1 − tokens / padded tokens.
    pub fn padding_fraction(&self) -> f64 {
        if self.padded_tokens == 0 {
            0.0
        } else {
            1.0 - self.tokens as f64 / self.padded_tokens as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sorted_and_bounded_by_rows_and_tokens() {
        let lengths = [5, 1, 9, 3, 3, 7, 2];
        assert_eq!(
            Batching::rows(3).plan(&lengths),
            vec![vec![1, 6, 3], vec![4, 0, 5], vec![2]]
        );
        let b = Batching {
            max_rows: 8,
            max_tokens: 10,
        };
        let plan = b.plan(&lengths);
        assert_eq!(plan, vec![vec![1, 6, 3], vec![4, 0], vec![5], vec![2]]);
        for batch in &plan {
            let width = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(batch.len() * width <= 10, "{batch:?}");
        }
        // A sequence longer than the budget still gets a batch of its own.
        let one = Batching {
            max_rows: 4,
            max_tokens: 4,
        };
        assert_eq!(one.plan(&[9, 2]), vec![vec![1], vec![0]]);
        assert!(one.plan(&[]).is_empty());
    }

    #[test]
    fn padding_fraction_counts_positions_beyond_each_sequence() {
        let mut s = BatchStats::of_batch([2, 4].into_iter());
        assert_eq!((s.tokens, s.padded_tokens), (6, 8));
        s.add(BatchStats::of_batch([4, 4].into_iter()));
        assert_eq!((s.sequences, s.batches), (4, 2));
        assert!((s.padding_fraction() - 2.0 / 16.0).abs() < 1e-12);
        assert_eq!(BatchStats::default().padding_fraction(), 0.0);
    }
}
