//! The neighbour table by matrix products (issue #26): every query's exact neighbours from
//! `Store::exact_neighbors`, in batches of `--query-batch`, against per-query exact search of the
//! same queries and a plain libtorch matmul of the same shapes on the same machine.
use std::time::Instant;

use tch::Tensor;
use tttnn::store::{BatchQuery, BatchSearch, Product, Slice, Store};

use crate::{peak_rss_gib, reset_peak_rss, Args, Query};

/// One table computed by matrix products.
pub struct TableRun {
    /// Wall time of the whole table.
    pub seconds: f64,
    /// Result ids per query, nearest first.
    pub found: Vec<Vec<String>>,
    /// (query, row) pairs re-ranked exactly after the products selected them.
    pub candidates: usize,
    /// Peak RSS over the table, GiB.
    pub peak_rss_gib: f64,
}

/// The exact neighbours of `queries` by matrix products, as `tttnn neighbors` computes them.
pub fn matmul_table(
    args: &Args,
    store: &Store,
    queries: &[Query],
    device: tch::Device,
    product: Product,
) -> anyhow::Result<TableRun> {
    let split = queries.first().and_then(|q| q.split.clone());
    let search = BatchSearch {
        k: args.k,
        split,
        max_distance: None,
        slice: Slice::ALL,
        product,
        device,
        block_rows: args.block_rows,
        datastore: tttnn::store::DatastoreFraction::WHOLE,
    };
    reset_peak_rss();
    let t = Instant::now();
    let mut found = Vec::with_capacity(queries.len());
    let mut candidates = 0;
    for batch in queries.chunks(args.query_batch) {
        let batch: Vec<BatchQuery> = batch
            .iter()
            .map(|q| BatchQuery {
                vector: q.vector.clone(),
                exclude_id: q.exclude_id.clone(),
            })
            .collect();
        let (lists, stats) = store.exact_neighbors(&batch, &search, &mut |_| {})?;
        candidates += stats.candidates;
        found.extend(
            lists
                .into_iter()
                .map(|l| l.into_iter().map(|n| n.id).collect::<Vec<_>>()),
        );
    }
    Ok(TableRun {
        seconds: t.elapsed().as_secs_f64(),
        found,
        candidates,
        peak_rss_gib: peak_rss_gib(),
    })
}

/// GFLOP/s of a plain libtorch matmul of one block's shapes, [queries, dim] × [dim, rows], on
/// `device` in `product`'s precision: what the table's products could reach on this machine.
pub fn plain_matmul_gflops(
    queries: usize,
    dim: usize,
    rows: usize,
    device: tch::Device,
    product: Product,
) -> f64 {
    let _guard = tch::no_grad_guard();
    let kind = product.kind();
    let q = Tensor::randn([queries as i64, dim as i64], (kind, device));
    let x = Tensor::randn([rows as i64, dim as i64], (kind, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _ = q.matmul(&x.tr());
    sync();
    let reps = if device.is_cuda() { 50 } else { 5 };
    let t = Instant::now();
    for _ in 0..reps {
        let _ = q.matmul(&x.tr());
    }
    sync();
    let seconds = t.elapsed().as_secs_f64() / reps as f64;
    2.0 * (queries * dim * rows) as f64 / seconds / 1e9
}
