//! `tttnn index`: build the store's vector index (IVF-PQ), or drop it to search exactly (flat).
use std::path::PathBuf;
use std::time::Instant;

use tttnn::store::{IvfPqParams, Store};
use tttnn::Result;

use super::ui::Printer;

/// Kind of vector index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// IVF partitions with product-quantised codes; fast, approximate (refine for recall).
    IvfPq,
    /// No ANN index: exact brute-force L2, the paper's `IndexFlatL2`.
    Flat,
}

/// Build the store's vector index. Defaults: √rows partitions (at most rows/256, what Lance
/// trains), dim/8 sub-vectors (8 dimensions each), 8 bits; IVF-PQ needs at least 256 rows.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The LanceDB store directory.
    #[arg(long, env = "TTTNN_STORE")]
    pub store: PathBuf,
    /// Index kind.
    #[arg(long, value_enum, default_value_t = Kind::IvfPq)]
    pub kind: Kind,
    /// IVF partitions (default √rows, at most rows/256).
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
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let store = Store::open(&args.store)?;
    let rows = store.count()?;
    let t = Instant::now();
    match args.kind {
        Kind::Flat => {
            let n = store.drop_vector_indexes()?;
            p.out(serde_json::json!({"kind": "flat", "rows": rows, "dropped_indexes": n}))
        }
        Kind::IvfPq => {
            let params = IvfPqParams::resolve(
                rows,
                store.dim(),
                args.partitions,
                args.sub_vectors,
                args.bits,
            )?;
            p.say(format!(
                "index: IVF-PQ over {rows} rows: {} partitions, {} sub-vectors, {} bits",
                params.partitions, params.sub_vectors, params.bits
            ));
            store.create_ivf_pq(params)?;
            p.out(serde_json::json!({"kind": "ivf-pq", "rows": rows, "partitions": params.partitions, "sub_vectors": params.sub_vectors, "bits": params.bits, "seconds": t.elapsed().as_secs_f64()}))
        }
    }
}
