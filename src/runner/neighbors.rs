//! `tttnn neighbors`: every selected test document's neighbours retrieved once into a neighbour
//! table (`store::NeighborTable`), resumable and shardable, so `tttnn run --neighbors-from` trains
//! without searching: TTT workers then need only read access to the store (issue #16).
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan;
use super::settings::{NeighborSearch, RunConfig, TestDocs};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::store::{
    BatchQuery, BatchSearch, DatastoreFraction, Neighbor, NeighborTable, Product, Retrieval,
    RetrievalQuality, SearchMode, Slice, Store, TableNeighbor,
};

/// `tttnn neighbors`' settings: which test documents (as `tttnn run` selects them) and how their
/// neighbours are retrieved (as `tttnn run` retrieves them); defaults are `tttnn run`'s.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct NeighborsConfig {
    /// LanceDB corpus store (from `tttnn ingest`).
    #[arg(long, env = "TTTNN_STORE")]
    pub store: PathBuf,
    /// The neighbour table to write (a directory; created, or resumed if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Which test documents, as `tttnn run` selects them (1.0 for --val-portion also covers
    /// interpolate's held-out ones).
    #[command(flatten)]
    pub docs: TestDocs,
    /// How their neighbours are retrieved, as `tttnn run` retrieves them; shards append to one
    /// table concurrently.
    #[command(flatten)]
    pub search: NeighborSearch,
    /// Exact search (no --nprobes) by blocked matrix products over the whole batch of documents
    /// (the store read once per --query-batch), or one search per document.
    #[arg(long, value_enum, env = "TTTNN_EXACT_SEARCH", default_value_t = ExactSearch::Matmul)]
    pub exact_search: ExactSearch,
    /// This worker's slice J/M of the store's rows (matrix products only): M slices' partial
    /// neighbours merge into the exact ones when the table is read.
    #[arg(long, env = "TTTNN_SLICE", default_value_t = Slice::ALL)]
    pub slice: Slice,
    /// Where the matrix products run.
    #[arg(long, value_enum, env = "TTTNN_DEVICE", default_value_t = Device::Cpu)]
    pub device: Device,
    /// Precision of the matrix products (their candidates are re-ranked in fp32 either way);
    /// f16/bf16 are for GPUs and recorded with the table.
    #[arg(long, value_enum, env = "TTTNN_PRODUCT", default_value_t = Product::F32)]
    pub product: Product,
    /// Documents per pass over the store (and per commit to the table); default 4096 on the CPU,
    /// 16384 on CUDA.
    #[arg(long, env = "TTTNN_QUERY_BATCH")]
    pub query_batch: Option<usize>,
    /// Store rows per matrix product; default 16384 on the CPU, 65536 on CUDA.
    #[arg(long, env = "TTTNN_BLOCK_ROWS")]
    pub block_rows: Option<usize>,
    /// Measure this shard's neighbours against this exact neighbour table of the same documents
    /// (as `tttnn run --exact-reference`): the summary's `retrieval_quality`.
    #[arg(long, env = "TTTNN_EXACT_REFERENCE")]
    pub exact_reference: Option<PathBuf>,
}

/// How `tttnn neighbors` searches exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExactSearch {
    /// Blocked matrix products for all documents at once (`Store::exact_neighbors`).
    Matmul,
    /// One exact search per document (`Store::retrieve`), as `tttnn run` retrieves live.
    PerQuery,
}

impl NeighborsConfig {
    /// Documents per pass over the store, per commit.
    fn query_batch(&self) -> usize {
        self.query_batch.unwrap_or(match self.device {
            Device::Cpu => 4096,
            Device::Cuda => 16384,
        })
    }

    /// Store rows per matrix product.
    fn block_rows(&self) -> usize {
        self.block_rows.unwrap_or(match self.device {
            Device::Cpu => 16384,
            Device::Cuda => 65_536,
        })
    }

    /// Whether the table is computed by matrix products.
    fn by_matmul(&self) -> bool {
        self.search.nprobes.is_none() && self.exact_search == ExactSearch::Matmul
    }

