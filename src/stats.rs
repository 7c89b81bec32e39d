//! Paired comparisons of runs over the same documents (`tttnn compare`, `tttnn sweep`): per stratum
//! (a task) and over the strata weighted (`pile_all`), the mean per-document difference, a
//! percentile bootstrap interval (documents resampled with replacement, within each stratum) and a
//! two-sided sign-flip permutation p-value. Every random draw comes from SplitMix64 in a fixed
//! order, so a seed gives the same numbers everywhere; `scripts/paired_stats_reference.py`
//! computes the same in Python (sums in the same order, numpy's percentile) and the test holds
//! this code to it (docs/runner.md, "Paired comparisons").

/// The resampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resampling {
    /// Bootstrap resamples, and sign-flip permutations.
    pub resamples: usize,
    /// The bootstrap's seed; the permutations draw from `seed + 1`.
    pub seed: u64,
}

impl Default for Resampling {
    fn default() -> Self {
        Self {
            resamples: 10_000,
            seed: DEFAULT_SEED,
        }
    }
}

/// The seed comparisons use unless told otherwise (the original's shuffle seed).
pub const DEFAULT_SEED: u64 = 1216;

/// One stratum's documents: for each compared quantity (a run against the baseline) the value
/// of each document, all in the same document order.
#[derive(Debug, Clone, PartialEq)]
pub struct Stratum {
    /// Its weight in the weighted whole (`None`: left out of it, as table1 leaves out sets
    /// without a Pile weight).
    pub weight: Option<f64>,
    /// `values[r][i]`: quantity r of document i.
    pub values: Vec<Vec<f64>>,
}

impl Stratum {
    /// Its documents.
    pub fn len(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A mean with its interval and p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Documents.
    pub n: usize,
    /// The mean per-document value (weighted over strata for the whole).
    pub mean: f64,
    /// The interval's ends: the 2.5th and 97.5th percentiles of the bootstrap means.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided: (1 + #{flips with |mean| ≥ |observed|}) / (1 + flips).
    pub p_value: f64,
}

/// Estimates per stratum (`[stratum][quantity]`, `None` for an empty stratum) and of the weighted
/// whole (`[quantity]`, `None` when no weighted stratum has documents).
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    pub strata: Vec<Vec<Option<Estimate>>>,
    pub whole: Vec<Option<Estimate>>,
}

/// SplitMix64 (Steele, Lea and Flood 2014): the stream every draw comes from.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The mean of `values[i]` over `rows`, summed in order.
fn mean_of(values: &[f64], rows: impl Iterator<Item = usize>, n: usize) -> f64 {
    let mut sum = 0.0;
    for i in rows {
        sum += values[i];
    }
    sum / n as f64
}

/// Σ weight · mean over the weighted strata with documents, divided by their weights' sum.
fn weighted(strata: &[Stratum], means: &[f64]) -> Option<f64> {
    let (mut sum, mut weights) = (0.0, 0.0);
    for (s, m) in strata.iter().zip(means) {
        if let (Some(w), false) = (s.weight, s.is_empty()) {
            sum += w * m;
            weights += w;
        }
    }
    (weights > 0.0).then(|| sum / weights)
}

