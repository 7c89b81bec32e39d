//! Bits per byte exactly as lm-evaluation-harness computes it for the original (docs/spec.md §3.2):
//! rolling disjoint windows of `n_ctx` predicted tokens with EOT as the first window's prefix,
//! natural-log log-probs summed per document, micro-averaged over documents.
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::lm::LanguageModel;
use crate::ttt::graphs::ScoreBuffers;

/// One evaluation window: the tokens fed to the model and how many of the last positions are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// Model input.
    pub input: Vec<i64>,
    /// Tokens predicted by the last `targets.len()` positions of `input`.
    pub targets: Vec<i64>,
}

/// lm-eval's `get_rolling_token_windows(context_len=1)` followed by `make_disjoint_window`.
pub(crate) fn rolling_windows(tokens: &[i64], prefix: i64, max_seq_len: usize) -> Vec<Window> {
    let mut out = Vec::new();
    if tokens.is_empty() {
        return out;
    }
    let first = max_seq_len.min(tokens.len());
    let mut input = vec![prefix];
    input.extend_from_slice(&tokens[..first - 1]);
    out.push(Window {
        input,
        targets: tokens[..first].to_vec(),
    });
    let mut predicted = first;
    while predicted < tokens.len() {
        let pred_len = (tokens.len() - predicted).min(max_seq_len);
        let end = predicted + pred_len;
        // The context is the max_seq_len tokens before the last target; disjoint: scored once.
        let start = end.saturating_sub(max_seq_len + 1);
        let context = &tokens[start..end - 1];
        let context = &context[..context.len() - (pred_len - 1)];
        let mut input = context.to_vec();
        input.extend_from_slice(&tokens[end - pred_len..end - 1]);
        out.push(Window {
            input,
            targets: tokens[end - pred_len..end].to_vec(),
        });
        predicted = end;
    }
    out
}

/// Score of one document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocScore {
    /// Σ natural-log probability of every token.
    pub loglik: f64,
    /// UTF-8 bytes of the text.
    pub bytes: u64,
    /// Words as lm-eval counts them: `len(re.split(r"\s+", text))`.
    pub words: u64,
    /// LM tokens.
    pub tokens: u64,
}

/// Words as lm-eval counts them, `len(re.split(r"\s+", text))`: empty pieces at the ends count.
pub(crate) fn count_words(text: &str) -> u64 {
    // Python's str `\s` also matches the information separators U+001C..U+001F.
    let is_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    let mut pieces = 1;
    let mut in_space = false;
    for c in text.chars() {
        if is_space(c) {
            if !in_space {
                pieces += 1;
            }
            in_space = true;
        } else {
            in_space = false;
        }
    }
    pieces
}

/// Σ log p(token) of `text` under `lm` in eval mode with no gradient.
pub fn loglikelihood(lm: &LanguageModel, text: &str) -> Result<DocScore> {
    let tokens = lm.encode(text)?;
    let loglik = score_tokens(lm, &tokens, &[], None)?[0];
    Ok(DocScore {
        loglik,
        bytes: text.len() as u64,
        words: count_words(text),
        tokens: tokens.len() as u64,
    })
}

/// A next-token distribution mixed into the LM's, `p = α·mixture + (1 − α)·p_LM` (the kNN-LM
/// "interpolate" baseline, docs/spec.md §4.2); several α are scored from one forward pass.
pub struct Mixture<'a> {
    /// A distribution over the LM's vocabulary, `[vocab]`, summing to 1.
    pub distribution: &'a Tensor,
    /// The weights α to score.
    pub alphas: &'a [f64],
}