    fn check(&self) -> Result<()> {
        self.docs.task()?;
        self.search.check()?;
        if self.search.neighbors == 0 {
            return Err(Error::setting(
                "neighbors",
                "0 neighbours make an empty table",
            ));
        }
        if self.slice.count > 1 && !self.by_matmul() {
            return Err(Error::setting(
                "slice",
                "slices of the store need the matrix-product exact search (no --nprobes, --exact-search matmul)",
            ));
        }
        if self.exact_reference.is_some() && self.slice.count > 1 {
            return Err(Error::setting(
                "exact_reference",
                "a slice holds only its part of each document's neighbours: measure the table \
                 once every slice is in it (a run with --neighbors-from and --exact-reference)",
            ));
        }
        if self.query_batch() == 0 || self.block_rows() == 0 {
            return Err(Error::setting(
                "query-batch",
                "--query-batch and --block-rows must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What a neighbour table was computed with: a run that reads it must retrieve the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSettings {
    /// The store's Lance version when the table was started.
    pub store_version: u64,
    /// Neighbours per document.
    pub neighbors: usize,
    /// Split searched.
    pub neighbor_split: String,
    /// Distance threshold (`None`: none).
    pub distance_threshold: Option<f32>,
    /// `None`: exact search; else the index's probes.
    pub nprobes: Option<usize>,
    /// Re-ranking with `nprobes`.
    pub refine_factor: u32,
    /// HNSW candidates per partition with `nprobes` (tables before it had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef: Option<usize>,
    /// Slices of the store the neighbours were found in (each slice's top k; merged on reading).
    #[serde(default = "one_slice", skip_serializing_if = "is_one_slice")]
    pub slices: usize,
    /// Precision of the matrix products, when not fp32.
    #[serde(default, skip_serializing_if = "Product::is_f32")]
    pub product: Product,
    /// The part of the store searched, when not all of it (`--datastore-fraction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<DatastoreFraction>,
}

fn one_slice() -> usize {
    1
}

fn is_one_slice(n: &usize) -> bool {
    *n == 1
}

impl TableSettings {
    fn search_mode(&self) -> SearchMode {
        SearchMode::new(self.nprobes, self.refine_factor, self.ef)
    }

    /// The part of the store searched.
    fn datastore(&self) -> DatastoreFraction {
        self.datastore.unwrap_or(DatastoreFraction::WHOLE)
    }

    /// Checks that the table was computed from `store` as it is now.
    fn check_store(&self, store: &Store, table: &Path) -> Result<()> {
        let version = store.version()?;
        if version != self.store_version {
            return Err(Error::bad_file(
                table,
                format!(
                    "computed on version {} of the store {}, which is now at {version}: recompute it",
                    self.store_version,
                    store.path().display()
                ),
            ));
        }
        Ok(())
    }

    /// Checks that these are the exact neighbours a run with `cfg` is compared with
    /// (`--exact-reference`): the whole store searched exactly, from the same split and within the
    /// same distance, at least the run's k of them.
    fn check_reference(&self, search: &NeighborSearch, store: &Store, table: &Path) -> Result<()> {
        let refuse = |why: String| {
            Error::bad_file(
                table,
                format!("is not an exact reference for this run: {why}"),
            )
        };
        self.check_store(store, table)?;
        if self.nprobes.is_some() {
            return Err(refuse(
                "it was searched with the vector index (compute it without --nprobes)".into(),
            ));
        }
        if !self.datastore().is_whole() {
            return Err(refuse(format!(
                "it searched a datastore fraction of {} (compute it on the whole store)",
                self.datastore().fraction
            )));
        }
        if search.neighbor_split != self.neighbor_split
            || search.max_distance() != self.distance_threshold
        {
            return Err(refuse(format!(
                "it searched split {} within {:?}, this search split {} within {:?}",
                self.neighbor_split,
                self.distance_threshold,
                search.neighbor_split,
                search.max_distance()
            )));
        }
        if self.neighbors < search.neighbors {
            return Err(refuse(format!(
                "it holds {} neighbours per document, this search takes {}",
                self.neighbors, search.neighbors
            )));
        }
        Ok(())
    }

    /// Checks that a run with `cfg` would retrieve these neighbours (its first `k` of them), on
    /// `store` at the version the table was computed from.
    fn check_run(&self, cfg: &RunConfig, store: &Store, table: &Path) -> Result<()> {
        let differ = |setting: &str, here: String, there: String| {
            Error::bad_file(
                table,
                format!("the run's {setting} is {here}, the neighbour table's {there}: give the run the table's, or recompute the table"),
            )
        };
        self.check_store(store, table)?;
        if cfg.search.neighbor_split != self.neighbor_split {
            return Err(differ(
                "--neighbor-split",
                cfg.search.neighbor_split.clone(),
                self.neighbor_split.clone(),
            ));
        }
        if cfg.search.distance_threshold != self.distance_threshold {
            return Err(differ(
                "--distance-threshold",
                format!("{:?}", cfg.search.distance_threshold),
                format!("{:?}", self.distance_threshold),
            ));
        }
        if cfg.search_mode() != self.search_mode() {
            return Err(differ(
                "search",
                format!("{:?}", cfg.search_mode()),
                format!("{:?}", self.search_mode()),
            ));
        }
        if cfg.search.datastore() != self.datastore() {
            return Err(differ(
                "--datastore-fraction",
                format!("{:?}", cfg.search.datastore()),
                format!("{:?}", self.datastore()),
            ));
        }
        if cfg.select.is_sift() && cfg.sift_pool == crate::select::SiftPool::InnerProduct {
            return Err(differ(
                "--sift-pool",
                "inner-product".into(),
                "L2 neighbours".into(),
            ));
        }
        let k = needed(cfg);
        if k > self.neighbors {
            return Err(differ(
                "k (or SIFT's candidates)",
                k.to_string(),
                self.neighbors.to_string(),
            ));
        }
        Ok(())
    }
}

/// Neighbours a run retrieves per document before choosing: k, or SIFT's candidates.
pub(super) fn needed(cfg: &RunConfig) -> usize {
    if cfg.select.is_sift() {
        cfg.sift_candidates.max(cfg.search.neighbors)
    } else {
        cfg.search.neighbors
    }
}

/// What `tttnn neighbors` reports while it works.
#[derive(Debug, Clone)]
pub enum NeighborsEvent {
    /// `total` documents in this shard, `done` of them already in the table.
    Started { total: usize, done: usize },
    /// `n` more documents are in the table.
    Committed { n: usize },
    /// The matrix products have read `read` of the slice's `rows` store rows for this batch of
    /// documents.
    Scanned { read: usize, rows: usize },
}

/// What `tttnn neighbors` did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NeighborsSummary {
    /// Documents of this shard.
    pub documents: usize,
    /// Of them, computed now.
    pub computed: usize,
    /// Rows of a killed job's unfinished documents dropped before starting.
    pub dropped_unfinished: usize,
    /// Neighbour rows written now.
    pub rows: usize,
    /// How the neighbours were searched: `matmul`, `per-query` or `index`.
    pub search: &'static str,
    /// The slice of the store's rows searched.
    pub slice: String,
    /// Matrix products: store rows read, over all passes.
    pub store_rows_read: usize,
    /// Matrix products: (document, row) pairs whose exact distance the products selected.
    pub candidates: usize,
    /// With --exact-reference: this shard's neighbours against the exact ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval_quality: Option<TableQuality>,
}

/// A neighbour table's documents measured against an exact reference: the means of
/// [`RetrievalQuality`] over them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TableQuality {
    /// Documents measured.
    pub documents: usize,
    /// Mean recall@k (documents with exact neighbours).
    pub recall_at_k: Option<f64>,
    /// Mean neighbours shared with the exact ones.
    pub shared_neighbors: f64,
    /// Mean rank correlation (documents with two or more shared).
    pub rank_correlation: Option<f64>,
}

impl TableQuality {
    /// The means over `measured`.
    fn of(measured: &[RetrievalQuality]) -> Self {
        let mean = |values: Vec<f64>| {
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        TableQuality {
            documents: measured.len(),
            recall_at_k: mean(measured.iter().filter_map(|q| q.recall_at_k).collect()),
            shared_neighbors: mean(measured.iter().map(|q| q.shared_neighbors as f64).collect())
                .unwrap_or(0.0),
            rank_correlation: mean(measured.iter().filter_map(|q| q.rank_correlation).collect()),
        }
    }
}

/// Documents retrieved between two commits to the table.
const COMMIT_DOCS: usize = 64;

/// Computes (or resumes) the neighbour table `cfg.out`.
pub fn compute(
    cfg: &NeighborsConfig,
    on_event: &mut dyn FnMut(NeighborsEvent),
) -> Result<NeighborsSummary> {
    cfg.check()?;
    let store = Store::open(&cfg.store)?;
    let planned = plan::plan_store(&store, &plan::Selection::of(&cfg.docs)?)?;
    let ids: Vec<&str> = planned.iter().map(|d| d.doc_id.as_str()).collect();
    // Checked before anything is computed.
    let reference = match &cfg.exact_reference {
        Some(path) => Some(LoadedTable::load_reference(
            path,
            &cfg.search,
            &store,
            &ids,
        )?),
        None => None,
    };
    let mut summary = fill(cfg, &store, &planned, on_event)?;
    if let Some(reference) = reference {
        let table = LoadedTable::load_checked(&cfg.out, &ids, |_| Ok(()))?;
        let k = cfg.search.neighbors;
        let measured = ids
            .iter()
            .map(|doc| {
                Ok(RetrievalQuality::measure(
                    &table.ids(doc, k)?,
                    &reference.ids(doc, k)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        summary.retrieval_quality = Some(TableQuality::of(&measured));
    }
    Ok(summary)
}

/// Computes the neighbours of the `planned` documents not yet in the table `cfg.out`.
fn fill(
    cfg: &NeighborsConfig,
    store: &Store,
    planned: &[plan::PlannedDoc],
    on_event: &mut dyn FnMut(NeighborsEvent),
) -> Result<NeighborsSummary> {
    let settings = TableSettings {
        store_version: store.version()?,
        neighbors: cfg.search.neighbors,
        neighbor_split: cfg.search.neighbor_split.clone(),
        distance_threshold: cfg.search.max_distance(),
        nprobes: cfg.search.nprobes,
        refine_factor: cfg.search.refine_factor,
        ef: cfg.search.nprobes.and(cfg.search.ef),
        slices: cfg.slice.count,
        product: if cfg.by_matmul() {
            cfg.product
        } else {
            Product::F32
        },
        datastore: Some(cfg.search.datastore()).filter(|d| !d.is_whole()),
    };
    let json = serde_json::to_string(&settings).map_err(|e| Error::json("table settings", e))?;
    let creator = cfg.docs.shard.index == 0 && cfg.slice.index == 0;
    let table = NeighborTable::open_or_create(&cfg.out, &json, creator)?;
    let slice = cfg.slice.index as u32;
    let done = table.done(slice)?;
    let todo: Vec<&str> = planned
        .iter()
        .map(|d| d.doc_id.as_str())
        .filter(|d| !done.contains(*d))
        .collect();
    let dropped_unfinished = table.drop_unfinished(&todo.iter().copied().collect(), slice)?;
    on_event(NeighborsEvent::Started {
        total: planned.len(),
        done: planned.len() - todo.len(),
    });
    let mut summary = NeighborsSummary {
        documents: planned.len(),
        computed: todo.len(),
        dropped_unfinished,
        rows: 0,
        search: match (cfg.search.nprobes, cfg.exact_search) {
            (Some(_), _) => "index",
            (None, ExactSearch::Matmul) => "matmul",
            (None, ExactSearch::PerQuery) => "per-query",
        },
        slice: cfg.slice.to_string(),
        store_rows_read: 0,
        candidates: 0,
        retrieval_quality: None,
    };
    let commit = |batch: Vec<(String, Vec<TableNeighbor>)>,
                  summary: &mut NeighborsSummary,
                  on_event: &mut dyn FnMut(NeighborsEvent)| {
        summary.rows += batch.iter().map(|(_, l)| l.len()).sum::<usize>();
        table.append(&batch, slice)?;
        on_event(NeighborsEvent::Committed { n: batch.len() });
        Ok::<_, Error>(())
    };
    if !cfg.by_matmul() {
        let retrieval = |doc_id: &str| Retrieval {
            k: settings.neighbors,
            mode: settings.search_mode(),
            max_distance: settings.distance_threshold,
            exclude_id: Some(doc_id.to_string()),
            split: Some(settings.neighbor_split.clone()),
            datastore: settings.datastore(),
        };
        for chunk in todo.chunks(COMMIT_DOCS) {
            let mut batch = Vec::with_capacity(chunk.len());
            for &doc in chunk {
                let stored = store.expect_document(doc)?;
                let found = store.retrieve(&stored.embedding, &retrieval(doc))?;
                let listed = ranked(found.into_iter().map(|n| (n.id, n.distance, None)));
                batch.push((doc.to_string(), listed));
            }
            commit(batch, &mut summary, on_event)?;
        }
        return Ok(summary);
    }
    let device = cfg.device.to_tch()?;
    let search = BatchSearch {
        k: settings.neighbors,
        split: Some(settings.neighbor_split.clone()),
        max_distance: settings.distance_threshold,
        slice: cfg.slice,
        product: cfg.product,
        device,
        block_rows: cfg.block_rows(),
        datastore: settings.datastore(),
    };
    let slice_rows = cfg.slice.rows(store.count()?).len();
    for chunk in todo.chunks(cfg.query_batch()) {
        let embeddings = store.embeddings_of(&cfg.docs.split, &chunk.iter().copied().collect())?;
        let queries = chunk
            .iter()
            .map(|&doc| {
                let vector = embeddings.get(doc).cloned().ok_or_else(|| {
                    Error::bad_file(
                        store.path(),
                        format!("document {doc} vanished from the store during the run"),
                    )
                })?;
                Ok(BatchQuery {
                    vector,
                    exclude_id: Some(doc.to_string()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (found, stats) = store.exact_neighbors(&queries, &search, &mut |read| {
            on_event(NeighborsEvent::Scanned {
                read,
                rows: slice_rows,
            })
        })?;
        summary.store_rows_read += stats.rows;
        summary.candidates += stats.candidates;
        let batch = chunk
            .iter()
            .zip(found)
            .map(|(&doc, list)| {
                let listed = ranked(list.into_iter().map(|n| {
                    let order = Some((n.squared_distance, n.row_id));
                    (n.id, n.distance, order)
                }));
                (doc.to_string(), listed)
            })
            .collect();
        commit(batch, &mut summary, on_event)?;
    }
    Ok(summary)
}

/// Neighbours found nearest first, as (id, distance, flat-search order), ranked from 1.
fn ranked(found: impl Iterator<Item = (String, f32, Option<(f32, u64)>)>) -> Vec<TableNeighbor> {
    found
        .enumerate()
        .map(|(i, (id, distance, order))| TableNeighbor {
            rank: i as u32 + 1,
            id,
            distance,
            order,
        })
        .collect()
}

/// A neighbour table as a run reads it: every document's listed neighbours, checked against the
/// run's settings and store when loaded.
pub(super) struct LoadedTable {
    path: PathBuf,
    by_doc: HashMap<String, Vec<TableNeighbor>>,
}

impl LoadedTable {
    /// Loads `path` for a run with `cfg` on `store`; every document in `must_hold` must be in it.
    pub fn load(path: &Path, cfg: &RunConfig, store: &Store, must_hold: &[&str]) -> Result<Self> {
        Self::load_checked(path, must_hold, |settings| {
            settings.check_run(cfg, store, path)
        })
    }

    /// Loads `path` as the exact reference of a run with `cfg` on `store` (`--exact-reference`);
    /// every document in `must_hold` must be in it.
    pub fn load_reference(
        path: &Path,
        search: &NeighborSearch,
        store: &Store,
        must_hold: &[&str],
    ) -> Result<Self> {
        Self::load_checked(path, must_hold, |settings| {
            settings.check_reference(search, store, path)
        })
    }

    fn load_checked(
        path: &Path,
        must_hold: &[&str],
        check: impl FnOnce(&TableSettings) -> Result<()>,
    ) -> Result<Self> {
        let table = NeighborTable::open(path)?;
        let settings: TableSettings = serde_json::from_str(table.settings()).map_err(|e| {
            Error::bad_file(path, format!("unreadable neighbour table settings: {e}"))
        })?;
        check(&settings)?;
        let by_doc = table.load(settings.slices as u32, settings.neighbors)?;
        let held: HashSet<&str> = by_doc.keys().map(String::as_str).collect();
        if let Some(missing) = must_hold.iter().find(|d| !held.contains(*d)) {
            return Err(Error::bad_file(
                path,
                format!(
                    "has no neighbours for test document {missing} (it holds {} documents): compute it for this run's documents",
                    held.len()
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            by_doc,
        })
    }

    /// The first `k` listed neighbours of `doc_id`, nearest first.
    fn listed(&self, doc_id: &str, k: usize) -> Result<&[TableNeighbor]> {
        let listed = self.by_doc.get(doc_id).ok_or_else(|| {
            Error::bad_file(
                &self.path,
                format!("has no neighbours for document {doc_id}: for interpolate's held-out documents, give --alpha or compute the table with --val-portion 1"),
            )
        })?;
        Ok(&listed[..k.min(listed.len())])
    }

    /// The ids of the first `k` listed neighbours of `doc_id`, nearest first.
    pub fn ids(&self, doc_id: &str, k: usize) -> Result<Vec<&str>> {
        Ok(self
            .listed(doc_id, k)?
            .iter()
            .map(|n| n.id.as_str())
            .collect())
    }

    /// The first `k` listed neighbours of `doc_id`, with their texts and embeddings from `store`.
    pub fn neighbors(&self, store: &Store, doc_id: &str, k: usize) -> Result<Vec<Neighbor>> {
        store.neighbors_by_id(self.listed(doc_id, k)?)
    }
}
