//! What a batch search (`exact_batch.rs`) is asked: its queries, what it keeps, the precision of
//! its matrix products and the slice of the store's rows it reads.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::task::Shard;

/// The precision of the distance products. Whatever it is, the candidates they select are
/// re-ranked in fp32 by Lance's L2 kernel; with fp32 (the default) the selection provably misses
/// nothing, with fp16/bf16 (for GPUs) its bound assumes fp32 accumulation, as cuBLAS and the CPU do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    /// fp32 products: exact selection.
    #[default]
    F32,
    /// fp16 products, fp32 re-rank.
    F16,
    /// bf16 products, fp32 re-rank.
    Bf16,
}

impl Product {
    /// The libtorch kind of the products.
    pub fn kind(self) -> Kind {
        match self {
            Product::F32 => Kind::Float,
            Product::F16 => Kind::Half,
            Product::Bf16 => Kind::BFloat16,
        }
    }

    /// Whether this is the default (tables record the product only when it is not).
    pub fn is_f32(&self) -> bool {
        *self == Product::F32
    }

    /// Relative error bound of one product distance, in units of (‖q‖ + ‖x‖)², for dimension
    /// `dim`. fp32: the dot product's worst case γ_d = d·u plus the norms' and Lance's own kernel's
    /// (each ≤ γ_d of the same scale), doubled for safety. Reduced precision adds the rounding of
    /// both inputs and of the output (3·u_p of 2‖q‖‖x‖ ≤ (‖q‖ + ‖x‖)²), again doubled.
    pub(super) fn tolerance(self, dim: usize) -> f64 {
        let u32 = f64::powi(2.0, -24);
        let fp32 = 2.0 * 3.0 * (dim as f64 + 4.0) * u32;
        let low = match self {
            Product::F32 => 0.0,
            Product::F16 => f64::powi(2.0, -11),
            Product::Bf16 => f64::powi(2.0, -8),
        };
        fp32 + 2.0 * 3.0 * low
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Product::F32 => "f32",
            Product::F16 => "f16",
            Product::Bf16 => "bf16",
        })
    }
}

/// One contiguous slice J/M of the store's rows, in storage order: rows ⌊J·N/M⌋ to ⌊(J+1)·N/M⌋.
/// Slices split the store the way shards split the queries, so N × M workers search it at once
/// (the original's 180 servers, each holding part of the index); their partial top-k merge into
/// the exact global top-k (`NeighborTable::load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// This slice, 0-based.
    pub index: usize,
    /// Number of slices.
    pub count: usize,
}

impl Slice {
    /// The whole store.
    pub const ALL: Slice = Slice { index: 0, count: 1 };

    /// The row range `[start, end)` of this slice of `rows` rows.
    pub fn rows(&self, rows: usize) -> std::ops::Range<usize> {
        let at = |j: usize| (j as u128 * rows as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl FromStr for Slice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let part: Shard = s
            .parse()
            .map_err(|_| format!("`{s}` is not a slice: write J/M with 0 <= J < M, e.g. 0/4"))?;
        Ok(Slice {
            index: part.index,
            count: part.count,
        })
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One query of a batch search.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchQuery {
    /// The query vector (a test document's stored embedding).
    pub vector: Vec<f32>,
    /// Leave this document out (the query document itself).
    pub exclude_id: Option<String>,
}

/// How a batch search runs: what it keeps (as [`super::Retrieval`]) and where it computes.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSearch {
    /// Neighbours per query.
    pub k: usize,
    /// Search only rows of this split.
    pub split: Option<String>,
    /// Drop neighbours farther than this (unsquared L2).
    pub max_distance: Option<f32>,
    /// The part of the store's rows searched.
    pub slice: Slice,
    /// Precision of the products.
    pub product: Product,
    /// Where the products run.
    pub device: tch::Device,
    /// Store rows per product.
    pub block_rows: usize,
    /// Search only this part of the store (as [`super::Retrieval`]'s).
    pub datastore: super::DatastoreFraction,
}
