//! The `interpolate` baseline (docs/spec.md §4.2), a kNN-LM variant: the neighbours' unigram
//! distribution mixed into the LM's with weight α, and α's choice per task.
use super::retrieve::Retriever;
use super::settings::RunConfig;
use crate::error::Result;
use crate::eval::{self, Mixture};
use crate::lm::LanguageModel;
use crate::store::Neighbor;
use crate::task;

/// The α grid the original searched for `interpolate` (0, 0.01, …, 0.19).
pub const ALPHA_GRID: [f64; 20] = [
    0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12, 0.13, 0.14, 0.15,
    0.16, 0.17, 0.18, 0.19,
];

/// α when a task has no held-out documents: the paper's pile_all choice (2% NN, 98% LM).
pub const DEFAULT_ALPHA: f64 = 0.02;

/// Where a task's α came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaSource {
    /// `--alpha`.
    Fixed,
    /// The best of [`ALPHA_GRID`] on held-out documents.
    HeldOut,
    /// [`DEFAULT_ALPHA`]: the task had no held-out documents.
    Default,
}

impl AlphaSource {
    /// The value of `docs.alpha_source`.
    pub fn name(self) -> &'static str {
        match self {
            AlphaSource::Fixed => "fixed",
            AlphaSource::HeldOut => "held-out",
            AlphaSource::Default => "default",
        }
    }
}

/// A task's α and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alpha {
    /// Weight of the neighbours' distribution.
    pub value: f64,
    /// How it was chosen.
    pub source: AlphaSource,
}

/// Positions (in file order) of the documents α is chosen on: the task's shuffled test documents
/// after the evaluated subset, at most `alpha_docs` of them.
fn held_out(n: usize, cfg: &RunConfig) -> Vec<usize> {
    let order = task::shuffled(n, cfg.docs.seed);
    let rest = &order[task::subset_size(n, cfg.docs.val_portion)..];
    rest[..rest.len().min(cfg.alpha_docs)].to_vec()
}

/// The grid index with the highest total log-likelihood (the first of equals).
fn best(totals: &[f64]) -> usize {
    (0..totals.len()).fold(0, |b, i| if totals[i] > totals[b] { i } else { b })
}

/// interpolate's α for a task: fixed, or the best of [`ALPHA_GRID`] on up to `alpha_docs`
/// held-out documents (the task's test documents outside the evaluated subset), their neighbours
/// found as the run finds them. The original picked it per task on the test set itself, an oracle.
pub(super) fn choose_alpha(
    retriever: &Retriever,
    lm: &LanguageModel,
    set_name: &str,
) -> Result<Alpha> {
    let (cfg, store) = (retriever.cfg, &retriever.store);
    if let Some(value) = cfg.alpha {
        return Ok(Alpha {
            value,
            source: AlphaSource::Fixed,
        });
    }
    let docs = store.documents_of(&cfg.docs.split, Some(set_name))?;
    let held_out = held_out(docs.len(), cfg);
    if held_out.is_empty() {
        tracing::warn!("{set_name}: no held-out documents to choose α on; using {DEFAULT_ALPHA}");
        return Ok(Alpha {
            value: DEFAULT_ALPHA,
            source: AlphaSource::Default,
        });
    }
    let mut totals = vec![0.0; ALPHA_GRID.len()];
    for &i in &held_out {
        let Some(doc) = store.document(&docs[i].id)? else {
            continue;
        };
        let neighbors = retriever.neighbors(&doc.embedding, &docs[i].id)?;
        if neighbors.is_empty() {
            continue;
        }
        let knn = Neighbourhood::new(lm, &neighbors)?.mixture(neighbors.len());
        let tokens = lm.encode(&doc.text)?;
        let scores = eval::score_tokens(
            lm,
            &tokens,
            &[],
            Some(&Mixture {
                distribution: &knn,
                alphas: &ALPHA_GRID,
            }),
        )?;
        for (t, s) in totals.iter_mut().zip(scores) {
            *t += s;
        }
    }
    let value = ALPHA_GRID[best(&totals)];
    tracing::info!(
        "{set_name}: α = {value} chosen on {} held-out documents",
        held_out.len()
    );
    Ok(Alpha {
        value,
        source: AlphaSource::HeldOut,
    })
}

/// What the kNN distribution is made of: each neighbour's unigram distribution over the LM's
/// vocabulary (docs/spec.md §4.2) and its distance.
struct Neighbourhood {
    unigrams: Vec<tch::Tensor>,
    distances: Vec<f32>,
}

impl Neighbourhood {
    fn new(lm: &LanguageModel, neighbors: &[Neighbor]) -> Result<Self> {
        Ok(Self {
            unigrams: neighbors
                .iter()
                .map(|nb| Ok(eval::unigram(&lm.encode(&nb.text)?, lm.vocab_size)))
                .collect::<Result<_>>()?,
            distances: neighbors.iter().map(|n| n.distance).collect(),
        })
    }

    /// The kNN distribution of the first `k` neighbours.
    fn mixture(&self, k: usize) -> tch::Tensor {
        eval::knn_distribution(&self.distances[..k], &self.unigrams[..k])
    }
}

/// A document's interpolate scoring: its tokens, its neighbourhood and the task's α.
pub(super) struct Interpolate {
    tokens: Vec<i64>,
    neighbourhood: Neighbourhood,
    pub alpha: Alpha,
}

impl Interpolate {
    /// Tokenizes `text` and its `neighbors`' unigram distributions.
    pub fn new(
        lm: &LanguageModel,
        text: &str,
        neighbors: &[Neighbor],
        alpha: Alpha,
    ) -> Result<Self> {
        Ok(Self {
            tokens: lm.encode(text)?,
            neighbourhood: Neighbourhood::new(lm, neighbors)?,
            alpha,
        })
    }

    /// The document's log-likelihood with the first `k` neighbours' mixture (α fixed per task).
    pub fn score(&self, lm: &LanguageModel, k: usize) -> Result<f64> {
        let knn = self.neighbourhood.mixture(k);
        let mixture = Mixture {
            distribution: &knn,
            alphas: &[self.alpha.value],
        };
        Ok(eval::score_tokens(lm, &self.tokens, &[], Some(&mixture))?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::settings::TestDocs;

    #[test]
    fn alpha_is_chosen_on_the_documents_after_the_evaluated_subset() {
        let cfg = RunConfig {
            docs: TestDocs {
                val_portion: 0.2,
                ..RunConfig::default().docs
            },
            alpha_docs: 3,
            ..RunConfig::default()
        };
        let order = task::shuffled(50, cfg.docs.seed);
        // 10 of 50 are evaluated; α is chosen on the next 3 of the same shuffle.
        assert_eq!(held_out(50, &cfg), order[10..13].to_vec());
        let all = RunConfig {
            docs: TestDocs {
                val_portion: 1.0,
                ..cfg.clone().docs
            },
            ..cfg.clone()
        };
        assert!(held_out(50, &all).is_empty());
        assert_eq!(
            held_out(
                4,
                &RunConfig {
                    alpha_docs: 20,
                    ..cfg
                }
            )
            .len(),
            4
        );
    }

    #[test]
    fn the_best_alpha_is_the_first_of_the_highest() {
        assert_eq!(best(&[-3.0, -1.0, -2.0, -1.0]), 1);
        assert_eq!(best(&[-1.0]), 0);
        assert_eq!(AlphaSource::HeldOut.name(), "held-out");
    }
}
