//! Vector index administration: IVF-PQ sized from the data (or as asked), and dropping it to go
//! back to exact (flat) search.
use lancedb::index::vector::IvfPqIndexBuilder;
use lancedb::index::Index;
use lancedb::DistanceType;

use super::Store;
use crate::error::{Error, Result};

/// IVF-PQ parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IvfPqParams {
    /// IVF partitions.
    pub partitions: u32,
    /// PQ sub-vectors (must divide the dimension).
    pub sub_vectors: u32,
    /// Bits per PQ code.
    pub bits: u32,
}

/// Vectors Lance's IVF training fits each centroid on (`IvfBuildParams::sample_rate`).
const LANCE_SAMPLE_RATE: usize = 256;

impl IvfPqParams {
    /// Defaults sized from the data: √rows partitions, but no more than rows/256 (at least 1),
    /// sub-vectors of 8 dimensions, 8-bit codes. IVF-PQ needs 256 rows to train its codebooks.
    /// Sub-vectors of 16 dimensions (LanceDB's usual dim/16) halve the index but lost recall on
    /// real embeddings.
    pub fn sized_for(rows: usize, dim: usize) -> Result<Self> {
        if rows < 256 {
            return Err(Error::setting("index", format!("IVF-PQ needs at least 256 rows to train 8-bit codebooks, the store has {rows}; use --kind flat")));
        }
        if !dim.is_multiple_of(8) {
            return Err(Error::setting(
                "sub_vectors",
                format!("dimension {dim} is not a multiple of 8: give --sub-vectors (a divisor of {dim})"),
            ));
        }
        // Lance fits each centroid on `sample_rate` (256) vectors and trains only rows/256
        // partitions when asked for more (lance `supported_num_partitions`, with a warning): below
        // 65,536 rows √rows is more than it would train, so ask for what it trains.
        let sqrt = (rows as f64).sqrt().round() as usize;
        Ok(Self {
            partitions: sqrt.min(rows / LANCE_SAMPLE_RATE).max(1) as u32,
            sub_vectors: (dim / 8) as u32,
            bits: 8,
        })
    }

    /// The parameters for `rows` vectors of `dim`: what is given, the rest [`sized_for`] the data.
    ///
    /// [`sized_for`]: IvfPqParams::sized_for
    pub fn resolve(
        rows: usize,
        dim: usize,
        partitions: Option<u32>,
        sub_vectors: Option<u32>,
        bits: u32,
    ) -> Result<Self> {
        let mut p = match (partitions, sub_vectors) {
            (Some(partitions), Some(sub_vectors)) => Self {
                partitions,
                sub_vectors,
                bits,
            },
            _ => Self::sized_for(rows, dim)?,
        };
        p.partitions = partitions.unwrap_or(p.partitions);
        p.sub_vectors = sub_vectors.unwrap_or(p.sub_vectors);
        p.bits = bits;
        if p.sub_vectors == 0 || !dim.is_multiple_of(p.sub_vectors as usize) {
            return Err(Error::setting(
                "sub_vectors",
                format!("{} does not divide the dimension {dim}", p.sub_vectors),
            ));
        }
        Ok(p)
    }
}

impl Store {
    /// Builds (or replaces) the IVF-PQ vector index on `embedding`, L2 distance.
    pub fn create_ivf_pq(&self, p: IvfPqParams) -> Result<()> {
        let builder = IvfPqIndexBuilder::default()
            .distance_type(DistanceType::L2)
            .num_partitions(p.partitions)
            .num_sub_vectors(p.sub_vectors)
            .num_bits(p.bits);
        self.block_on(
            self.table
                .create_index(&["embedding"], Index::IvfPq(builder))
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

    #[test]
    fn ivf_pq_defaults_follow_the_documented_rule() {
        assert_eq!(
            IvfPqParams::sized_for(1_000_000, 1024).unwrap(),
            IvfPqParams {
                partitions: 1000,
                sub_vectors: 128,
                bits: 8
            }
        );
        assert_eq!(
            IvfPqParams::sized_for(100_000, 384).unwrap(),
            IvfPqParams {
                partitions: 316,
                sub_vectors: 48,
                bits: 8
            }
        );
        // Below 65,536 rows, what Lance trains: rows/256 (the demo store's 7,300 rows: 28, not 85).
        assert_eq!(IvfPqParams::sized_for(7_300, 384).unwrap().partitions, 28);
        assert_eq!(IvfPqParams::sized_for(300, 40).unwrap().partitions, 1);
        assert_eq!(IvfPqParams::sized_for(300, 40).unwrap().sub_vectors, 5);
        assert!(IvfPqParams::sized_for(100, 1024)
            .unwrap_err()
            .to_string()
            .contains("256 rows"));
        assert!(IvfPqParams::sized_for(1000, 30).is_err());
    }

    #[test]
    fn given_parameters_override_the_sized_ones_and_are_checked() {
        let p = IvfPqParams::resolve(10_000, 384, Some(7), None, 4).unwrap();
        assert_eq!((p.partitions, p.sub_vectors, p.bits), (7, 48, 4));
        let p = IvfPqParams::resolve(10, 30, Some(2), Some(3), 8).unwrap();
        assert_eq!((p.partitions, p.sub_vectors), (2, 3));
        let e = IvfPqParams::resolve(10_000, 384, None, Some(7), 8).unwrap_err();
        assert!(e.to_string().contains("does not divide"), "{e}");
    }
}
