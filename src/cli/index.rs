//! `tttnn index`: build the store's vector index (IVF-PQ, IVF-RQ or IVF-HNSW-SQ), or drop it to
//! search exactly (flat).
use std::path::PathBuf;
use std::time::Instant;

use tttnn::store::{IndexKind, IndexParams, Store};
use tttnn::Result;

use super::ui::Printer;

/// Kind of vector index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// IVF partitions with RaBitQ codes (`--bits` per dimension); refine for recall.
    // The default: at 10M x 384 it reached recall@50 0.984 at 14 ms p50 (docs/benchmarks.md).
    IvfRq,
    /// IVF partitions with product-quantised codes (`--sub-vectors`, `--bits`); refine for recall.
    IvfPq,
    /// IVF partitions of HNSW graphs over 8-bit scalar-quantised vectors; search with `--ef`.
    IvfHnswSq,
    /// No ANN index: exact brute-force L2, the paper's `IndexFlatL2`.
    Flat,
}

/// Build the store's vector index. Defaults for IVF-RQ: √rows partitions (at most rows/256, what
/// Lance trains), 1 bit per dimension; IVF-PQ: the same partitions, dim/8 sub-vectors (8
/// dimensions each), 8 bits; IVF-HNSW-SQ: one partition per 2^20 rows. IVF needs at least 256 rows.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The LanceDB store directory.
    #[arg(long, env = "TTTNN_STORE")]
    pub store: PathBuf,
    /// Index kind.
    #[arg(long, value_enum, default_value_t = Kind::IvfRq)]
    pub kind: Kind,
    /// IVF partitions (default √rows, at most rows/256; IVF-HNSW-SQ: one per 2^20 rows).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// PQ sub-vectors; must divide the dimension (default dim/8).
    #[arg(long)]
    pub sub_vectors: Option<u32>,
    /// Bits per PQ code (4 or 8; default 8), or per dimension of an RQ code (default 1).
    #[arg(long)]
    pub bits: Option<u32>,
}

/// Builds or drops the index.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let store = Store::open(&args.store)?;
    let rows = store.count()?;
    let t = Instant::now();
    let kind = match args.kind {
        Kind::Flat => {
            let n = store.drop_vector_indexes()?;
            return p.out(serde_json::json!({"kind": "flat", "rows": rows, "dropped_indexes": n}));
        }
        Kind::IvfRq => IndexKind::IvfRq,
        Kind::IvfPq => IndexKind::IvfPq,
        Kind::IvfHnswSq => IndexKind::IvfHnswSq,
    };
    let params = IndexParams::resolve(
        kind,
        rows,
        store.dim(),
        args.partitions,
        args.sub_vectors,
        args.bits,
    )?;
    let assignment = tttnn::store::partition_assignment();
    p.say(format!(
        "index: {} over {rows} rows: {} partitions, {}, rows assigned to partitions {assignment}ly",
        kind.name(),
        params.partitions,
        params.codes()
    ));
    store.create_index(params)?;
    p.out(serde_json::json!({"kind": kind, "rows": rows, "partitions": params.partitions, "sub_vectors": params.pq_sub_vectors(), "bits": params.bits, "assignment": assignment, "seconds": t.elapsed().as_secs_f64()}))
}
