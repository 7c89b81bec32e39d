//! Retrieval benchmark: exact (brute-force L2, the paper's IndexFlatL2) against IVF-PQ on one
//! LanceDB store, side by side: latency p50/p99 for k neighbours and IVF-PQ's recall@k against exact.
//! Synthetic clustered vectors stand in for encoder embeddings at scale.
//!
//!     cargo run --example bench_retrieval -- [--rows 100000] [--dim 1024] [--queries 100] [--k 50] [--dir DIR]
use std::time::Instant;

use tttnn::store::{Document, IvfPqParams, SearchMode, Store};

/// Exact against IVF-PQ search on synthetic clustered vectors.
#[derive(clap::Parser)]
struct Args {
    /// Vectors in the store.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Dimension.
    #[arg(long, default_value_t = 1024)]
    dim: usize,
    /// Queries per setting.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Neighbours per query.
    #[arg(long, default_value_t = 50)]
    k: usize,
    /// Gaussian clusters (default rows/100).
    #[arg(long)]
    clusters: Option<usize>,
    /// Store directory (reused when it holds the same rows).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        rows,
        dim,
        queries,
        k,
        clusters,
        dir,
    } = clap::Parser::parse();
    let clusters = clusters.unwrap_or((rows / 100).max(1));
    let dir = dir.unwrap_or_else(|| format!("/tmp/tttnn-bench-retrieval-{rows}x{dim}").into());
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let centers: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.normal()).collect())
        .collect();
    let point = |rng: &mut Rng, c: usize| -> Vec<f32> {
        centers[c].iter().map(|x| x + 0.5 * rng.normal()).collect()
    };

    let fresh = !dir.join("documents.lance").exists();
    let store = Store::open_or_create(&dir, dim).await?;
    if fresh || store.count().await? != rows {
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
            store.add(&docs).await?;
        }
        store.compact().await?;
        eprintln!(
            "wrote {rows} x {dim} vectors in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let p = IvfPqParams::sized_for(rows, dim).map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        store.create_ivf_pq(p).await?;
        eprintln!("IVF-PQ {p:?} built in {:.1}s", t.elapsed().as_secs_f64());
    }
    let qs: Vec<Vec<f32>> = (0..queries)
        .map(|i| point(&mut rng, (i * 7919) % clusters))
        .collect();
    let mut exact_ms = Vec::new();
    let mut truth = Vec::new();
    for q in &qs {
        let t = Instant::now();
        let r = store.nearest(q, k, SearchMode::Exact).await?;
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
        truth.push(r.into_iter().map(|n| n.id).collect::<Vec<_>>());
    }
    let (p50, p99) = (
        percentile(&mut exact_ms.clone(), 0.5),
        percentile(&mut exact_ms, 0.99),
    );
    println!("| rows | dim | search | nprobes | refine | p50 ms | p99 ms | recall@{k} | speed-up vs exact (p50) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!("| {rows} | {dim} | exact | - | - | {p50:.2} | {p99:.2} | 1.000 | 1.0x |");
    for (nprobes, refine) in [
        (10, None),
        (20, None),
        (20, Some(5)),
        (40, Some(5)),
        (40, Some(10)),
        (80, Some(10)),
    ] {
        let mut ms = Vec::new();
        let mut hits = 0;
        for (q, t_ids) in qs.iter().zip(&truth) {
            let t = Instant::now();
            let r = store
                .nearest(
                    q,
                    k,
                    SearchMode::Indexed {
                        nprobes,
                        refine_factor: refine,
                    },
                )
                .await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            hits += r.iter().filter(|n| t_ids.contains(&n.id)).count();
        }
        let recall = hits as f64 / (k * qs.len()) as f64;
        let (a, b) = (percentile(&mut ms.clone(), 0.5), percentile(&mut ms, 0.99));
        println!(
            "| {rows} | {dim} | IVF-PQ | {nprobes} | {} | {a:.2} | {b:.2} | {recall:.3} | {:.1}x |",
            refine.map(|r| r.to_string()).unwrap_or("-".into()),
            p50 / a
        );
    }
    Ok(())
}
