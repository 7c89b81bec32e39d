//! The value types of a run's settings: what a method is, how lanes and evaluation points are
//! written in flags, TOML and records.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a run does with each document's neighbours (docs/spec.md §2, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Test-time training on the neighbours, nearest first (the paper).
    #[default]
    TttNn,
    /// Neighbour text in the model's window before the document, nearest next to it.
    InContext,
    /// kNN-LM style: the neighbours' unigram distribution mixed into the LM's with weight α.
    Interpolate,
    /// Dynamic evaluation: train on the document's own prefix `neighbors` times, score the rest.
    DynamicEval,
    /// The base model only (k = 0).
    None,
}

impl Method {
    /// Whether the method trains the model (and so needs the trainer and AdamW state).
    pub fn trains(self) -> bool {
        matches!(self, Method::TttNn | Method::DynamicEval)
    }

    /// Whether the method retrieves neighbours.
    pub fn uses_neighbors(self) -> bool {
        matches!(
            self,
            Method::TttNn | Method::InContext | Method::Interpolate
        )
    }
}

/// How many test documents train at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// This many.
    Fixed(usize),
    /// As many as the memory plan fits (`ttt::LanePlan`).
    Auto,
}

impl Lanes {
    /// Whether the run may use more than one lane.
    pub fn many(self) -> bool {
        self != Lanes::Fixed(1)
    }
}

impl FromStr for Lanes {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Lanes::Auto),
            n => n
                .parse()
                .map(Lanes::Fixed)
                .map_err(|_| format!("`{n}` is neither a number of lanes nor auto")),
        }
    }
}

impl fmt::Display for Lanes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lanes::Fixed(n) => write!(f, "{n}"),
            Lanes::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for Lanes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Lanes::Fixed(n) => s.serialize_u64(*n as u64),
            Lanes::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Lanes {
    /// A number (TOML `lanes = 4`) or "auto".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .map(|n| Lanes::Fixed(n as usize))
                .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a number of lanes"))),
            Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "{other} is neither a number of lanes nor \"auto\""
            ))),
        }
    }
}

/// What test-time training trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adapter {
    /// Every weight (the paper).
    #[default]
    Full,
    /// LoRA adapters on a frozen base, one per document (a departure; activeft's setup).
    Lora,
}

/// How in-context neighbours are laid out in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextOrder {
    /// Farthest first, nearest right before the document; what does not fit is cut from the
    /// farthest end (what the paper describes).
    #[default]
    NearestLast,
    /// The original code's behaviour: nearest first, then left-truncated, which keeps the tail of
    /// the farthest neighbours (docs/spec.md §4.1); for reproducing its numbers.
    Original,
}

/// After which neighbours the document is evaluated (k = 0 and the last neighbour always are).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum EvalAt {
    /// After every neighbour, as the original (51 points for k = 50).
    #[default]
    All,
    /// Only after these numbers of neighbours: cheaper, same end point.
    Points(Vec<usize>),
}

impl EvalAt {
    /// Whether to evaluate after the `k`-th neighbour of `last`.
    pub fn includes(&self, k: usize, last: usize) -> bool {
        k == 0
            || k == last
            || match self {
                EvalAt::All => true,
                EvalAt::Points(p) => p.contains(&k),
            }
    }
}

impl FromStr for EvalAt {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim() == "all" {
            return Ok(EvalAt::All);
        }
        let mut points = s
            .split(',')
            .map(|p| {
                p.trim().parse::<usize>().map_err(|_| {
                    format!("`{p}` is not a number of neighbours (write `all` or e.g. 1,2,5,10)")
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        points.sort_unstable();
        points.dedup();
        Ok(EvalAt::Points(points))
    }
}

impl fmt::Display for EvalAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalAt::All => f.write_str("all"),
            EvalAt::Points(p) => {
                let s: Vec<String> = p.iter().map(|k| k.to_string()).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

impl From<EvalAt> for String {
    fn from(e: EvalAt) -> String {
        e.to_string()
    }
}

impl TryFrom<String> for EvalAt {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// Which waiting document a freed lane takes (`--lanes`); no choice changes a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LaneOrder {
    /// Of the next L waiting documents, the one whose chunks are closest in mean length to the
    /// other lanes' documents' (less padding).
    #[default]
    Length,
    /// The next in plan order.
    Plan,
}

/// The order a document's neighbours are trained in (docs/runner.md, "Schedules").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NeighborOrder {
    /// Nearest first (the paper; under SIFT, the order SIFT picks them in).
    #[default]
    Nearest,
    /// Farthest first: the reverse (the paper reports it "significantly worse").
    Farthest,
    /// A permutation drawn from the order seed and the document's id (and the pass: each pass
    /// draws its own), so shards, lanes and a resumed run train in the same order.
    Random,
    /// Most helpful first, as an earlier run of the same documents measured each neighbour
    /// (`--oracle-run`, its `neighbor_gain`): a ceiling for any order or selection rule.
    Oracle,
}

impl NeighborOrder {
    /// The order to train `n` neighbours in during pass `pass` (from 1): indices into the list
    /// as retrieved (nearest first), e.g. `[n-1, ..., 0]` for farthest. The oracle order is
    /// measured, not drawn: `oracle` holds it (it is `None` for the other orders).
    pub fn arrange(
        self,
        n: usize,
        seed: u64,
        doc_id: &str,
        pass: usize,
        oracle: Option<&[usize]>,
    ) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        match self {
            NeighborOrder::Nearest => {}
            NeighborOrder::Oracle => {
                order = oracle
                    .expect("the oracle order is read from --oracle-run before planning")
                    .to_vec();
            }
            NeighborOrder::Farthest => order.reverse(),
            NeighborOrder::Random => {
                // Fisher-Yates with SplitMix64, seeded by FNV-1a over the document's id, the seed
                // and the pass: depends on nothing a run's other documents do.
                let mut state = 0xcbf2_9ce4_8422_2325u64;
                for b in doc_id
                    .bytes()
                    .chain(seed.to_le_bytes())
                    .chain((pass as u64).to_le_bytes())
                {
                    state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
                let mut next = || {
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^ (z >> 31)
                };
                for i in (1..n).rev() {
                    let j = (next() % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
            }
        }
        order
    }
}