/// Σ log p(token) of `tokens` with lm-eval's rolling windows; `context` (tokens placed before the
/// document in its only window, replacing the EOT prefix) must fit with the document in `n_ctx`.
/// Returns one log-likelihood, or one per α of `mixture`.
pub fn score_tokens(
    lm: &LanguageModel,
    tokens: &[i64],
    context: &[i64],
    mixture: Option<&Mixture>,
) -> Result<Vec<f64>> {
    let mut windows = rolling_windows(tokens, lm.eot_id, lm.n_ctx);
    if !context.is_empty() {
        if windows.len() != 1 || context.len() + tokens.len() - 1 > lm.n_ctx {
            return Err(crate::Error::internal(format!(
                "{} context tokens and a {}-token document do not fit one {}-token window",
                context.len(),
                tokens.len(),
                lm.n_ctx
            )));
        }
        let mut input = context.to_vec();
        input.extend_from_slice(&tokens[..tokens.len() - 1]);
        windows[0].input = input;
    }
    let Some(m) = mixture else {
        let mut total = 0f64;
        for w in &windows {
            total += score_window(lm, w)?;
        }
        return Ok(vec![total]);
    };
    tch::no_grad(|| {
        let mut totals = vec![0f64; m.alphas.len()];
        for w in &windows {
            let (scored, targets) = window_logits(lm, w)?;
            // The LM's log p(t) as `target_loglik` has it, mixed in f64 so α = 0 gives the base score.
            let logp_lm = (scored.gather(1, &targets, false) - scored.logsumexp([-1], true))
                .squeeze_dim(1)
                .to_kind(Kind::Double);
            let p_mix_t = m
                .distribution
                .to_device(lm.device())
                .to_kind(Kind::Double)
                .index_select(0, &targets.squeeze_dim(1));
            for (i, &alpha) in m.alphas.iter().enumerate() {
                let p = logp_lm.exp() * (1.0 - alpha) + &p_mix_t * alpha;
                totals[i] += p.log().sum(Kind::Double).double_value(&[]);
            }
        }
        Ok(totals)
    })
}

/// The scored positions' logits (`[n, vocab]`, fp32) of one window on a single-layout model, and
/// its targets (`[n, 1]`).
fn window_logits(lm: &LanguageModel, w: &Window) -> Result<(Tensor, Tensor)> {
    let input = Tensor::from_slice(&w.input).unsqueeze(0).to(lm.device());
    let logits = lm.forward(&input, false)?.squeeze_dim(0);
    let n = w.targets.len() as i64;
    let scored = logits
        .narrow(0, logits.size()[0] - n, n)
        .to_kind(Kind::Float);
    let targets = Tensor::from_slice(&w.targets).to(lm.device()).unsqueeze(1);
    Ok((scored, targets))
}

/// Σ log p(target) of one window, one sequence through the model: what [`score_tokens`] sums
/// over a document's windows (and the single backend of a run scores window by window).
pub(crate) fn score_window(lm: &LanguageModel, w: &Window) -> Result<f64> {
    tch::no_grad(|| {
        let (scored, targets) = window_logits(lm, w)?;
        Ok(target_loglik(&scored, &targets))
    })
}

/// [`score_windows_in_lanes`] (or [`score_window`], one lane) as a captured CUDA graph records it,
/// on a bucket's static [`ScoreBuffers`] (each lane's window right-padded, its scored positions
/// marked): each lane's Σ log p(target), summed in f64, into the buffers' `logliks`.
pub(crate) fn score_buffers(lm: &LanguageModel, b: &ScoreBuffers) -> Result<()> {
    tch::no_grad(|| {
        let logits = lm.forward(&b.ids, false)?.to_kind(Kind::Float);
        let logp = logits
            .gather(2, &b.targets.unsqueeze(2), false)
            .squeeze_dim(2)
            - logits.logsumexp([-1], false);
        let sums = (logp.to_kind(Kind::Double) * b.scored.to_kind(Kind::Double)).sum_dim_intlist(
            &[1i64][..],
            false,
            Kind::Double,
        );
        b.logliks.shallow_clone().copy_(&sums);
        Ok(())
    })
}

