//! Choosing which retrieved documents to train on: the paper's nearest neighbours, or SIFT
//! (Hübotter et al., ICLR 2025; docs/spec.md §5), which avoids redundant neighbours by greedy
//! posterior-variance reduction with a linear kernel on normalised embeddings.

/// How neighbours are chosen from the retrieved candidates.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The k nearest, nearest first (the paper).
    #[default]
    Nn,
    /// SIFT: greedy variance reduction over `sift_candidates` nearest, repeats allowed.
    Sift,
}

impl Selection {
    /// Whether neighbours are chosen by SIFT.
    pub fn is_sift(self) -> bool {
        self == Selection::Sift
    }
}

/// Where SIFT's candidates come from.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SiftPool {
    /// The nearest by L2 distance, through the store's search (exact or IVF-PQ): on unit-norm
    /// embeddings the same order as cosine similarity.
    #[default]
    L2,
    /// activeft's rule: the largest |⟨x, q⟩|, from exact inner-product searches for q and −q, so
    /// strongly anti-correlated documents are candidates too.
    InnerProduct,
}

/// SIFT's settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sift {
    /// Noise variance λ of the kernel model (activeft's default 0.01).
    pub lambda: f64,
    /// Adaptive SIFT's α: stop at the first selection whose posterior standard deviation σ_n
    /// exceeds 1/(α·n). `None` always selects the full budget.
    pub adaptive: Option<f64>,
}

impl Default for Sift {
    fn default() -> Self {
        Self {
            lambda: 0.01,
            adaptive: None,
        }
    }
}

fn normalized(v: &[f32]) -> Vec<f64> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return vec![0.0; v.len()];
    }
    v.iter().map(|x| f64::from(*x) / norm).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One SIFT pick: the candidate's index and the prompt's posterior variance after observing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    /// Index into the candidates.
    pub index: usize,
    /// σ²_n of the query after this and the earlier picks.
    pub variance: f64,
}

/// Chooses up to `n` of `candidates` for `query` by SIFT (VTL with a linear kernel on normalised
/// embeddings): each step picks the candidate whose observation (noise λ) most reduces the query's
/// posterior variance given the earlier picks. Picks may repeat (activeft does not mask them), which
/// is how redundant candidates are down-weighted rather than filling the budget.
pub fn sift(query: &[f32], candidates: &[Vec<f32>], n: usize, s: &Sift) -> Vec<Pick> {
    let q = normalized(query);
    let xs: Vec<Vec<f64>> = candidates.iter().map(|c| normalized(c)).collect();
    let m = xs.len();
    if m == 0 {
        return Vec::new();
    }
    // Joint covariance of [query, candidates] under the prior, conditioned in place after each pick.
    let mut cov_tt = dot(&q, &q);
    let mut cov_tj: Vec<f64> = xs.iter().map(|x| dot(&q, x)).collect();
    let mut cov: Vec<Vec<f64>> = xs
        .iter()
        .map(|a| xs.iter().map(|b| dot(a, b)).collect())
        .collect();
    let mut out = Vec::with_capacity(n);
    for step in 1..=n {
        let (best, gain) = (0..m)
            .map(|j| (j, cov_tj[j] * cov_tj[j] / (cov[j][j] + s.lambda)))
            .fold((0, f64::MIN), |acc, x| if x.1 > acc.1 { x } else { acc });
        let denom = cov[best][best] + s.lambda;
        let col: Vec<f64> = (0..m).map(|i| cov[i][best]).collect();
        let t_best = cov_tj[best];
        cov_tt -= gain;
        for i in 0..m {
            cov_tj[i] -= t_best * col[i] / denom;
            for j in 0..m {
                cov[i][j] -= col[i] * col[j] / denom;
            }
        }
        let variance = cov_tt.max(0.0);
        if let Some(alpha) = s.adaptive {
            if variance.sqrt() > 1.0 / (alpha * step as f64) {
                break;
            }
        }
        out.push(Pick {
            index: best,
            variance,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pick_is_the_nearest_by_absolute_cosine() {
        let q = vec![1.0, 0.0, 0.0];
        let c = vec![
            vec![0.5, 0.5, 0.0],
            vec![-0.9, 0.1, 0.0],
            vec![0.0, 1.0, 0.0],
        ];
        assert_eq!(sift(&q, &c, 1, &Sift::default())[0].index, 1);
    }

    #[test]
    fn duplicates_are_not_picked_where_nearest_neighbours_would_take_them_all() {
        // Three copies of one document are the nearest; a different one explains the rest of the
        // query; an unrelated one explains nothing. Nearest-first would take the three copies.
        let q = vec![1.0, 1.0, 1.0, 0.0];
        let dup = vec![1.0, 1.0, 0.2, 0.0];
        let c = vec![
            dup.clone(),
            dup.clone(),
            dup,
            vec![0.0, 0.2, 1.0, 0.0],
            vec![0.0, 0.0, 0.0, 1.0],
        ];
        let picks: Vec<usize> = sift(&q, &c, 3, &Sift::default())
            .iter()
            .map(|p| p.index)
            .collect();
        let copies: std::collections::HashSet<usize> =
            picks.iter().copied().filter(|&i| i < 3).collect();
        assert_eq!(
            copies.len(),
            1,
            "one copy of the duplicate at most: {picks:?}"
        );
        assert!(picks.contains(&3) && !picks.contains(&4), "{picks:?}");
    }

    #[test]
    fn variance_falls_and_adaptive_stops_early() {
        let q = vec![1.0, 0.2];
        let c = vec![vec![1.0, 0.1], vec![0.9, 0.3], vec![0.1, 1.0]];
        let picks = sift(&q, &c, 5, &Sift::default());
        assert_eq!(picks.len(), 5);
        assert!(picks
            .windows(2)
            .all(|w| w[1].variance <= w[0].variance + 1e-12));
        let few = sift(
            &q,
            &c,
            5,
            &Sift {
                lambda: 0.01,
                adaptive: Some(100.0),
            },
        );
        assert!(few.len() < 5);
    }
}
