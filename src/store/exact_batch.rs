//! Exact neighbours for many queries at once, by blocked matrix products (issue #26): the store is
//! read once per batch of queries, in blocks of rows; each block's squared distances to every
//! query come from one GEMM (‖q‖² + ‖x‖² − 2·q·x, as Faiss's exhaustive search does for batches),
//! and a running top-k per query keeps the nearest. This is the paper's exact search (Faiss
//! `IndexFlatL2`), not an approximation, and it gives the neighbours [`Store::retrieve`] gives
//! with [`SearchMode::Exact`](super::SearchMode) — ids, order and distances:
//!
//! - The GEMM only *selects candidates*: every row whose product distance is within a bound of the
//!   query's current k-th (the bound covers the product's rounding error, `tolerance`), so no true
//!   neighbour is missed. Each candidate's distance is then computed by Lance's own L2 kernel, the
//!   one its flat search uses, so the distances are Lance's to the bit.
//! - Ties are broken as Lance's flat search breaks them: by `_rowid` (its sort is `_distance,
//!   _rowid`).
//! - The split filter, the query document's exclusion and the distance threshold are those of
//!   `Retrieval` (`search.rs`).
//!
//! Selection, not the product, is what costs in a naive blocked top-k (a `topk` per block). Here a
//! block costs the GEMM plus one comparison against each query's bound and the few survivors'
//! exact distances; `kthvalue` runs only on blocks that come before a query has k candidates.
use std::collections::HashMap;

use arrow_array::{Array, RecordBatch, UInt64Array};
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use tch::{Kind, Tensor};

use super::arrow::{embedding_column, string_column};
pub use super::batch_search::{BatchQuery, BatchSearch, Product, Slice};
use super::Store;
use crate::error::{Error, Result};

/// A neighbour found by a batch search, nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNeighbor {
    /// Document id.
    pub id: String,
    /// Lance's `_rowid` of the row (ties between equal distances go to the lower one).
    pub row_id: u64,
    /// Squared L2 distance, as Lance's L2 kernel computes it.
    pub squared_distance: f32,
    /// Unsquared L2 distance (what `Retrieval` filters on and tables record).
    pub distance: f32,
}

/// What a batch search did, for benchmarks and progress.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchStats {
    /// Store rows read.
    pub rows: usize,
    /// Of them, in the searched split.
    pub eligible_rows: usize,
    /// (query, row) pairs whose exact distance was computed after the products selected them.
    pub candidates: usize,
}

