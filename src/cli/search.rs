//! `tttnn search`: a text's (or a stored document's) nearest neighbours in the store.
use std::path::PathBuf;

use tttnn::embed::{self, Encoder};
use tttnn::store::{self, DatastoreFraction, Retrieval, SearchMode, Store};
use tttnn::{Device, Error, Result};

use super::ui::Printer;

/// Search the store: neighbours nearest first, with unsquared L2 distances.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The LanceDB store directory.
    #[arg(long, env = "TTTNN_STORE")]
    pub store: PathBuf,
    /// Encoder directory (needed to embed TEXT).
    #[arg(long, env = "TTTNN_ENCODER")]
    pub encoder: Option<PathBuf>,
    /// Number of neighbours.
    #[arg(short, long, default_value_t = 50)]
    pub k: usize,
    /// IVF partitions to probe when an index exists.
    #[arg(long, default_value_t = store::DEFAULT_NPROBES)]
    pub nprobes: usize,
    /// Re-rank refine_factor·k indexed candidates by exact distance; 0: none (the codes' distances).
    #[arg(long, default_value_t = store::DEFAULT_REFINE_FACTOR)]
    pub refine_factor: u32,
    /// IVF-HNSW-SQ index: candidates visited per partition (Lance's default when unset).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Exact brute-force search even when an index exists (the paper's IndexFlatL2).
    #[arg(long)]
    pub exact: bool,
    /// Drop neighbours farther than this (unsquared L2).
    #[arg(long)]
    pub max_distance: Option<f32>,
    /// Search only documents of this split (e.g. `train`: the original retrieves training documents).
    #[arg(long)]
    pub split: Option<String>,
    /// Search only this fraction of the store, as `tttnn run --datastore-fraction` does.
    #[arg(long, default_value_t = DatastoreFraction::WHOLE.fraction)]
    pub datastore_fraction: f64,
    /// --datastore-fraction: the seed of the hash that picks the rows.
    #[arg(long, default_value_t = DatastoreFraction::WHOLE.seed)]
    pub datastore_seed: u64,
    /// Use this stored document's embedding as the query, and leave the document itself out.
    #[arg(long, conflicts_with = "text")]
    pub doc_id: Option<String>,
    /// Query text.
    #[arg(required_unless_present = "doc_id")]
    pub text: Option<String>,
    /// Where the encoder runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu, env = "TTTNN_ENCODER_DEVICE")]
    pub device: Device,
    /// Encoder precision: fp32 (the original's), or the departures tf32 and fp16 (CUDA only).
    #[arg(long, value_enum, default_value_t = embed::Precision::Fp32, env = "TTTNN_ENCODER_PRECISION")]
    pub precision: embed::Precision,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the search and prints rank, id, set, distance and the start of each text.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let store = Store::open(&args.store)?;
    let (vector, exclude_id) = match (&args.doc_id, &args.text) {
        (Some(id), _) => {
            let doc = store.document(id)?.ok_or_else(|| {
                Error::setting(
                    "doc-id",
                    format!("no document `{id}` in {}", args.store.display()),
                )
            })?;
            (doc.embedding, Some(id.clone()))
        }
        (None, Some(text)) => {
            let dir = args
                .encoder
                .as_ref()
                .ok_or_else(|| Error::setting("encoder", "--encoder is needed to embed TEXT"))?;
            let options = tttnn::embed::EncoderOptions {
                precision: args.precision,
                ..Default::default()
            };
            let mut enc = Encoder::load_with(dir, args.device, options)?;
            (
                enc.embed(&[text.as_str()], tttnn::embed::Batching::rows(1))?
                    .remove(0),
                None,
            )
        }
        (None, None) => return Err(Error::setting("text", "give TEXT or --doc-id")),
    };
    let mode = store.default_search_mode(args.exact, args.nprobes, args.refine_factor, args.ef)?;
    let datastore = DatastoreFraction {
        fraction: args.datastore_fraction,
        seed: args.datastore_seed,
    };
    datastore.check()?;
    let r = Retrieval {
        k: args.k,
        mode,
        max_distance: args.max_distance,
        exclude_id,
        split: args.split.clone(),
        datastore,
    };
    let t = std::time::Instant::now();
    let neighbors = store.retrieve(&vector, &r)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let rows: Vec<_> = neighbors
            .iter()
            .enumerate()
            .map(|(i, n)| serde_json::json!({"rank": i + 1, "id": n.id, "set_name": n.set_name, "distance": n.distance, "text": n.text}))
            .collect();
        p.out(serde_json::Value::Array(rows))?;
    } else {
        p.out(format!(
            "{:>4}  {:<28} {:<18} {:>9}  text",
            "rank", "id", "set", "distance"
        ))?;
        for (i, n) in neighbors.iter().enumerate() {
            let snippet: String = n
                .text
                .chars()
                .take(60)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            p.out(format!(
                "{:>4}  {:<28} {:<18} {:>9.4}  {snippet}",
                i + 1,
                n.id,
                n.set_name,
                n.distance
            ))?;
        }
    }
    p.say(format!(
        "search: {} neighbours in {ms:.1} ms ({})",
        neighbors.len(),
        match mode {
            SearchMode::Exact => "exact",
            SearchMode::Indexed { .. } => "the vector index",
        }
    ));
    Ok(())
}
