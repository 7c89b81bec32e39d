//! A datastore fraction: search only part of the store, as MassiveDS subsamples its datastore to
//! measure how retrieval quality and size move a result. A row is kept when a seeded hash of its
//! document id falls below the fraction, so the rows kept at a smaller fraction are among those
//! kept at a larger one with the same seed (nested), and every search honours the same rows: the
//! exact and indexed searches through a Lance filter (`filter`), the matrix products by `keeps`.
//! Nothing is copied: the store stays one table.
use md5::{Digest, Md5};

use crate::error::{Error, Result};

/// The part of the store's rows a search may return (as a neighbour table records it).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatastoreFraction {
    /// Share of the rows kept, in (0, 1]; 1 is the whole store.
    pub fraction: f64,
    /// Seed of the hash that picks them.
    pub seed: u64,
}

impl DatastoreFraction {
    /// The whole store.
    pub const WHOLE: DatastoreFraction = DatastoreFraction {
        fraction: 1.0,
        seed: 0,
    };

    /// The 32-bit hash values kept (`hash < threshold`), or `None` for the whole store.
    fn threshold(&self) -> Option<u64> {
        let t = (self.fraction * 4_294_967_296.0).floor();
        (t < 4_294_967_296.0).then_some(t.max(0.0) as u64)
    }

    /// Checks the fraction is one: in (0, 1].
    pub fn check(&self) -> Result<()> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::setting(
                "datastore_fraction",
                format!("{} is not in (0, 1]", self.fraction),
            ));
        }
        Ok(())
    }

    /// Whether every row is kept.
    pub fn is_whole(&self) -> bool {
        self.threshold().is_none()
    }

    /// The hashed text of a document id: the seed, a colon, the id (what `filter` hashes too).
    fn key(&self, id: &str) -> String {
        format!("{}:{id}", self.seed)
    }

    /// Whether the document `id` is a candidate: the first 32 bits of MD5(`seed:id`) below
    /// `fraction`·2³².
    pub fn keeps(&self, id: &str) -> bool {
        let Some(threshold) = self.threshold() else {
            return true;
        };
        let digest = Md5::digest(self.key(id).as_bytes());
        let hash = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        u64::from(hash) < threshold
    }

    /// The same test as a Lance (DataFusion SQL) filter on the `id` column, or `None` for the
    /// whole store. MD5's hex digest starts with the same 32 bits big-endian, and lowercase hex
    /// compares as strings as its numbers do: the 32-digit digest is below the threshold's eight
    /// digits exactly when its first eight are (Lance's SQL has no `substr`).
    pub fn filter(&self) -> Option<String> {
        let threshold = self.threshold()?;
        Some(format!(
            "md5(concat('{}:', id)) < '{threshold:08x}'",
            self.seed
        ))
    }
}

impl Default for DatastoreFraction {
    fn default() -> Self {
        Self::WHOLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(f: f64, seed: u64, ids: &[String]) -> Vec<&String> {
        let d = DatastoreFraction { fraction: f, seed };
        ids.iter().filter(|id| d.keeps(id)).collect()
    }

    #[test]
    fn smaller_fractions_are_subsets_of_larger_ones() {
        let ids: Vec<String> = (0..4000).map(|i| format!("doc-{i}")).collect();
        let quarter = kept(0.25, 7, &ids);
        let half = kept(0.5, 7, &ids);
        assert!(quarter.iter().all(|id| half.contains(id)), "nested");
        // About the fraction asked for (4000 draws: a binomial's 5 sigma is ~ 0.035).
        for (f, n) in [(0.25, quarter.len()), (0.5, half.len())] {
            assert!((n as f64 / 4000.0 - f).abs() < 0.04, "{f}: {n} of 4000");
        }
        // Another seed picks other rows.
        assert_ne!(kept(0.25, 8, &ids), quarter);
        assert_eq!(kept(1.0, 7, &ids).len(), ids.len());
        assert!(DatastoreFraction::WHOLE.is_whole() && DatastoreFraction::WHOLE.filter().is_none());
    }

    #[test]
    fn the_filter_and_the_hash_agree() {
        // MD5("7:doc-0") starts with the bytes the filter's hex prefix spells.
        let d = DatastoreFraction {
            fraction: 0.5,
            seed: 7,
        };
        let digest = Md5::digest(d.key("doc-0").as_bytes());
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.as_str() < "80000000", d.keeps("doc-0"));
        assert_eq!(d.filter().unwrap(), "md5(concat('7:', id)) < '80000000'");
        // The whole digest against the eight digits: below exactly when its prefix is.
        let full: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(full.as_str() < "80000000", hex.as_str() < "80000000");
    }
}
