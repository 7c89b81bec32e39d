//! Vector index administration: IVF-PQ, IVF-RQ (RaBitQ) or IVF-HNSW-SQ, sized from the data (or as
//! asked), and dropping them to go back to exact (flat) search.
use lancedb::index::vector::{IvfHnswSqIndexBuilder, IvfPqIndexBuilder, IvfRqIndexBuilder};
use lancedb::index::Index;
use lancedb::DistanceType;
use serde::Serialize;

use super::Store;
use crate::error::{Error, Result};

/// A kind of Lance vector index over the embeddings (L2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexKind {
    /// IVF partitions of product-quantised codes (8 or 4 bits); re-ranking restores recall.
    IvfPq,
    /// IVF partitions of RaBitQ codes (`bits` per dimension).
    IvfRq,
    /// IVF partitions each holding an HNSW graph of 8-bit scalar-quantised vectors; searched with
    /// `ef` candidates per partition.
    IvfHnswSq,
}

impl IndexKind {
    /// Its name in Lance's terms.
    pub fn name(self) -> &'static str {
        match self {
            IndexKind::IvfPq => "IVF-PQ",
            IndexKind::IvfRq => "IVF-RQ",
            IndexKind::IvfHnswSq => "IVF-HNSW-SQ",
        }
    }

    /// Bits of its codes unless told: 1 per dimension for RaBitQ (Lance's default), 8 for PQ
    /// codes and for HNSW-SQ's scalar quantisation.
    pub fn default_bits(self) -> u32 {
        match self {
            IndexKind::IvfRq => 1,
            IndexKind::IvfPq | IndexKind::IvfHnswSq => 8,
        }
    }
}

/// Vector index parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexParams {
    /// Which index.
    pub kind: IndexKind,
    /// IVF partitions.
    pub partitions: u32,
    /// PQ sub-vectors (must divide the dimension; IVF-PQ only).
    pub sub_vectors: u32,
    /// Bits per PQ code (4 or 8), or per dimension of an RQ code; unused by IVF-HNSW-SQ (8).
    pub bits: u32,
}

/// The variable Lance 14 reads, once per process, to choose how an IVF build assigns each row to
/// a partition. Unset ("auto"), an index with partitions × dimension ≥ 1,000,000 (3,162 × 384 at
/// 10M rows) assigns rows through an HNSW graph over the centroids searched at ef 15
/// (lance-index `vector/utils.rs`, `vector/ivf/transform.rs`): some rows land in a partition that
/// is not their nearest, and no `nprobes` finds them, since a search ranks the centroids exactly.
/// Measured at 10M × 384 (docs/benchmarks.md): 0.78 of the true neighbours in the 40 nearest
/// partitions against 0.95 with nearest-centroid assignment. "disabled" assigns exactly.
pub const ASSIGNMENT_ENV: &str = "LANCE_USE_HNSW_SPEEDUP_INDEXING";

/// How this process's IVF builds assign rows to partitions, as [`ASSIGNMENT_ENV`] says:
/// "exact" (tttnn's setting, [`crate::set_library_env`]), or "approximate" where a user asked
/// for Lance's graph assignment ("enabled", or any other value: Lance's auto, approximate past
/// 1,000,000 partitions × dimension).
pub fn partition_assignment() -> &'static str {
    match std::env::var(ASSIGNMENT_ENV).as_deref() {
        Ok("disabled") => "exact",
        _ => "approximate",
    }
}

/// Vectors Lance's IVF training fits each centroid on (`IvfBuildParams::sample_rate`).
const LANCE_SAMPLE_RATE: usize = 256;

/// Rows per partition of an IVF-HNSW index: Lance's advice (its docs: rows/1,048,576 partitions).
const HNSW_PARTITION_ROWS: usize = 1 << 20;