/// Σ log p(t) of `targets` (`[n, 1]`) under `logits` (`[n, vocab]`, fp32): log p(t) = logit_t −
/// logsumexp(logits), without writing a `[n, vocab]` tensor of log-probs as log_softmax would.
fn target_loglik(logits: &Tensor, targets: &Tensor) -> f64 {
    let logp = logits.gather(1, targets, false) - logits.logsumexp([-1], true);
    logp.to_kind(Kind::Double)
        .sum(Kind::Double)
        .double_value(&[])
}

/// Σ log p(target) of one window per lane (`tttnn run --lanes`), each lane scored with its own
/// weights in one batched forward; `None`: the lane has no window this round. Inputs are padded
/// at the end, after every scored position (causal attention), so each lane's sum is what
/// [`score_tokens`] gives for that window alone.
pub(crate) fn score_windows_in_lanes(
    lm: &LanguageModel,
    windows: &[Option<&Window>],
) -> Result<Vec<Option<f64>>> {
    let longest = windows.iter().flatten().map(|w| w.input.len()).max();
    let Some(t) = longest.filter(|&t| t > 0) else {
        return Ok(vec![None; windows.len()]);
    };
    let mut ids = vec![0i64; windows.len() * t];
    for (l, w) in windows.iter().enumerate() {
        if let Some(w) = w {
            ids[l * t..l * t + w.input.len()].copy_from_slice(&w.input);
        }
    }
    tch::no_grad(|| {
        let device = lm.device();
        let input = Tensor::from_slice(&ids)
            .view([windows.len() as i64, t as i64])
            .to(device);
        let logits = lm.forward(&input, false)?;
        Ok(windows
            .iter()
            .enumerate()
            .map(|(l, w)| {
                let w = (*w)?;
                let n = w.targets.len() as i64;
                let scored = logits
                    .get(l as i64)
                    .narrow(0, w.input.len() as i64 - n, n)
                    .to_kind(Kind::Float);
                let targets = Tensor::from_slice(&w.targets).to(device).unsqueeze(1);
                Some(target_loglik(&scored, &targets))
            })
            .collect())
    })
}

/// The unigram distribution of `tokens` over a `vocab`-sized vocabulary (counts / length).
pub fn unigram(tokens: &[i64], vocab: i64) -> Tensor {
    let counts = Tensor::zeros([vocab], (Kind::Double, tch::Device::Cpu));
    if tokens.is_empty() {
        return counts;
    }
    // Ids past the model's vocabulary (added tokens) have no probability to mix into.
    let ids: Vec<i64> = tokens
        .iter()
        .copied()
        .filter(|&t| t >= 0 && t < vocab)
        .collect();
    let ones = Tensor::ones([ids.len() as i64], (Kind::Double, tch::Device::Cpu));
    counts.index_add(0, &Tensor::from_slice(&ids), &ones) / ids.len().max(1) as f64
}

/// The split protocol (`--split_text`, docs/spec.md §3.2): the first 1024 tokens when the document has at
/// least 2048, else the first half, decoded as the query; the decoded remainder is evaluated.
pub fn split_text(lm: &LanguageModel, text: &str) -> Result<(String, String)> {
    let tokens = lm.encode(text)?;
    let at = split_point(tokens.len());
    Ok((lm.decode(&tokens[..at])?, lm.decode(&tokens[at..])?))
}

/// Where the split protocol cuts a document of `len` tokens.
pub(crate) fn split_point(len: usize) -> usize {
    if len >= 2048 {
        1024
    } else {
        len / 2
    }
}

/// Words per n-gram of the leakage audit: MassiveDS's decontamination measure is the Jaccard
/// similarity of 13-gram sets.
pub const NGRAM: usize = 13;

/// A text's set of word 13-grams (lower-cased, split on whitespace), hashed: what the leakage
/// audit compares a test document and each neighbour by.
#[derive(Debug, Clone, PartialEq)]
pub struct NGrams(std::collections::HashSet<u64>);

