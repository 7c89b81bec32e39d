//! Retrieval benchmark: exact (brute-force L2, the paper's IndexFlatL2) against IVF-PQ on one
//! LanceDB store, side by side: latency p50/p99 for k neighbours and IVF-PQ's recall@k against exact.
//!
//! Vectors are synthetic clustered ones at scale (the default: `--rows 100000 --dim 1024`), or a
//! real store made by `tttnn ingest` (`--store DIR`), whose `--query-split` documents are the
//! queries, searched among `--search-split` documents with the query document left out, as
//! `tttnn run` retrieves. Commands and figures: docs/benchmarks.md.
//!
//! With `--s3-latency-ms 0,20,50` the same store is then copied into the local S3 server
//! (scripts/s3_server.py, moto) and the same queries run against `s3://` with that much latency
//! injected before every request, counting requests and bytes per query.
//!
//!     cargo run --example bench_retrieval -- [--rows 100000] [--dim 1024] [--queries 100] [--k 50]
//!     cargo run --example bench_retrieval -- --store runs/demo/store --queries 100
//!
//! With `--table-queries 1000,10000` it also computes the neighbour table of that many queries
//! by matrix products (`tttnn neighbors`' exact search) and checks it against per-query exact
//! search (`table.rs`); `--json FILE` writes every measured row.
mod index;
mod s3;
mod table;

use std::path::PathBuf;
use std::time::Instant;

use tttnn::store::{DatastoreFraction, Document, Retrieval, SearchMode, Store};

/// Exact against IVF-PQ search, on synthetic clustered vectors or a real store.
#[derive(clap::Parser)]
struct Args {
    /// Synthetic vectors in the store.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Synthetic dimension.
    #[arg(long, default_value_t = 1024)]
    dim: usize,
    /// Synthetic Gaussian clusters (default rows/100).
    #[arg(long)]
    clusters: Option<usize>,
    /// Synthetic store directory (reused when it holds the same rows).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Synthetic: search with the runner's `split = 'train'` filter (every synthetic row is train),
    /// to measure what the filter costs.
    #[arg(long)]
    filter_split: bool,
    /// A real store (`tttnn ingest`) instead of synthetic vectors.
    #[arg(long, conflicts_with_all = ["rows", "dim", "clusters", "dir", "filter_split"])]
    store: Option<PathBuf>,
    /// Real store: the split whose documents are the queries.
    #[arg(long, default_value = "test")]
    query_split: String,
    /// Real store: the split searched (the original indexes training documents only).
    #[arg(long, default_value = "train")]
    search_split: String,
    /// Queries per setting.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Neighbours per query.
    #[arg(long, default_value_t = 50)]
    k: usize,
    /// IVF partitions probed, one setting each.
    #[arg(long, value_delimiter = ',', default_value = "10,20,40")]
    nprobes: Vec<usize>,
    /// Refine factors (0: none), one setting each with every nprobes.
    #[arg(long, value_delimiter = ',', default_value = "0,2,5,10")]
    refine: Vec<u32>,
    /// Indexes to build and search, one after the other: KIND[:partitions=P][:sub_vectors=S]
    /// [:bits=B], KIND one of ivf-pq, ivf-rq, ivf-hnsw-sq (defaults: tttnn index's rules).
    #[arg(long, value_delimiter = ',', default_value = "ivf-pq")]
    index_kinds: Vec<String>,
    /// IVF-HNSW-SQ: candidates visited per partition, one setting each (with every nprobes).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    ef: Vec<usize>,
    /// IVF partitions when the index is built (default: tttnn index's rule, √rows).
    #[arg(long)]
    partitions: Option<u32>,
    /// PQ sub-vectors when the index is built (default: tttnn index's rule, dim/8).
    #[arg(long)]
    sub_vectors: Option<u32>,
    /// Rebuild the IVF-PQ index even when the store has one.
    #[arg(long)]
    rebuild_index: bool,
    /// Latencies (ms) injected before every request to the local S3 server, one pass each over
    /// the same queries against a copy of the store there (none: no object-storage pass).
    #[arg(long, value_delimiter = ',')]
    s3_latency_ms: Vec<f64>,
    /// IVF-PQ settings of the object-storage passes, as nprobes:refine (0: none).
    #[arg(long, value_delimiter = ',', default_value = "20:2,40:5")]
    s3_search: Vec<String>,
    /// Queries per object-storage setting (the first of --queries).
    #[arg(long, default_value_t = 30)]
    s3_queries: usize,
    /// Neighbour tables by matrix products (`tttnn neighbors`' exact search), one per count of
    /// queries; the first --queries of them are checked against per-query exact search.
    #[arg(long, value_delimiter = ',')]
    table_queries: Vec<usize>,
    /// Matrix products: store rows per product.
    #[arg(long, default_value_t = 16384)]
    block_rows: usize,
    /// Matrix products: queries per pass over the store.
    #[arg(long, default_value_t = 4096)]
    query_batch: usize,
    /// Matrix products: where they run.
    #[arg(long, value_enum, default_value_t = tttnn::Device::Cpu)]
    device: tttnn::Device,
    /// Matrix products: their precision, one table each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    product: Vec<tttnn::store::Product>,
    /// Queries per index setting (default --queries); with a larger neighbour table, its exact
    /// neighbours are the reference for recall.
    #[arg(long)]
    index_queries: Option<usize>,
    /// Skip the index: no build, no indexed searches.
    #[arg(long)]
    no_index: bool,
    /// Write every measured row to this JSON file (docs/bench/NAME-DATE.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Args {
    /// Queries to generate: the per-query ones and the largest table's.
    fn query_count(&self) -> usize {
        self.table_queries
            .iter()
            .copied()
            .chain(self.index_queries)
            .fold(self.queries, usize::max)
    }
}