impl IndexParams {
    /// Defaults sized from the data. IVF-PQ and IVF-RQ: √rows partitions, but no more than
    /// rows/256 (at least 1); PQ sub-vectors of 8 dimensions, 8-bit codes; RQ 1 bit per dimension
    /// (Lance's RaBitQ). IVF-HNSW-SQ: one partition per 2^20 rows. IVF needs 256 rows to train.
    /// Sub-vectors of 16 dimensions (LanceDB's usual dim/16) halve the index but lost recall on
    /// real embeddings.
    pub fn sized_for(kind: IndexKind, rows: usize, dim: usize) -> Result<Self> {
        if rows < 256 {
            return Err(Error::setting(
                "index",
                format!(
                    "{} needs at least 256 rows to train, the store has {rows}; use --kind flat",
                    kind.name()
                ),
            ));
        }
        if kind == IndexKind::IvfPq && !dim.is_multiple_of(8) {
            return Err(Error::setting(
                "sub_vectors",
                format!("dimension {dim} is not a multiple of 8: give --sub-vectors (a divisor of {dim})"),
            ));
        }
        // Lance fits each centroid on `sample_rate` (256) vectors and trains only rows/256
        // partitions when asked for more (lance `supported_num_partitions`, with a warning): below
        // 65,536 rows √rows is more than it would train, so ask for what it trains.
        let sqrt = (rows as f64).sqrt().round() as usize;
        let partitions = match kind {
            IndexKind::IvfHnswSq => rows.div_ceil(HNSW_PARTITION_ROWS),
            _ => sqrt.min(rows / LANCE_SAMPLE_RATE).max(1),
        };
        Ok(Self {
            kind,
            partitions: partitions as u32,
            sub_vectors: (dim / 8).max(1) as u32,
            bits: kind.default_bits(),
        })
    }

    /// The parameters of a `kind` index over `rows` vectors of `dim`: what is given, the rest
    /// [`sized_for`] the data.
    ///
    /// [`sized_for`]: IndexParams::sized_for
    pub fn resolve(
        kind: IndexKind,
        rows: usize,
        dim: usize,
        partitions: Option<u32>,
        sub_vectors: Option<u32>,
        bits: Option<u32>,
    ) -> Result<Self> {
        let mut p = match (partitions, sub_vectors) {
            (Some(partitions), Some(sub_vectors)) => Self {
                kind,
                partitions,
                sub_vectors,
                bits: kind.default_bits(),
            },
            _ => Self::sized_for(kind, rows, dim)?,
        };
        p.partitions = partitions.unwrap_or(p.partitions);
        p.sub_vectors = sub_vectors.unwrap_or(p.sub_vectors);
        p.bits = bits.unwrap_or(p.bits);
        if kind == IndexKind::IvfPq
            && (p.sub_vectors == 0 || !dim.is_multiple_of(p.sub_vectors as usize))
        {
            return Err(Error::setting(
                "sub_vectors",
                format!("{} does not divide the dimension {dim}", p.sub_vectors),
            ));
        }
        if kind == IndexKind::IvfPq && !matches!(p.bits, 4 | 8) {
            return Err(Error::setting(
                "bits",
                format!("IVF-PQ codes have 4 or 8 bits, not {}", p.bits),
            ));
        }
        Ok(p)
    }

    /// Its codes in words, for messages: "48 sub-vectors, 8 bits", "1 bit per dimension".
    pub fn codes(&self) -> String {
        match self.kind {
            IndexKind::IvfPq => format!("{} sub-vectors, {} bits", self.sub_vectors, self.bits),
            IndexKind::IvfRq => format!(
                "{} bit{} per dimension",
                self.bits,
                if self.bits == 1 { "" } else { "s" }
            ),
            IndexKind::IvfHnswSq => "8-bit scalar quantisation".to_string(),
        }
    }

    /// PQ's sub-vectors, none for the other kinds (what records and reports say).
    pub fn pq_sub_vectors(&self) -> Option<u32> {
        (self.kind == IndexKind::IvfPq).then_some(self.sub_vectors)
    }
}

impl Store {
    /// Builds (or replaces) the vector index on `embedding`, L2 distance.
    pub fn create_index(&self, p: IndexParams) -> Result<()> {
        let index = match p.kind {
            IndexKind::IvfPq => Index::IvfPq(
                IvfPqIndexBuilder::default()
                    .distance_type(DistanceType::L2)
                    .num_partitions(p.partitions)
                    .num_sub_vectors(p.sub_vectors)
                    .num_bits(p.bits),
            ),
            IndexKind::IvfRq => Index::IvfRq(
                IvfRqIndexBuilder::default()
                    .distance_type(DistanceType::L2)
                    .num_partitions(p.partitions)
                    .num_bits(p.bits),
            ),
            IndexKind::IvfHnswSq => Index::IvfHnswSq(
                IvfHnswSqIndexBuilder::default()
                    .distance_type(DistanceType::L2)
                    .num_partitions(p.partitions),
            ),
        };
        self.block_on(
            self.table
                .create_index(&["embedding"], index)
                .replace(true)
                .execute(),
        )
        .map_err(|e| self.err(e))
    }

