//! `tttnn index`: build the store's vector index (IVF-PQ), or drop it to search exactly (flat).
use std::path::PathBuf;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::store::{IvfPqParams, Store};

/// Kind of vector index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// IVF partitions with product-quantised codes; fast, approximate (refine for recall).
    IvfPq,
    /// No ANN index: exact brute-force L2, the paper's `IndexFlatL2`.
    Flat,
}

/// Build the store's vector index. Defaults: √rows partitions, dim/8 sub-vectors (8 dimensions
/// each), 8 bits; IVF-PQ needs at least 256 rows.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The LanceDB store directory.
    #[arg(long, env = "TTTNN_STORE")]
    pub store: PathBuf,
    /// Index kind.
    #[arg(long, value_enum, default_value_t = Kind::IvfPq)]
    pub kind: Kind,
    /// IVF partitions (default √rows).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// PQ sub-vectors; must divide the dimension (default dim/8).
    #[arg(long)]
    pub sub_vectors: Option<u32>,
    /// Bits per PQ code.
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
}

/// Builds or drops the index.
pub fn run(args: Args, quiet: bool) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    let store = rt.block_on(Store::open(&args.store))?;
    let rows = rt.block_on(store.count())?;
    let t = Instant::now();
    match args.kind {
        Kind::Flat => {
            let n = rt.block_on(store.drop_vector_indexes())?;
            println!(
                "{}",
                serde_json::json!({"kind": "flat", "rows": rows, "dropped_indexes": n})
            );
        }
        Kind::IvfPq => {
            let bad = |m: String| Error::BadSetting {
                field: "index".into(),
                message: m,
            };
            let mut p = match (args.partitions, args.sub_vectors) {
                (Some(partitions), Some(sub_vectors)) => IvfPqParams {
                    partitions,
                    sub_vectors,
                    bits: args.bits,
                },
                _ => IvfPqParams::sized_for(rows, store.dim()).map_err(bad)?,
            };
            p.partitions = args.partitions.unwrap_or(p.partitions);
            p.sub_vectors = args.sub_vectors.unwrap_or(p.sub_vectors);
            p.bits = args.bits;
            if p.sub_vectors == 0 || !store.dim().is_multiple_of(p.sub_vectors as usize) {
                return Err(Error::BadSetting {
                    field: "sub-vectors".into(),
                    message: format!(
                        "{} does not divide the dimension {}",
                        p.sub_vectors,
                        store.dim()
                    ),
                });
            }
            if !quiet {
                eprintln!(
                    "index: IVF-PQ over {rows} rows: {} partitions, {} sub-vectors, {} bits",
                    p.partitions, p.sub_vectors, p.bits
                );
            }
            rt.block_on(store.create_ivf_pq(p))?;
            println!(
                "{}",
                serde_json::json!({"kind": "ivf-pq", "rows": rows, "partitions": p.partitions, "sub_vectors": p.sub_vectors, "bits": p.bits, "seconds": t.elapsed().as_secs_f64()})
            );
        }
    }
    Ok(())
}