/// Peak resident memory of this process since the last [`reset_peak_rss`], in GiB.
fn peak_rss_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / (1024.0 * 1024.0))
}

/// Resets the kernel's peak-RSS mark (Linux: `5` to clear_refs), so the next reading is one phase's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// xorshift64* with Box-Muller: deterministic normals without a dependency.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        ((-2.0 * self.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos())
            as f32
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One query: its vector, the id to leave out and the split to search.
struct Query {
    vector: Vec<f32>,
    exclude_id: Option<String>,
    split: Option<String>,
}

/// Writes `rows` clustered vectors into a fresh store at `dir` (or reuses it) and returns the
/// store with `queries` fresh points of the same clusters.
fn synthetic(args: &Args) -> anyhow::Result<(Store, Vec<Query>, String)> {
    let (rows, dim) = (args.rows, args.dim);
    let clusters = args.clusters.unwrap_or((rows / 100).max(1));
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| format!("/tmp/tttnn-bench-retrieval-{rows}x{dim}").into());
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let centers: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.normal()).collect())
        .collect();
    let point = |rng: &mut Rng, c: usize| -> Vec<f32> {
        centers[c].iter().map(|x| x + 0.5 * rng.normal()).collect()
    };
    let fresh = !dir.join("documents.lance").exists();
    let store = Store::open_or_create(&dir, dim)?;
    if fresh || store.count()? != rows {
        anyhow::ensure!(
            fresh,
            "{} holds a different store; remove it",
            dir.display()
        );
        let t = Instant::now();
        for start in (0..rows).step_by(20_000) {
            let docs: Vec<Document> = (start..(start + 20_000).min(rows))
                .map(|i| Document {
                    id: format!("v{i}"),
                    split: "train".into(),
                    set_name: format!("c{}", i % clusters),
                    source: "synthetic".into(),
                    line: i as u64 + 1,
                    text: String::new(),
                    embedding: point(&mut rng, i % clusters),
                })
                .collect();
            store.add(&docs)?;
        }
        store.compact()?;
        eprintln!(
            "wrote {rows} x {dim} vectors in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    } else {
        // Advance the generator past the stored points so the queries are the same either way.
        for i in 0..rows {
            point(&mut rng, i % clusters);
        }
    }
    let queries = (0..args.query_count())
        .map(|i| Query {
            vector: point(&mut rng, (i * 7919) % clusters),
            exclude_id: None,
            split: args.filter_split.then(|| "train".to_string()),
        })
        .collect();
    let mut what = format!("synthetic: {clusters} Gaussian clusters, σ 0.5");
    if args.filter_split {
        what += ", filtered on split = 'train'";
    }
    Ok((store, queries, what))
}