/// The order of Lance's flat search (its sort is `_distance, _rowid`) over (squared distance, row
/// id) pairs: what a query's running top k and a sliced table's merge both keep to.
pub(crate) fn flat_search_order(a: (f32, u64), b: (f32, u64)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

impl BatchNeighbor {
    /// Its place in Lance's flat search order: (squared distance, row id).
    fn order(&self) -> (f32, u64) {
        (self.squared_distance, self.row_id)
    }
}

/// A query's running top-k, ordered by (squared distance, row id) as Lance's flat search sorts.
struct TopK {
    k: usize,
    kept: Vec<BatchNeighbor>,
}

impl TopK {
    fn full(&self) -> bool {
        self.kept.len() == self.k
    }

    /// The k-th squared distance once k are kept.
    fn bound(&self) -> Option<f32> {
        self.full().then(|| self.kept[self.k - 1].squared_distance)
    }

    fn offer(&mut self, n: BatchNeighbor) {
        let before =
            |a: &BatchNeighbor, b: &BatchNeighbor| flat_search_order(a.order(), b.order()).is_lt();
        if self.full() && !before(&n, &self.kept[self.k - 1]) {
            return;
        }
        let at = self.kept.partition_point(|m| before(m, &n));
        debug_assert!(self.kept.get(at).is_none_or(|m| m.order() != n.order()));
        self.kept.insert(at, n);
        self.kept.truncate(self.k);
    }
}

/// A block of store rows, as read: their ids (by batch), embeddings flat, row ids, eligibility.
#[derive(Default)]
struct Block {
    /// Each batch's `id` column (the batches' other columns are dropped once copied).
    ids: Vec<arrow_array::StringArray>,
    /// First block row of each batch.
    starts: Vec<usize>,
    embeddings: Vec<f32>,
    row_ids: Vec<u64>,
    /// Rows outside the searched split or datastore fraction (their product distance is made +∞).
    excluded: Vec<bool>,
    eligible: usize,
}

impl Block {
    fn len(&self) -> usize {
        self.row_ids.len()
    }

    fn push(&mut self, store: &Store, b: RecordBatch, s: &BatchSearch) -> Result<()> {
        let split = s.split.as_deref();
        let dim = store.dim();
        let embeddings = embedding_column(&store.path, &b)?;
        let values = embeddings
            .values()
            .as_any()
            .downcast_ref::<arrow_array::Float32Array>()
            .ok_or_else(|| Error::bad_file(&store.path, "embeddings are not float32"))?;
        // A FixedSizeList's values are sliced with it: row i is values[i·dim..(i+1)·dim].
        let flat = &values.values()[..b.num_rows() * dim];
        let row_ids = b
            .column_by_name("_rowid")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| Error::internal("a scan asked for _rowid returned none"))?;
        let splits = b
            .column_by_name("split")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>());
        let ids = b
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>())
            .ok_or_else(|| Error::bad_file(&store.path, "no string column `id`"))?;
        for i in 0..b.num_rows() {
            let in_split = match (split, splits) {
                (None, _) => true,
                (Some(s), Some(col)) => col.value(i) == s,
                (Some(_), None) => {
                    return Err(Error::bad_file(&store.path, "no string column `split`"))
                }
            };
            let excluded = !in_split || embeddings.is_null(i) || !s.datastore.keeps(ids.value(i));
            self.eligible += usize::from(!excluded);
            self.excluded.push(excluded);
        }
        self.embeddings.extend_from_slice(flat);
        self.row_ids.extend_from_slice(row_ids.values());
        self.starts.push(self.len() - b.num_rows());
        self.ids.push(ids.clone());
        Ok(())
    }

    /// The id of block row `j`.
    fn id(&self, j: usize) -> &str {
        let b = self.starts.partition_point(|&s| s <= j) - 1;
        self.ids[b].value(j - self.starts[b])
    }
}

/// Product distances held at once per block on the CPU (8 MiB): the queries go through a block in
/// chunks whose products stay in cache while they are compared with the bounds, instead of one
/// [queries, rows] matrix written to memory and read back.
const CACHED_PRODUCTS: usize = 1 << 21;

fn torch(context: &str) -> impl Fn(tch::TchError) -> Error + '_ {
    move |source| Error::torch(context, source)
}

impl Store {
    /// The exact neighbours of every query in `queries` among the rows of `s.slice`, nearest
    /// first, as [`Store::retrieve`] with exact search finds them (see the module's comment);
    /// `on_block` hears the rows read so far.
    pub fn exact_neighbors(
        &self,
        queries: &[BatchQuery],
        s: &BatchSearch,
        on_block: &mut dyn FnMut(usize),
    ) -> Result<(Vec<Vec<BatchNeighbor>>, BatchStats)> {
        if s.k == 0 || queries.is_empty() {
            return Ok((vec![Vec::new(); queries.len()], BatchStats::default()));
        }
        if let Some(q) = queries.iter().find(|q| q.vector.len() != self.dim()) {
            return Err(Error::internal(format!(
                "query vector is {}-d, store is {}-d",
                q.vector.len(),
                self.dim()
            )));
        }
        super::count_queries(queries.len() as u64);
        let rows = s.slice.rows(self.count()?);
        let mut search = Search::new(self, queries, s);
        let stream_query = self
            .table
            .query()
            .select(Select::columns(&["id", "split", "embedding"]))
            .with_row_id()
            .offset(rows.start)
            .limit(rows.len());
        let mut stream = self
            .block_on(async { stream_query.execute().await })
            .map_err(|e| self.err(e))?;
        let mut block = Block::default();
        let mut read = 0;
        if !rows.is_empty() {
            loop {
                let next = self.block_on(stream.try_next()).map_err(|e| self.err(e))?;
                let end = next.is_none();
                if let Some(b) = next {
                    read += b.num_rows();
                    block.push(self, b, s)?;
                }
                if block.len() >= s.block_rows || (end && block.len() > 0) {
                    search.block(&std::mem::take(&mut block))?;
                    on_block(read);
                }
                if end {
                    break;
                }
            }
        }
        search.stats.rows = read;
        Ok(search.finish())
    }