/// numpy's `percentile(values, 100·q)` (its default, linear method) of sorted `values`.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = pos - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    let diff = b - a;
    // numpy's _lerp: from the nearer end, so t = 1 gives b exactly.
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// The paired comparison of `strata` (each with the same number of quantities).
pub fn paired(strata: &[Stratum], r: &Resampling) -> Paired {
    let quantities = strata.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let (n_strata, b) = (strata.len(), r.resamples.max(1));
    let observed: Vec<Vec<f64>> = strata
        .iter()
        .map(|s| {
            (0..quantities)
                .map(|q| mean_of(&s.values[q], 0..s.len(), s.len()))
                .collect()
        })
        .collect();
    // Bootstrap: per resample, each stratum's documents drawn in order, index = next % n.
    let mut boot = vec![vec![Vec::with_capacity(b); quantities]; n_strata];
    let mut boot_whole = vec![Vec::with_capacity(b); quantities];
    let mut rng = SplitMix64::new(r.seed);
    let mut rows: Vec<Vec<usize>> = strata.iter().map(|s| vec![0; s.len()]).collect();
    for _ in 0..b {
        for (t, s) in strata.iter().enumerate() {
            for row in rows[t].iter_mut() {
                *row = (rng.next_u64() % s.len() as u64) as usize;
            }
        }
        for q in 0..quantities {
            let means: Vec<f64> = strata
                .iter()
                .enumerate()
                .map(|(t, s)| {
                    if s.is_empty() {
                        0.0
                    } else {
                        mean_of(&s.values[q], rows[t].iter().copied(), s.len())
                    }
                })
                .collect();
            for t in 0..n_strata {
                boot[t][q].push(means[t]);
            }
            if let Some(w) = weighted(strata, &means) {
                boot_whole[q].push(w);
            }
        }
    }
    // Sign flips: per permutation, each stratum's documents in order, flipped when the draw's top
    // bit is set.
    let mut flips = SplitMix64::new(r.seed.wrapping_add(1));
    let mut as_large = vec![vec![0usize; quantities]; n_strata];
    let mut as_large_whole = vec![0usize; quantities];
    let whole_observed: Vec<Option<f64>> = (0..quantities)
        .map(|q| weighted(strata, &observed.iter().map(|o| o[q]).collect::<Vec<_>>()))
        .collect();
    let mut signs: Vec<Vec<f64>> = strata.iter().map(|s| vec![1.0; s.len()]).collect();
    for _ in 0..b {
        for sign in signs.iter_mut().flatten() {
            *sign = if flips.next_u64() >> 63 == 1 {
                -1.0
            } else {
                1.0
            };
        }
        for q in 0..quantities {
            let means: Vec<f64> = strata
                .iter()
                .enumerate()
                .map(|(t, s)| {
                    let mut sum = 0.0;
                    for (i, v) in s.values[q].iter().enumerate() {
                        sum += signs[t][i] * v;
                    }
                    if s.is_empty() {
                        0.0
                    } else {
                        sum / s.len() as f64
                    }
                })
                .collect();
            for t in 0..n_strata {
                if means[t].abs() >= observed[t][q].abs() {
                    as_large[t][q] += 1;
                }
            }
            if let (Some(w), Some(o)) = (weighted(strata, &means), whole_observed[q]) {
                if w.abs() >= o.abs() {
                    as_large_whole[q] += 1;
                }
            }
        }
    }
    let estimate = |n: usize, mean: f64, draws: &mut Vec<f64>, count: usize| {
        draws.sort_by(f64::total_cmp);
        Estimate {
            n,
            mean,
            ci_low: percentile(draws, 0.025),
            ci_high: percentile(draws, 0.975),
            p_value: (1 + count) as f64 / (1 + b) as f64,
        }
    };
    let per_stratum = (0..n_strata)
        .map(|t| {
            (0..quantities)
                .map(|q| {
                    (!strata[t].is_empty()).then(|| {
                        estimate(
                            strata[t].len(),
                            observed[t][q],
                            &mut boot[t][q],
                            as_large[t][q],
                        )
                    })
                })
                .collect()
        })
        .collect();
    let weighted_n: usize = strata
        .iter()
        .filter(|s| s.weight.is_some())
        .map(Stratum::len)
        .sum();
    let whole = (0..quantities)
        .map(|q| {
            whole_observed[q]
                .map(|mean| estimate(weighted_n, mean, &mut boot_whole[q], as_large_whole[q]))
        })
        .collect();
    Paired {
        strata: per_stratum,
        whole,
    }
}

/// A stratum of a ratio of sums: its weight in the whole (`None`: left out of it) and each
/// document's numerator and denominator (bits and bytes, for bits per byte).
#[derive(Debug, Clone, PartialEq)]
pub struct RatioStratum {
    /// Its weight in the whole.
    pub weight: Option<f64>,
    /// Each document's (numerator, denominator).
    pub docs: Vec<(f64, f64)>,
}

/// A 95% interval: the 2.5th and 97.5th percentiles of the resamples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The 2.5th percentile.
    pub low: f64,
    /// The 97.5th percentile.
    pub high: f64,
}

/// [`ratio_interval`]'s intervals: per stratum (`None` for an empty one) and of the whole.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioIntervals {
    /// Per stratum, in order.
    pub strata: Vec<Option<Interval>>,
    /// Of the weighted whole (`None` when no weighted stratum has documents).
    pub whole: Option<Interval>,
}

