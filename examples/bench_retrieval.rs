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
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use tttnn::store::{Document, IvfPqParams, Retrieval, SearchMode, Store};

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
    let queries = (0..args.queries)
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
    let n = args.queries.min(docs.len());
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
        };
        let t = Instant::now();
        let found = store.retrieve(&q.vector, &r)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(found.into_iter().map(|n| n.id).collect());
    }
    Ok((ms, ids))
}

fn main() -> anyhow::Result<()> {
    let args: Args = clap::Parser::parse();
    let (store, queries, what) = match &args.store {
        Some(path) => real(&args, path)?,
        None => synthetic(&args)?,
    };
    let (rows, dim, k) = (store.count()?, store.dim(), args.k);
    if args.rebuild_index || store.vector_indexes()?.is_empty() {
        let p = IvfPqParams::resolve(rows, dim, args.partitions, args.sub_vectors, 8)?;
        reset_peak_rss();
        let t = Instant::now();
        store.create_ivf_pq(p)?;
        println!(
            "IVF-PQ index: {} partitions, {} sub-vectors, {} bits, built in {:.1} s, peak RSS {:.2} GiB",
            p.partitions,
            p.sub_vectors,
            p.bits,
            t.elapsed().as_secs_f64(),
            peak_rss_gib()
        );
    }
    reset_peak_rss();
    println!("{rows} rows x {dim} dims; {what}; k = {k}\n");
    let (mut exact_ms, truth) = exact(&args, &store, &queries)?;
    let p50 = percentile(&mut exact_ms, 0.5);
    let p99 = percentile(&mut exact_ms, 0.99);
    println!("| rows | dim | search | nprobes | refine | p50 ms | p99 ms | recall@{k} | speed-up vs exact (p50) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!("| {rows} | {dim} | exact | - | - | {p50:.2} | {p99:.2} | 1.000 | 1.0x |");
    for &nprobes in &args.nprobes {
        for &refine in &args.refine {
            let mode = SearchMode::Indexed {
                nprobes,
                refine_factor: (refine > 0).then_some(refine),
            };
            let (mut ms, found) = run(&store, &queries, k, mode)?;
            let recall = recall(&found, &truth);
            let a = percentile(&mut ms, 0.5);
            let b = percentile(&mut ms, 0.99);
            let refine = if refine > 0 {
                refine.to_string()
            } else {
                "-".into()
            };
            println!(
                "| {rows} | {dim} | IVF-PQ | {nprobes} | {refine} | {a:.2} | {b:.2} | {recall:.3} | {:.1}x |",
                p50 / a
            );
        }
    }
    println!("\npeak RSS while searching: {:.2} GiB", peak_rss_gib());
    if !args.s3_latency_ms.is_empty() {
        object_storage(&args, &store, &queries, &truth)?;
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

/// The local S3 server with the store uploaded, driven over its stdin (scripts/s3_server.py).
struct S3Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Requests and bytes the server counted since the last reset.
#[derive(serde::Deserialize)]
struct S3Stats {
    requests: u64,
    by_method: std::collections::BTreeMap<String, u64>,
    bytes_sent: u64,
}

impl S3Server {
    /// Starts the server with the local store `dir` uploaded to `s3://bench/store`.
    fn start(dir: &Path) -> anyhow::Result<(Self, String)> {
        let python = std::env::var("TTTNN_S3_PYTHON").map_err(|_| {
            anyhow::anyhow!("TTTNN_S3_PYTHON is unset: run scripts/setup and source .tttnn-env")
        })?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3_server.py");
        let t = Instant::now();
        let mut child = Command::new(python)
            .arg(script)
            .arg("bench")
            .arg("--upload")
            .arg(format!("{}=bench/store", dir.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut endpoint = String::new();
        stdout.read_line(&mut endpoint)?;
        anyhow::ensure!(endpoint.starts_with("http://"), "no endpoint: {endpoint:?}");
        eprintln!(
            "uploaded {} to the local S3 server in {:.1}s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
        Ok((
            S3Server {
                child,
                stdin,
                stdout,
            },
            endpoint.trim().to_string(),
        ))
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }

    fn stats(&mut self) -> anyhow::Result<S3Stats> {
        self.send("stats")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The object-storage passes: per injected latency, a fresh open of the store on S3, its first
/// (cold) query, then every `--s3-search` setting over the first `--s3-queries` queries.
fn object_storage(
    args: &Args,
    store: &Store,
    queries: &[Query],
    truth: &[Vec<String>],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !tttnn::store::is_uri(store.path()),
        "the object-storage pass copies a local store"
    );
    let settings = args
        .s3_search
        .iter()
        .map(|s| {
            let (n, r) = s
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--s3-search {s}: want nprobes:refine"))?;
            Ok((n.parse::<usize>()?, r.parse::<u32>()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut server, endpoint) = S3Server::start(store.path())?;
    for (var, value) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        std::env::set_var(var, value);
    }
    let n = args.s3_queries.min(queries.len());
    let (queries, truth) = (&queries[..n], &truth[..n]);
    let k = args.k;
    println!("\nThe same store on the local S3 server (moto), {n} queries per setting:\n");
    println!("| injected latency ms | search | nprobes | refine | p50 ms | p99 ms | recall@{k} | requests/query | KiB/query | requests by method |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &latency in &args.s3_latency_ms {
        server.send(&format!("latency {latency}"))?;
        server.send("reset")?;
        let t = Instant::now();
        let remote = Store::open(Path::new("s3://bench/store"))?;
        let (nprobes, refine) = settings[0];
        let mode = SearchMode::Indexed {
            nprobes,
            refine_factor: (refine > 0).then_some(refine),
        };
        let (_, first) = run(&remote, &queries[..1], k, mode)?;
        let cold = t.elapsed().as_secs_f64() * 1e3;
        let s = server.stats()?;
        println!(
            "| {latency} | open + first query | {nprobes} | {refine} | {cold:.1} | - | {:.3} | {} | {:.1} | {:?} |",
            recall(&first, &truth[..1]),
            s.requests,
            s.bytes_sent as f64 / 1024.0,
            s.by_method
        );
        for &(nprobes, refine) in &settings {
            let mode = SearchMode::Indexed {
                nprobes,
                refine_factor: (refine > 0).then_some(refine),
            };
            // The same queries twice: the first pass reads index partitions for the first time,
            // the repeat finds them in Lance's index cache.
            for pass in ["IVF-PQ", "IVF-PQ, repeated"] {
                server.send("reset")?;
                let (mut ms, found) = run(&remote, queries, k, mode)?;
                let s = server.stats()?;
                let per = |x: u64| x as f64 / n as f64;
                println!(
                    "| {latency} | {pass} | {nprobes} | {refine} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} | {:?} |",
                    percentile(&mut ms, 0.5),
                    percentile(&mut ms, 0.99),
                    recall(&found, truth),
                    per(s.requests),
                    per(s.bytes_sent) / 1024.0,
                    s.by_method
                );
            }
        }
    }
    Ok(())
}