    /// The stored embeddings of the documents `ids` of `split`, read in one scan (a lookup per
    /// document scans the id column each time).
    pub fn embeddings_of(
        &self,
        split: &str,
        ids: &std::collections::HashSet<&str>,
    ) -> Result<HashMap<String, Vec<f32>>> {
        let batches = self.scan(
            Some(format!("split = {}", super::sql_str(split))),
            &["id", "embedding"],
            None,
        )?;
        let mut out = HashMap::new();
        for b in &batches {
            let embeddings = embedding_column(&self.path, b)?;
            for (i, id) in string_column(&self.path, b, "id")?.into_iter().enumerate() {
                if ids.contains(id.as_str()) {
                    let e = super::arrow::embedding_at(&self.path, embeddings, i)?;
                    out.insert(id, e);
                }
            }
        }
        Ok(out)
    }
}

/// The state of one batch search: the queries on the device and their running top-k.
struct Search<'a> {
    store: &'a Store,
    queries: &'a [BatchQuery],
    s: &'a BatchSearch,
    /// −2·Q in the product's precision, on the device: [queries, dim].
    minus_2q: Tensor,
    /// ‖q‖² and ‖q‖ per query (f64 on the host: the bounds are computed there).
    q_squared: Vec<f64>,
    q_norm: Vec<f64>,
    /// The product distance bound's relative error, `Product::tolerance`.
    tolerance: f64,
    top: Vec<TopK>,
    stats: BatchStats,
}

impl<'a> Search<'a> {
    fn new(store: &'a Store, queries: &'a [BatchQuery], s: &'a BatchSearch) -> Self {
        let dim = store.dim();
        let flat: Vec<f32> = queries
            .iter()
            .flat_map(|q| q.vector.iter().copied())
            .collect();
        // −2 is a power of two: scaling by it rounds nothing.
        let minus_2q = (Tensor::from_slice(&flat).view([queries.len() as i64, dim as i64]) * -2.0)
            .to_device(s.device)
            .to_kind(s.product.kind());
        let q_squared: Vec<f64> = queries
            .iter()
            .map(|q| q.vector.iter().map(|v| f64::from(*v) * f64::from(*v)).sum())
            .collect();
        Self {
            store,
            queries,
            s,
            minus_2q,
            q_norm: q_squared.iter().map(|x| x.sqrt()).collect(),
            q_squared,
            tolerance: s.product.tolerance(dim),
            top: (0..queries.len())
                .map(|_| TopK {
                    k: s.k,
                    kept: Vec::with_capacity(s.k),
                })
                .collect(),
            stats: BatchStats::default(),
        }
    }