impl NGrams {
    /// The 13-grams of `text`; a text of fewer words has its whole word sequence as its one
    /// n-gram, so two short texts are a copy exactly when their words are equal.
    pub fn new(text: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        let hash = |gram: &[String]| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            gram.hash(&mut h);
            h.finish()
        };
        if words.is_empty() {
            return NGrams(Default::default());
        }
        if words.len() < NGRAM {
            return NGrams([hash(&words)].into());
        }
        NGrams(words.windows(NGRAM).map(hash).collect())
    }

    /// Jaccard similarity |A ∩ B| / |A ∪ B| (0 when both are empty).
    pub fn jaccard(&self, other: &NGrams) -> f64 {
        let (small, large) = if self.0.len() <= other.0.len() {
            (&self.0, &other.0)
        } else {
            (&other.0, &self.0)
        };
        let both = small.iter().filter(|g| large.contains(g)).count();
        let either = self.0.len() + other.0.len() - both;
        if either == 0 {
            0.0
        } else {
            both as f64 / either as f64
        }
    }
}

/// Bits per byte of a log-likelihood over `bytes`: `-ll / bytes / ln 2` (docs/spec.md §3.2).
pub fn bits_per_byte(loglik: f64, bytes: u64) -> f64 {
    -loglik / bytes.max(1) as f64 / std::f64::consts::LN_2
}

/// The mixture distribution of the `interpolate` baseline: the neighbours' unigram distributions
/// weighted by softmax(−distance) over their unsquared L2 distances (docs/spec.md §4.2).
pub fn knn_distribution(distances: &[f32], unigrams: &[Tensor]) -> Tensor {
    let max = distances
        .iter()
        .map(|d| -f64::from(*d))
        .fold(f64::MIN, f64::max);
    let w: Vec<f64> = distances
        .iter()
        .map(|d| (-f64::from(*d) - max).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let mut dist = unigrams[0].zeros_like();
    for (u, w) in unigrams.iter().zip(&w) {
        dist += u * (w / z);
    }
    dist
}

/// Micro-averaged task metrics over documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Aggregate {
    /// Σ log-likelihood.
    pub loglik: f64,
    /// Σ bytes.
    pub bytes: u64,
    /// Σ words.
    pub words: u64,
    /// Documents.
    pub docs: u64,
}

impl Aggregate {
    /// Adds one document.
    pub fn add(&mut self, s: &DocScore) {
        self.loglik += s.loglik;
        self.bytes += s.bytes;
        self.words += s.words;
        self.docs += 1;
    }

    /// `-Σll / Σbytes / ln 2`.
    pub fn bits_per_byte(&self) -> f64 {
        bits_per_byte(self.loglik, self.bytes)
    }

    /// `exp(-Σll / Σbytes)`.
    pub fn byte_perplexity(&self) -> f64 {
        (-self.loglik / self.bytes as f64).exp()
    }