    /// Names of the vector indexes on `embedding`.
    pub fn vector_indexes(&self) -> Result<Vec<String>> {
        let idx = self
            .block_on(self.table.list_indices())
            .map_err(|e| self.err(e))?;
        Ok(idx
            .into_iter()
            .filter(|i| i.columns.iter().any(|c| c == "embedding"))
            .map(|i| i.name)
            .collect())
    }

    /// Drops every vector index, leaving exact (flat) search.
    pub fn drop_vector_indexes(&self) -> Result<usize> {
        let names = self.vector_indexes()?;
        for n in &names {
            self.block_on(self.table.drop_index(n))
                .map_err(|e| self.err(e))?;
        }
        Ok(names.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PQ: IndexKind = IndexKind::IvfPq;

    #[test]
    fn defaults_follow_the_documented_rules() {
        assert_eq!(
            IndexParams::sized_for(PQ, 1_000_000, 1024).unwrap(),
            IndexParams {
                kind: PQ,
                partitions: 1000,
                sub_vectors: 128,
                bits: 8
            }
        );
        let p = IndexParams::sized_for(PQ, 100_000, 384).unwrap();
        assert_eq!((p.partitions, p.sub_vectors, p.bits), (316, 48, 8));
        // Below 65,536 rows, what Lance trains: rows/256 (the demo store's 7,300 rows: 28, not 85).
        assert_eq!(
            IndexParams::sized_for(PQ, 7_300, 384).unwrap().partitions,
            28
        );
        assert_eq!(IndexParams::sized_for(PQ, 300, 40).unwrap().partitions, 1);
        assert_eq!(IndexParams::sized_for(PQ, 300, 40).unwrap().sub_vectors, 5);
        assert!(IndexParams::sized_for(PQ, 100, 1024)
            .unwrap_err()
            .to_string()
            .contains("256 rows"));
        assert!(IndexParams::sized_for(PQ, 1000, 30).is_err());
        let rq = IndexParams::sized_for(IndexKind::IvfRq, 10_000_000, 384).unwrap();
        assert_eq!((rq.partitions, rq.bits), (3162, 1));
        let hnsw = IndexParams::sized_for(IndexKind::IvfHnswSq, 10_000_000, 384).unwrap();
        assert_eq!(hnsw.partitions, 10);
    }

    #[test]
    fn given_parameters_override_the_sized_ones_and_are_checked() {
        let p = IndexParams::resolve(PQ, 10_000, 384, Some(7), None, Some(4)).unwrap();
        assert_eq!((p.partitions, p.sub_vectors, p.bits), (7, 48, 4));
        let p = IndexParams::resolve(PQ, 10, 30, Some(2), Some(3), None).unwrap();
        assert_eq!((p.partitions, p.sub_vectors, p.bits), (2, 3, 8));
        // Each kind's own code width when both sizes are given (RaBitQ's is 1, not PQ's 8).
        let p = IndexParams::resolve(IndexKind::IvfRq, 10, 30, Some(2), Some(3), None).unwrap();
        assert_eq!(p.bits, 1);
        let e = IndexParams::resolve(PQ, 10_000, 384, None, Some(7), None).unwrap_err();
        assert!(e.to_string().contains("does not divide"), "{e}");
        let e = IndexParams::resolve(PQ, 10_000, 384, None, None, Some(6)).unwrap_err();
        assert!(e.to_string().contains("4 or 8"), "{e}");
    }

    #[test]
    fn codes_are_described_per_kind() {
        let pq = IndexParams::sized_for(PQ, 100_000, 384).unwrap();
        assert_eq!(pq.codes(), "48 sub-vectors, 8 bits");
        assert_eq!(pq.pq_sub_vectors(), Some(48));
        let rq = IndexParams::sized_for(IndexKind::IvfRq, 100_000, 384).unwrap();
        assert_eq!(rq.codes(), "1 bit per dimension");
        // RaBitQ has no sub-vectors: reports say none rather than PQ's dim/8.
        assert_eq!(rq.pq_sub_vectors(), None);
        let rq4 =
            IndexParams::resolve(IndexKind::IvfRq, 100_000, 384, None, None, Some(4)).unwrap();
        assert_eq!(rq4.codes(), "4 bits per dimension");
    }
}