/// A real store: the stored embeddings of `queries` documents of the query split, spread evenly
/// over its documents in file order.
fn real(args: &Args, path: &std::path::Path) -> anyhow::Result<(Store, Vec<Query>, String)> {
    let store = Store::open(path)?;
    let docs = store.documents_of(&args.query_split, None)?;
    anyhow::ensure!(
        !docs.is_empty(),
        "{}: no `{}` documents to query with (--query-split)",
        path.display(),
        args.query_split
    );
    let n = args.query_count().min(docs.len());
    let mut queries = Vec::with_capacity(n);
    for i in 0..n {
        let d = &docs[i * docs.len() / n];
        let doc = store
            .document(&d.id)?
            .ok_or_else(|| anyhow::anyhow!("document {} vanished", d.id))?;
        queries.push(Query {
            vector: doc.embedding,
            exclude_id: Some(d.id.clone()),
            split: Some(args.search_split.clone()),
        });
    }
    let what = format!(
        "{}: {} queries from `{}`, searching `{}`",
        path.display(),
        n,
        args.query_split,
        args.search_split
    );
    Ok((store, queries, what))
}

/// Latencies (ms) and result ids of every query under `mode`.
fn run(
    store: &Store,
    queries: &[Query],
    k: usize,
    mode: SearchMode,
) -> anyhow::Result<(Vec<f64>, Vec<Vec<String>>)> {
    let mut ms = Vec::with_capacity(queries.len());
    let mut ids = Vec::with_capacity(queries.len());
    for q in queries {
        let r = Retrieval {
            k,
            mode,
            max_distance: None,
            exclude_id: q.exclude_id.clone(),
            split: q.split.clone(),
            datastore: DatastoreFraction::WHOLE,
        };
        let t = Instant::now();
        let found = store.retrieve(&q.vector, &r)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(found.into_iter().map(|n| n.id).collect());
    }
    Ok((ms, ids))
}