    /// Searches one block: the products, each query's bound, the survivors' exact distances.
    fn block(&mut self, block: &Block) -> Result<()> {
        self.stats.eligible_rows += block.eligible;
        if block.eligible == 0 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let (n, dim) = (block.len() as i64, self.store.dim() as i64);
        let device = self.s.device;
        let x = Tensor::from_slice(&block.embeddings)
            .view([n, dim])
            .to_device(device);
        let excluded = Tensor::from_slice(&block.excluded).to_device(device);
        // ‖x‖² in fp32, +∞ for rows outside the split; max ‖x‖ over the others for the bound.
        let x_squared = x
            .f_square()
            .and_then(|v| v.f_sum_dim_intlist(1, false, Kind::Float))
            .map_err(torch("squared norms"))?;
        let max_norm = x_squared
            .f_masked_fill(&excluded, 0.0)
            .and_then(|v| v.f_max())
            .map_err(torch("norms"))?
            .double_value(&[])
            .sqrt();
        let x_squared = x_squared
            .f_masked_fill(&excluded, f64::INFINITY)
            .map_err(torch("squared norms"))?;
        let x_t = x.to_kind(self.s.product.kind()).tr();
        let queries = self.queries.len();
        let chunk = match device {
            tch::Device::Cpu => (CACHED_PRODUCTS / block.len()).clamp(1, queries),
            _ => queries,
        };
        for start in (0..queries).step_by(chunk) {
            let len = chunk.min(queries - start);
            let q = self.minus_2q.narrow(0, start as i64, len as i64);
            // p[q, j] = ‖x_j‖² − 2·q·x_j, one GEMM (fp32: its epilogue adds ‖x‖²); the product
            // distance is ‖q‖² + p.
            let p = match self.s.product {
                Product::F32 => x_squared.f_addmm(&q, &x_t),
                _ => q
                    .f_matmul(&x_t)
                    .and_then(|m| m.f_to_kind(Kind::Float))
                    .and_then(|m| m.f_add(&x_squared)),
            }
            .map_err(torch("distance products"))?;
            self.chunk(block, start, &p, max_norm)?;
        }
        Ok(())
    }

    /// Queries `start..` of one block: their bounds, the products that pass them, the survivors'
    /// exact distances into each query's top k.
    fn chunk(&mut self, block: &Block, start: usize, p: &Tensor, max_norm: f64) -> Result<()> {
        let len = p.size()[0] as usize;
        let device = self.s.device;
        // Before a query holds k neighbours, the block's own (k+1)-th product distance bounds its
        // k-th: one of the k+1 may be the query document itself.
        let kth = if self.top[start..start + len].iter().any(|t| !t.full()) {
            let k = (self.s.k + 1).min(block.len()) as i64;
            let (values, _) = p
                .f_kthvalue(k, 1, false)
                .map_err(torch("k-th product distance"))?;
            Some(Vec::<f32>::try_from(values.to_device(tch::Device::Cpu)).map_err(torch("k-th"))?)
        } else {
            None
        };
        let max_squared = self.s.max_distance.map(|d| f64::from(d) * f64::from(d));
        let thresholds: Vec<f32> = (start..start + len)
            .map(|q| {
                let tol = self.tolerance * (self.q_norm[q] + max_norm).powi(2);
                // Bounds on the exact squared distance of the k-th neighbour, in p's terms.
                let mut bound = f64::INFINITY;
                if let Some(b) = self.top[q].bound() {
                    bound = bound.min(f64::from(b) - self.q_squared[q]);
                }
                if let Some(kth) = &kth {
                    bound = bound.min(f64::from(kth[q - start]) + tol);
                }
                if let Some(m) = max_squared {
                    bound = bound.min(m - self.q_squared[q]);
                }
                let t = bound + tol;
                // +∞ rows (other splits) never pass; f32::MAX keeps every finite one.
                if t.is_finite() {
                    (t as f32).min(f32::MAX)
                } else {
                    f32::MAX
                }
            })
            .collect();
        let t = Tensor::from_slice(&thresholds)
            .to_device(device)
            .unsqueeze(1);
        let survivors = p
            .f_le_tensor(&t)
            .and_then(|m| m.f_nonzero())
            .map_err(torch("selecting candidates"))?;
        let pairs = Vec::<i64>::try_from(survivors.to_device(tch::Device::Cpu).flatten(0, -1))
            .map_err(torch("candidates"))?;
        let d = self.store.dim();
        let mut distance = [0f32];
        for pair in pairs.chunks_exact(2) {
            let (q, j) = (start + pair[0] as usize, pair[1] as usize);
            let id = block.id(j);
            if self.queries[q].exclude_id.as_deref() == Some(id) {
                continue;
            }
            self.stats.candidates += 1;
            // Lance's flat search's kernel: the distances are Lance's own.
            lance_linalg::distance::l2_distance_batch_into(
                &self.queries[q].vector,
                &block.embeddings[j * d..(j + 1) * d],
                d,
                &mut distance,
            );
            let squared = distance[0];
            if squared.is_nan() {
                continue;
            }
            let unsquared = squared.max(0.0).sqrt();
            if self.s.max_distance.is_some_and(|m| unsquared > m) {
                continue;
            }
            self.top[q].offer(BatchNeighbor {
                id: id.to_string(),
                row_id: block.row_ids[j],
                squared_distance: squared,
                distance: unsquared,
            });
        }
        Ok(())
    }

