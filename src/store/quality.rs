//! How close a retrieved neighbour list is to the exact one (`--exact-reference`): the question a
//! faster or smaller search raises (an index's recall, a datastore fraction's), asked of each
//! document so it can be set beside what training on the neighbours gained.

/// A neighbour list measured against the exact nearest neighbours of the same document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrievalQuality {
    /// Exact neighbours compared with (the reference's first k, within the distance threshold).
    pub exact_neighbors: usize,
    /// Of them, in the retrieved list.
    pub shared_neighbors: usize,
    /// `shared_neighbors / exact_neighbors` (`None` without exact neighbours).
    pub recall_at_k: Option<f64>,
    /// Spearman's rank correlation of the shared neighbours' places in the two lists (`None`
    /// with fewer than two shared).
    pub rank_correlation: Option<f64>,
}

impl RetrievalQuality {
    /// Measures `retrieved` (ids, in the order the method uses them) against `exact` (ids, nearest
    /// first).
    pub fn measure(retrieved: &[&str], exact: &[&str]) -> Self {
        // Each shared neighbour's place in both lists, in the exact list's order.
        let shared: Vec<(usize, usize)> = exact
            .iter()
            .enumerate()
            .filter_map(|(e, id)| retrieved.iter().position(|r| r == id).map(|r| (r, e)))
            .collect();
        let m = shared.len();
        let rank_correlation = (m >= 2).then(|| {
            // Ranks among the shared only (1..m in each list); places are distinct, so no ties.
            let mut by_retrieved: Vec<usize> = (0..m).collect();
            by_retrieved.sort_by_key(|&i| shared[i].0);
            let mut rank_in_retrieved = vec![0usize; m];
            for (rank, &i) in by_retrieved.iter().enumerate() {
                rank_in_retrieved[i] = rank;
            }
            let d2: f64 = (0..m)
                .map(|i| (rank_in_retrieved[i] as f64 - i as f64).powi(2))
                .sum();
            let m = m as f64;
            1.0 - 6.0 * d2 / (m * (m * m - 1.0))
        });
        RetrievalQuality {
            exact_neighbors: exact.len(),
            shared_neighbors: m,
            recall_at_k: (!exact.is_empty()).then(|| m as f64 / exact.len() as f64),
            rank_correlation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_overlap_and_rank_correlation_of_hand_made_lists() {
        let q = RetrievalQuality::measure(&["a", "b", "c", "d"], &["a", "b", "c", "d"]);
        assert_eq!((q.shared_neighbors, q.recall_at_k), (4, Some(1.0)));
        assert_eq!(q.rank_correlation, Some(1.0));
        // The same neighbours backwards: ρ = -1.
        let q = RetrievalQuality::measure(&["d", "c", "b", "a"], &["a", "b", "c", "d"]);
        assert_eq!(q.rank_correlation, Some(-1.0));
        // Two of four exact ones found, in the same order among themselves: ρ = 1 over them.
        let q = RetrievalQuality::measure(&["x", "c", "y", "a"], &["a", "b", "c", "d"]);
        assert_eq!(
            (q.exact_neighbors, q.shared_neighbors, q.recall_at_k),
            (4, 2, Some(0.5))
        );
        assert_eq!(
            q.rank_correlation,
            Some(-1.0),
            "c before a here, a before c there"
        );
        // Three shared, one pair swapped: d² = 1 + 1, ρ = 1 - 6·2/(3·8) = 0.5.
        let q = RetrievalQuality::measure(&["b", "a", "c"], &["a", "b", "c", "z"]);
        assert_eq!((q.shared_neighbors, q.rank_correlation), (3, Some(0.5)));
        assert_eq!(q.recall_at_k, Some(0.75));
        // One shared: no correlation; no exact neighbours: no recall.
        let q = RetrievalQuality::measure(&["a"], &["a", "b"]);
        assert_eq!((q.recall_at_k, q.rank_correlation), (Some(0.5), None));
        let q = RetrievalQuality::measure(&["a"], &[]);
        assert_eq!((q.exact_neighbors, q.recall_at_k), (0, None));
    }
}