fn main() -> anyhow::Result<()> {
    // As the tttnn binary: Lance's exact partition assignment unless the caller set its variable
    // (LANCE_USE_HNSW_SPEEDUP_INDEXING=enabled measures Lance's graph assignment).
    tttnn::set_library_env();
    let args: Args = clap::Parser::parse();
    let (store, all_queries, what) = match &args.store {
        Some(path) => real(&args, path)?,
        None => synthetic(&args)?,
    };
    let queries = &all_queries[..args.queries.min(all_queries.len())];
    let (rows, dim, k) = (store.count()?, store.dim(), args.k);
    // One JSON object per measured row, with the store's shape (docs/bench/).
    let mut records: Vec<serde_json::Value> = Vec::new();
    let base = serde_json::json!({"rows": rows, "dim": dim, "k": k, "what": what});
    let mut record = |fields: serde_json::Value| {
        let mut r = base.clone();
        let o = r.as_object_mut().unwrap();
        for (key, value) in fields.as_object().unwrap() {
            o.insert(key.replace("_at_k", &format!("_at_{k}")), value.clone());
        }
        records.push(r);
    };
    reset_peak_rss();
    println!("{rows} rows x {dim} dims; {what}; k = {k}\n");
    let (exact_ms, truth) = exact(&args, &store, queries)?;
    let per_query_ms = exact_ms.iter().sum::<f64>() / exact_ms.len().max(1) as f64;
    let p50 = percentile(&mut exact_ms.clone(), 0.5);
    let p99 = percentile(&mut exact_ms.clone(), 0.99);
    record(
        serde_json::json!({"method": "exact per query", "queries": queries.len(),
        "p50_ms": p50, "p99_ms": p99, "mean_ms": per_query_ms, "recall_at_k": 1.0,
        "speedup_vs_per_query": 1.0}),
    );
    println!("| rows | dim | search | nprobes | ef | refine | p50 ms | p99 ms | recall@{k} | speed-up vs exact (p50) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!("| {rows} | {dim} | exact | - | - | - | {p50:.2} | {p99:.2} | 1.000 | 1.0x |");
    println!("\npeak RSS while searching: {:.2} GiB", peak_rss_gib());
    let mut largest_table: Option<Vec<Vec<String>>> = None;
    for &product in args
        .product
        .iter()
        .filter(|_| !args.table_queries.is_empty())
    {
        let device = args.device.to_tch()?;
        let matmul_gflops =
            table::plain_matmul_gflops(args.query_batch, dim, args.block_rows, device, product);
        println!("\nNeighbour tables by matrix products on {device:?}, {product} products ({} rows per product, {} queries per pass; a plain libtorch matmul of [{}, {dim}] x [{dim}, {}]: {matmul_gflops:.1} GFLOP/s):\n",
            args.block_rows, args.query_batch, args.query_batch, args.block_rows);
        println!("| queries | wall s | ms/query | speed-up vs per-query exact | GFLOP/s | of the plain matmul | recall@{k} (first {}) | equal to per-query | candidates/query | peak RSS GiB |", truth.len());
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for &n in &args.table_queries {
            let queries = &all_queries[..n.min(all_queries.len())];
            let run = table::matmul_table(&args, &store, queries, device, product)?;
            let n = run.found.len();
            let checked = &run.found[..truth.len().min(n)];
            let recall = recall(checked, &truth[..checked.len()]);
            let equal = checked == &truth[..checked.len()];
            if equal && product.is_f32() && largest_table.as_ref().is_none_or(|t| t.len() < n) {
                largest_table = Some(run.found.clone());
            }
            let ms = run.seconds * 1e3 / n as f64;
            let gflops = 2.0 * (n * rows * dim) as f64 / run.seconds / 1e9;
            let candidates = run.candidates as f64 / n as f64;
            // The store is read once per pass of --query-batch queries.
            let passes = n.div_ceil(args.query_batch);
            let gb_per_s = (passes * rows * dim * 4) as f64 / run.seconds / 1e9;
            println!(
                "| {n} | {:.1} | {ms:.2} | {:.1}x | {gflops:.1} | {:.0}% | {recall:.3} | {equal} | {candidates:.1} | {:.2} |",
                run.seconds,
                per_query_ms / ms,
                100.0 * gflops / matmul_gflops,
                run.peak_rss_gib
            );
            record(
                serde_json::json!({"method": "exact by matmul", "queries": n,
                "device": format!("{device:?}"), "product": product.to_string(),
                "wall_s": run.seconds, "ms_per_query": ms, "queries_per_s": n as f64 / run.seconds,
                "speedup_vs_per_query": per_query_ms / ms, "gflops": gflops,
                "matmul_gflops": matmul_gflops, "recall_at_k": recall, "checked_queries": checked.len(),
                "equal_to_per_query": equal, "candidates_per_query": candidates,
                "block_rows": args.block_rows, "query_batch": args.query_batch,
                "gb_per_s_read": gb_per_s,
                "peak_rss_gib": run.peak_rss_gib}),
            );
        }
    }
    if !args.no_index {
        // The indexes' recall is measured against exact neighbours: the largest table's (exact by
        // construction, and checked against per-query search above) when it has more queries.
        let n = args
            .index_queries
            .unwrap_or(args.queries)
            .min(all_queries.len());
        let (index_queries, index_truth) = match &largest_table {
            Some(found) if n > truth.len() && found.len() >= n => (&all_queries[..n], &found[..n]),
            _ => (queries, &truth[..]),
        };
        println!(
            "\nIndexes, {} queries (recall@{k} against exact neighbours):\n",
            index_queries.len()
        );
        println!("| rows | dim | search | nprobes | ef | refine | p50 ms | p99 ms | recall@{k} | speed-up vs exact (p50) |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        index::measure(&args, &store, index_queries, index_truth, p50, &mut record)?;
    }
    if !args.s3_latency_ms.is_empty() {
        s3::object_storage(&args, &store, queries, &truth)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&records)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Exact search's latencies and results for `queries`; on a local synthetic store they are kept
/// in the store's directory and reused by later runs with the same queries (exact search over
/// 10M vectors takes seconds per query).
fn exact(
    args: &Args,
    store: &Store,
    queries: &[Query],
) -> anyhow::Result<(Vec<f64>, Vec<Vec<String>>)> {
    let cache = (args.store.is_none() && !tttnn::store::is_uri(store.path())).then(|| {
        store.path().join(format!(
            "bench-exact-k{}-{}q{}.json",
            args.k,
            queries.len(),
            if args.filter_split { "-split" } else { "" }
        ))
    });
    if let Some(path) = cache.as_ref().filter(|p| p.exists()) {
        eprintln!("exact results from {}", path.display());
        return Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?);
    }
    let found = run(store, queries, args.k, SearchMode::Exact)?;
    if let Some(path) = cache {
        std::fs::write(path, serde_json::to_string(&found)?)?;
    }
    Ok(found)
}

/// Recall@k of `found` against `truth`, query by query.
fn recall(found: &[Vec<String>], truth: &[Vec<String>]) -> f64 {
    let (hits, wanted) = found.iter().zip(truth).fold((0, 0), |(h, w), (f, t)| {
        (
            h + f.iter().filter(|id| t.contains(id)).count(),
            w + t.len(),
        )
    });
    hits as f64 / wanted.max(1) as f64
}