    fn finish(self) -> (Vec<Vec<BatchNeighbor>>, BatchStats) {
        (self.top.into_iter().map(|t| t.kept).collect(), self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DatastoreFraction;

    fn n(d: f32, row_id: u64) -> BatchNeighbor {
        BatchNeighbor {
            id: format!("r{row_id}"),
            row_id,
            squared_distance: d,
            distance: d.sqrt(),
        }
    }

    #[test]
    fn top_k_orders_by_distance_then_row_id_and_keeps_k() {
        let mut t = TopK {
            k: 3,
            kept: Vec::new(),
        };
        for (d, r) in [(0.5, 9), (0.2, 4), (0.5, 2), (0.9, 1), (0.5, 7), (0.1, 8)] {
            t.offer(n(d, r));
        }
        let got: Vec<u64> = t.kept.iter().map(|m| m.row_id).collect();
        assert_eq!(got, vec![8, 4, 2]);
        assert_eq!(t.bound(), Some(0.5));
    }

    #[test]
    fn slices_cover_the_rows_once() {
        for rows in [0, 1, 7, 100] {
            let mut next = 0;
            for j in 0..3 {
                let r = Slice { index: j, count: 3 }.rows(rows);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, rows);
        }
        assert!("3/3".parse::<Slice>().is_err());
        assert_eq!("1/3".parse::<Slice>().unwrap().to_string(), "1/3");
    }

    /// A store of `rows` random 8-d vectors over three appends (three fragments), every 10th row
    /// a copy of row 3 (ties at every distance to it), a quarter of them `test`.
    fn store(dir: &std::path::Path, rows: usize) -> Store {
        let store = Store::open_or_create(dir, 8).unwrap();
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut uniform = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let vectors: Vec<Vec<f32>> = (0..rows)
            .map(|_| (0..8).map(|_| uniform()).collect())
            .collect();
        let docs: Vec<super::super::Document> = (0..rows)
            .map(|i| super::super::Document {
                id: format!("d{i}"),
                split: if i % 4 == 1 { "test" } else { "train" }.into(),
                set_name: "s".into(),
                source: "f".into(),
                line: i as u64 + 1,
                text: String::new(),
                embedding: if i % 10 == 3 {
                    vectors[3].clone()
                } else {
                    vectors[i].clone()
                },
            })
            .collect();
        for part in docs.chunks(rows.div_ceil(3)) {
            store.add(part).unwrap();
        }
        store
    }

    fn search(k: usize, max_distance: Option<f32>, slice: Slice, product: Product) -> BatchSearch {
        BatchSearch {
            k,
            split: Some("train".into()),
            max_distance,
            slice,
            product,
            device: tch::Device::Cpu,
            block_rows: 37,
            datastore: DatastoreFraction::WHOLE,
        }
    }

    #[test]
    fn matrix_products_find_what_exact_search_finds_ties_and_slices_included() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 300);
        // Stored test documents (left out of their own results), row 3's vector (ties at 0 and
        // beyond), and a point far from everything.
        let mut queries: Vec<BatchQuery> = [1usize, 5, 13, 3, 297]
            .iter()
            .map(|&i| BatchQuery {
                vector: store.document(&format!("d{i}")).unwrap().unwrap().embedding,
                exclude_id: (i % 4 == 1).then(|| format!("d{i}")),
            })
            .collect();
        queries.push(BatchQuery {
            vector: vec![3.0; 8],
            exclude_id: None,
        });
        for (k, max_distance) in [(1, None), (7, None), (40, Some(0.9)), (300, None)] {
            let want: Vec<Vec<(String, f32)>> = queries
                .iter()
                .map(|q| {
                    let r = super::super::Retrieval {
                        k,
                        mode: super::super::SearchMode::Exact,
                        max_distance,
                        exclude_id: q.exclude_id.clone(),
                        split: Some("train".into()),
                        datastore: DatastoreFraction::WHOLE,
                    };
                    store
                        .retrieve(&q.vector, &r)
                        .unwrap()
                        .into_iter()
                        .map(|n| (n.id, n.distance))
                        .collect()
                })
                .collect();
            assert!(want[3].len() >= k.min(20), "row 3 has copies to tie with");
            for product in [Product::F32, Product::Bf16] {
                let (got, stats) = store
                    .exact_neighbors(
                        &queries,
                        &search(k, max_distance, Slice::ALL, product),
                        &mut |_| {},
                    )
                    .unwrap();
                assert_eq!(stats.rows, 300);
                let got: Vec<Vec<(String, f32)>> = got
                    .into_iter()
                    .map(|l| l.into_iter().map(|n| (n.id, n.distance)).collect())
                    .collect();
                // Lance's own kernel: the distances are Lance's to the bit.
                assert_eq!(got, want, "k {k}, {product}");
            }
            // Three slices' partial top k, merged by (squared distance, row id), are the same.
            let mut merged: Vec<Vec<BatchNeighbor>> = vec![Vec::new(); queries.len()];
            for j in 0..3 {
                let slice = Slice { index: j, count: 3 };
                let (part, _) = store
                    .exact_neighbors(
                        &queries,
                        &search(k, max_distance, slice, Product::F32),
                        &mut |_| {},
                    )
                    .unwrap();
                for (m, p) in merged.iter_mut().zip(part) {
                    m.extend(p);
                }
            }
            let merged: Vec<Vec<(String, f32)>> = merged
                .into_iter()
                .map(|mut l| {
                    l.sort_by(|a, b| flat_search_order(a.order(), b.order()));
                    l.into_iter().take(k).map(|n| (n.id, n.distance)).collect()
                })
                .collect();
            assert_eq!(merged, want, "k {k}, 3 slices");
        }
    }