    /// `exp(-Σll / Σwords)`.
    pub fn word_perplexity(&self) -> f64 {
        (-self.loglik / self.words as f64).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_byte_is_nats_per_byte_over_ln2() {
        assert!((bits_per_byte(-std::f64::consts::LN_2 * 8.0, 4) - 2.0).abs() < 1e-12);
        assert_eq!(bits_per_byte(0.0, 0), 0.0);
    }

    #[test]
    fn knn_mixture_weights_neighbours_by_softmax_of_minus_distance() {
        let a = unigram(&[0, 0, 1], 3);
        let b = unigram(&[2], 3);
        let d = knn_distribution(&[1.0, 2.0], &[a.shallow_clone(), b.shallow_clone()]);
        let wa = 1.0 / (1.0 + (-1.0f64).exp());
        let got: Vec<f64> = Vec::try_from(&d).unwrap();
        let ua: Vec<f64> = Vec::try_from(&a).unwrap();
        let ub: Vec<f64> = Vec::try_from(&b).unwrap();
        for i in 0..3 {
            let want = wa * ua[i] + (1.0 - wa) * ub[i];
            assert!((got[i] - want).abs() < 1e-12, "{i}: {} vs {want}", got[i]);
        }
        assert!((got.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Equal distances: the plain mean, whatever their size (the max is subtracted first).
        let far = knn_distribution(&[500.0, 500.0], &[a.shallow_clone(), b]);
        let mean: Vec<f64> = Vec::try_from(&far).unwrap();
        assert!((mean[2] - 0.5 * ub[2]).abs() < 1e-12 && mean[2].is_finite());
    }

    #[test]
    fn windows_score_every_token_once() {
        let tokens: Vec<i64> = (10..20).collect();
        let w = rolling_windows(&tokens, 0, 4);
        assert_eq!(
            w[0],
            Window {
                input: vec![0, 10, 11, 12],
                targets: vec![10, 11, 12, 13]
            }
        );
        // Later full windows see only the previous token plus their own chunk.
        assert_eq!(
            w[1],
            Window {
                input: vec![13, 14, 15, 16],
                targets: vec![14, 15, 16, 17]
            }
        );
        // The final partial window keeps a full left context but scores only its new tokens.
        assert_eq!(
            w[2],
            Window {
                input: vec![15, 16, 17, 18],
                targets: vec![18, 19]
            }
        );
        let scored: Vec<i64> = w.iter().flat_map(|w| w.targets.clone()).collect();
        assert_eq!(scored, tokens);
        for w in &w {
            assert!(w.input.len() <= 4 && w.input.len() >= w.targets.len());
        }
    }

    #[test]
    fn unigram_is_a_distribution() {
        let u = unigram(&[1, 1, 3], 5);
        let v: Vec<f64> = Vec::<f64>::try_from(&u).unwrap();
        assert_eq!(v.len(), 5);
        assert!((v[1] - 2.0 / 3.0).abs() < 1e-12 && (v[3] - 1.0 / 3.0).abs() < 1e-12);
        assert!((v.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn split_point_caps_the_prefix_at_1024_tokens() {
        assert_eq!(split_point(5000), 1024);
        assert_eq!(split_point(2048), 1024);
        assert_eq!(split_point(2047), 1023);
        assert_eq!(split_point(3), 1);
    }

    #[test]
    fn words_match_python_re_split() {
        assert_eq!(count_words("a b  c"), 3);
        assert_eq!(count_words(" a b "), 4);
        assert_eq!(count_words(""), 1);
    }

    #[test]
    fn bits_per_byte_is_micro_averaged() {
        let mut a = Aggregate::default();
        a.add(&DocScore {
            loglik: -2.0 * std::f64::consts::LN_2,
            bytes: 1,
            words: 1,
            tokens: 1,
        });
        a.add(&DocScore {
            loglik: 0.0,
            bytes: 3,
            words: 1,
            tokens: 1,
        });
        assert!((a.bits_per_byte() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn ngram_jaccard_is_one_for_copies_and_falls_with_edits() {
        let text: String = (0..100).map(|i| format!("w{i} ")).collect();
        let a = NGrams::new(&text);
        assert_eq!(a.jaccard(&NGrams::new(&text.to_uppercase())), 1.0);
        // Changing one word of 100 removes the 13 n-grams that contain it: 75 of 88 shared.
        let edited = text.replacen("w50 ", "x ", 1);
        let j = a.jaccard(&NGrams::new(&edited));
        assert!((j - 75.0 / 101.0).abs() < 1e-12, "{j}");
        assert_eq!(a.jaccard(&NGrams::new("something else entirely")), 0.0);
        assert_eq!(NGrams::new("a b").jaccard(&NGrams::new("A  b")), 1.0);
        assert_eq!(NGrams::new("").jaccard(&NGrams::new("")), 0.0);
    }
}
