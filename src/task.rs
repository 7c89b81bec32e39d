//! Tasks and their test documents as lm-eval and the original pick them (docs/spec.md §3.1): a task is one
//! Pile set (`pile_github`) or all of them (`pile_all`); its test documents, in file order, are
//! shuffled with CPython's `random.Random(1216).shuffle` and the first `int(val_portion·n)` kept.
//! [`Random`] reproduces CPython's Mersenne Twister, seeding and `shuffle` bit for bit.
use std::fmt;
use std::str::FromStr;

use crate::corpus;

/// The seed the original shuffles every task's test documents with.
pub const SEED: u64 = 1216;

/// What `tttnn run --task` names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Task {
    /// One set, by its `meta.pile_set_name` (`Github`), named `pile_github` on the command line.
    Set(String),
    /// Every set the store has test documents for, each its own task (`pile_all`).
    All,
}

impl Task {
    /// The lm-eval task name of a set name (`Github` → `pile_github`; custom sets keep their name).
    pub fn name_of_set(set_name: &str) -> String {
        corpus::PILE_SETS
            .iter()
            .find(|(_, set, _)| *set == set_name)
            .map(|(task, _, _)| format!("pile_{task}"))
            .unwrap_or_else(|| set_name.to_string())
    }
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty task name".into());
        }
        if s == "pile_all" || s == "all" {
            return Ok(Task::All);
        }
        Ok(Task::Set(corpus::set_name(s)))
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::All => f.write_str("pile_all"),
            Task::Set(set) => f.write_str(&Task::name_of_set(set)),
        }
    }
}

impl From<Task> for String {
    fn from(t: Task) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for Task {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// A slice of the documents for one of N workers: document `i` goes to shard `i mod N`, as the
/// original deals documents to its ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This worker, 0-based.
    pub index: usize,
    /// Number of workers.
    pub count: usize,
}

impl Shard {
    /// The whole task on one worker.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether the document at `position` (in the selected order) is this shard's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a shard: write I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

// Recorded and read as the `I/N` text the command line takes.
impl serde::Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Positions (indices into the task's test documents in file order) of the evaluated subset, in
/// evaluation order: `random.Random(seed).shuffle(docs)` then the first `int(val_portion·n)`.
pub fn test_subset(n: usize, val_portion: f64, seed: u64) -> Vec<usize> {
    let mut order = shuffled(n, seed);
    order.truncate(subset_size(n, val_portion));
    order
}

/// `int(n·val_portion)`: Python's int(float) truncates, and the product is an f64 as in CPython.
pub fn subset_size(n: usize, val_portion: f64) -> usize {
    ((n as f64 * val_portion) as usize).min(n)
}

/// `0..n` shuffled by `random.Random(seed).shuffle`; the positions after the evaluated subset are
/// documents the original never looks at, which tttnn uses as held-out data (the `interpolate`
/// baseline's α).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Random::new(seed).shuffle(&mut order);
    order
}

const N: usize = 624;
const M: usize = 397;

/// CPython's `random.Random`: MT19937 seeded by `init_by_array` from the seed's 32-bit words.
pub struct Random {
    mt: [u32; N],
    index: usize,
}

impl Random {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let mut key: Vec<u32> = Vec::new();
        let mut s = seed;
        while s > 0 {
            key.push(s as u32);
            s >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = Random {
            mt: [0; N],
            index: N,
        };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1812433253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19650218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1664525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1566083941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for k ≤ 64: whole 32-bit words, least significant first, as CPython builds them.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        match k {
            0 => 0,
            1..=32 => u64::from(self.next_u32() >> (32 - k)),
            33..=64 => {
                let low = u64::from(self.next_u32());
                let high = u64::from(self.next_u32() >> (64 - k));
                low | (high << 32)
            }
            _ => panic!("getrandbits({k}): more than 64 bits"),
        }
    }

    /// `_randbelow_with_getrandbits(n)`: rejection sampling on `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)`: Fisher–Yates from the end.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }

    /// `random()`: a 53-bit float in [0, 1).
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67108864.0 + f64::from(b)) * (1.0 / 9007199254740992.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `python3 -c "import random; r=random.Random(1216); print([r.random() for _ in range(3)], [r.getrandbits(40) for _ in range(2)])"`
    #[test]
    fn mersenne_twister_matches_cpython() {
        let mut r = Random::new(1216);
        let floats: Vec<f64> = (0..3).map(|_| r.random()).collect();
        assert_eq!(floats, CPYTHON_FLOATS);
        let bits: Vec<u64> = (0..2).map(|_| r.getrandbits(40)).collect();
        assert_eq!(bits, CPYTHON_BITS40);
    }

    /// `python3 -c "import random; x=list(range(100)); random.Random(1216).shuffle(x); print(x[:int(100*0.2)])"`
    #[test]
    fn test_subset_matches_cpython_shuffle() {
        assert_eq!(test_subset(100, 0.2, SEED), CPYTHON_SUBSET_100);
        // int(4·0.2) = 0: a tiny task keeps nothing, as the original.
        assert!(test_subset(0, 0.2, SEED).is_empty());
        assert_eq!(test_subset(4, 0.2, SEED), Vec::<usize>::new());
        assert_eq!(test_subset(5, 0.2, SEED).len(), 1);
    }

    /// `python3 -c "import random; x=list(range(10)); random.Random(2**40+7).shuffle(x); print(x)"`
    #[test]
    fn two_word_seed_matches_cpython() {
        let mut x: Vec<usize> = (0..10).collect();
        Random::new((1 << 40) + 7).shuffle(&mut x);
        assert_eq!(x, CPYTHON_SHUFFLE_BIG_SEED);
    }

    #[test]
    fn tasks_and_shards_parse() {
        assert_eq!(
            "pile_github".parse::<Task>().unwrap(),
            Task::Set("Github".into())
        );
        assert_eq!("pile_all".parse::<Task>().unwrap(), Task::All);
        assert_eq!(Task::Set("FreeLaw".into()).to_string(), "pile_freelaw");
        assert_eq!(Task::Set("Manuals".into()).to_string(), "Manuals");
        let s: Shard = "1/4".parse().unwrap();
        assert!(s.owns(5) && !s.owns(4));
        assert!("4/4".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
    }

    // Expected values, printed by the CPython one-liners above (Python 3.11).
    const CPYTHON_FLOATS: [f64; 3] = [0.5312619516542195, 0.04955958717811759, 0.06446239673024523];
    const CPYTHON_BITS40: [u64; 2] = [109780014014, 945115024712];
    const CPYTHON_SUBSET_100: [usize; 20] = [
        4, 37, 26, 13, 90, 35, 88, 60, 53, 2, 64, 18, 62, 0, 14, 51, 63, 87, 1, 70,
    ];
    const CPYTHON_SHUFFLE_BIG_SEED: [usize; 10] = [0, 5, 2, 3, 6, 1, 8, 4, 7, 9];
}