    #[test]
    fn a_datastore_fraction_keeps_the_same_rows_in_lance_and_the_products() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 300);
        let queries: Vec<BatchQuery> = [1usize, 5, 13]
            .iter()
            .map(|&i| BatchQuery {
                vector: store.document(&format!("d{i}")).unwrap().unwrap().embedding,
                exclude_id: Some(format!("d{i}")),
            })
            .collect();
        let k = 30;
        for fraction in [0.5, 0.25] {
            let datastore = DatastoreFraction { fraction, seed: 3 };
            let search = BatchSearch {
                datastore,
                ..search(k, None, Slice::ALL, Product::F32)
            };
            let (got, _) = store
                .exact_neighbors(&queries, &search, &mut |_| {})
                .unwrap();
            for (q, got) in queries.iter().zip(got) {
                let r = super::super::Retrieval {
                    k,
                    mode: super::super::SearchMode::Exact,
                    max_distance: None,
                    exclude_id: q.exclude_id.clone(),
                    split: Some("train".into()),
                    datastore,
                };
                // Lance's filter (DataFusion's md5) keeps what the products keep.
                let want: Vec<(String, f32)> = store
                    .retrieve(&q.vector, &r)
                    .unwrap()
                    .into_iter()
                    .map(|n| (n.id, n.distance))
                    .collect();
                let got: Vec<(String, f32)> = got.into_iter().map(|n| (n.id, n.distance)).collect();
                assert_eq!(got, want, "fraction {fraction}");
                assert_eq!(want.len(), k, "225 train rows hold 30 kept ones");
                assert!(want.iter().all(|(id, _)| datastore.keeps(id)));
            }
        }
    }
}