/// A percentile bootstrap interval of a ratio of sums (bits per byte as table1 computes it: Σ
/// numerator over Σ denominator, the documents of each stratum resampled with replacement; the
/// whole is the weighted mean of the strata's ratios), from the same SplitMix64 stream and draw
/// order as [`paired`]'s bootstrap.
pub fn ratio_interval(strata: &[RatioStratum], r: &Resampling) -> RatioIntervals {
    let b = r.resamples.max(1);
    let mut rng = SplitMix64::new(r.seed);
    let mut draws = vec![Vec::with_capacity(b); strata.len()];
    let mut whole = Vec::with_capacity(b);
    for _ in 0..b {
        let (mut sum, mut weights) = (0.0, 0.0);
        for (t, RatioStratum { weight, docs }) in strata.iter().enumerate() {
            if docs.is_empty() {
                continue;
            }
            let (mut num, mut den) = (0.0, 0.0);
            for _ in 0..docs.len() {
                let (n, d) = docs[(rng.next_u64() % docs.len() as u64) as usize];
                num += n;
                den += d;
            }
            let ratio = num / den;
            draws[t].push(ratio);
            if let Some(w) = weight {
                sum += w * ratio;
                weights += w;
            }
        }
        if weights > 0.0 {
            whole.push(sum / weights);
        }
    }
    let interval = |d: &mut Vec<f64>| {
        (!d.is_empty()).then(|| {
            d.sort_by(f64::total_cmp);
            Interval {
                low: percentile(d, 0.025),
                high: percentile(d, 0.975),
            }
        })
    };
    RatioIntervals {
        strata: draws.iter_mut().map(interval).collect(),
        whole: interval(&mut whole),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: `scripts/paired_stats_reference.py` (Python, numpy's percentile) on the
    /// inputs of `tests/fixtures/paired_stats.json`, its outputs committed there.
    #[test]
    fn paired_statistics_equal_the_python_reference() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/paired_stats.json");
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let r = Resampling {
            resamples: fixture["resamples"].as_u64().unwrap() as usize,
            seed: fixture["seed"].as_u64().unwrap(),
        };
        let strata: Vec<Stratum> = fixture["strata"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Stratum {
                weight: s["weight"].as_f64(),
                values: serde_json::from_value(s["values"].clone()).unwrap(),
            })
            .collect();
        let got = paired(&strata, &r);
        let close = |a: f64, b: &serde_json::Value, what: &str| {
            let b = b.as_f64().unwrap();
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{what}: {a} vs {b}"
            );
        };
        let check = |e: &Estimate, want: &serde_json::Value, what: &str| {
            assert_eq!(e.n as u64, want["n"].as_u64().unwrap(), "{what} n");
            close(e.mean, &want["mean"], &format!("{what} mean"));
            close(e.ci_low, &want["ci_low"], &format!("{what} ci_low"));
            close(e.ci_high, &want["ci_high"], &format!("{what} ci_high"));
            close(e.p_value, &want["p_value"], &format!("{what} p"));
        };
        for (t, per) in fixture["expected"]["strata"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            for (q, want) in per.as_array().unwrap().iter().enumerate() {
                check(
                    got.strata[t][q].as_ref().unwrap(),
                    want,
                    &format!("stratum {t} q {q}"),
                );
            }
        }
        for (q, want) in fixture["expected"]["whole"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            check(
                got.whole[q].as_ref().unwrap(),
                want,
                &format!("whole q {q}"),
            );
        }
        let ratio: Vec<RatioStratum> = fixture["ratio_strata"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| RatioStratum {
                weight: s["weight"].as_f64(),
                docs: serde_json::from_value(s["docs"].clone()).unwrap(),
            })
            .collect();
        let got = ratio_interval(&ratio, &r);
        let want = &fixture["expected"]["ratio"];
        for (t, w) in want["strata"].as_array().unwrap().iter().enumerate() {
            let i = got.strata[t].unwrap();
            close(i.low, &w[0], "ratio low");
            close(i.high, &w[1], "ratio high");
        }
        let i = got.whole.unwrap();
        close(i.low, &want["whole"][0], "ratio whole low");
        close(i.high, &want["whole"][1], "ratio whole high");
    }

    /// Hand-derived: identical runs give a zero mean, a zero-width interval and p = 1; a
    /// difference of the same sign on every document gives an interval away from 0 and the
    /// smallest p the flips allow for n documents (2 of 2^n sign patterns are as extreme).
    #[test]
    fn hand_derived_cases() {
        let r = Resampling {
            resamples: 2000,
            seed: 7,
        };
        let zero = Stratum {
            weight: Some(1.0),
            values: vec![vec![0.0; 5]],
        };
        let e = paired(&[zero], &r).whole[0].unwrap();
        assert_eq!(
            (e.mean, e.ci_low, e.ci_high, e.p_value),
            (0.0, 0.0, 0.0, 1.0)
        );
        let better = Stratum {
            weight: Some(1.0),
            values: vec![vec![
                -0.1, -0.2, -0.15, -0.12, -0.3, -0.11, -0.09, -0.2, -0.14, -0.16,
            ]],
        };
        let e = paired(&[better], &r).strata[0][0].unwrap();
        assert_eq!(e.n, 10);
        assert!((e.mean + 0.157).abs() < 1e-12, "{}", e.mean);
        assert!(e.ci_high < 0.0 && e.ci_low > -0.3, "{e:?}");
        // 2 / 1024 of sign patterns are as extreme: p ≈ 0.002 (Monte Carlo, +1 corrected).
        assert!(e.p_value < 0.01, "{e:?}");
        // An empty stratum has no estimate; a stratum without weight stays out of the whole.
        let empty = Stratum {
            weight: Some(3.0),
            values: vec![vec![]],
        };
        let unweighted = Stratum {
            weight: None,
            values: vec![vec![5.0, 5.0]],
        };
        let p = paired(&[empty, unweighted], &r);
        assert!(p.strata[0][0].is_none() && p.whole[0].is_none());
        assert_eq!(p.strata[1][0].unwrap().mean, 5.0);
    }
}
