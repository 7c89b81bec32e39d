//! The corpus store: documents, their embeddings and vector indexes in one LanceDB dataset, and
//! nearest-neighbour retrieval over it (exact, as the paper's Faiss `IndexFlatL2`, or an IVF index).
//!
//! `Store` is synchronous: it owns the tokio runtime LanceDB needs, as LanceDB's own Python sync
//! API does, so the rest of the library (and its callers) never see an `async fn`. The type is one,
//! its concerns are split across files as lance splits `Dataset`: this file opens, appends and
//! reads documents (their types in `document.rs`); `search.rs` retrieves; `index.rs` builds and drops vector indexes; `arrow.rs`
//! reads the table's columns; `datastore.rs` picks the rows a datastore fraction keeps; `quality.rs` measures a neighbour list against the exact one; `neighbor_table.rs` keeps neighbours retrieved once for many runs;
//! `exact_batch.rs` finds many queries' exact neighbours at once by matrix products.
mod arrow;
mod batch_search;
mod datastore;
mod document;
mod exact_batch;
mod index;
mod neighbor_table;
mod quality;
mod search;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::Float32Type;
use arrow_array::{FixedSizeListArray, LargeStringArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::Table;

pub use datastore::DatastoreFraction;
pub use document::{DocRef, Document, EncoderRecord, StoredText};
pub(crate) use exact_batch::flat_search_order;
pub use exact_batch::{BatchNeighbor, BatchQuery, BatchSearch, BatchStats, Product, Slice};
pub use index::{partition_assignment, IndexKind, IndexParams, ASSIGNMENT_ENV};
pub use neighbor_table::{NeighborTable, TableNeighbor};
pub use quality::RetrievalQuality;
pub use search::{Neighbor, Retrieval, SearchMode, DEFAULT_NPROBES, DEFAULT_REFINE_FACTOR};

use crate::error::{Error, Result};
use arrow::{embedding_at, embedding_column};
pub(crate) use arrow::{sql_str, string_column, u64_column};

/// Neighbour queries this process has put to stores (a document's search, or its row of a
/// batched exact search), so a caller can tell how often a store was searched (`tttnn sweep`
/// reports it: a sweep searches each document once, whatever its number of runs).
static QUERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count_queries(n: u64) {
    QUERIES.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// How many neighbour queries this process has put to stores so far.
pub fn queries_answered() -> u64 {
    QUERIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `path` names an object store (`s3://bucket/prefix`, `gs://`, `az://`, `memory://`)
/// rather than a local directory. LanceDB reads the object store's endpoint and credentials from
/// the standard environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_REGION`,
/// `AWS_ALLOW_HTTP` for a local server; docs/scale.md).
pub fn is_uri(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.contains("://"))
}

/// Refuses an object-store endpoint variable that is set but not a URL: object_store panics on
/// one (an empty `AWS_ENDPOINT_URL` from a failed `$(...)`, say) instead of reporting it.
pub(crate) fn check_endpoint_env() -> Result<()> {
    for var in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"] {
        if let Ok(v) = std::env::var(var) {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(Error::setting(
                    var,
                    format!("`{v}` is not an endpoint URL (http://host:port or https://…)"),
                ));
            }
        }
    }
    Ok(())
}

/// How long a writer that does not create a table (`--shard I/N` with I > 0) waits for worker 0
/// to create it.
pub const CREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Opens, with `open`, what worker 0 of `--shard I/N` creates (a store, a neighbour table),
/// retrying until it exists, for at most [`CREATE_WAIT`].
pub(crate) fn wait_for_creator<T>(
    path: &Path,
    what: &str,
    open: impl Fn() -> Result<T>,
) -> Result<T> {
    let start = std::time::Instant::now();
    loop {
        match open() {
            Ok(t) => return Ok(t),
            Err(_) if start.elapsed() < CREATE_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Err(e) => {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "no {what} here after waiting {} s for worker 0 to create it: {e}",
                        CREATE_WAIT.as_secs()
                    ),
                ))
            }
        }
    }
}

/// Name of the table holding the corpus.
pub(crate) const DOCUMENTS: &str = "documents";

/// The LanceDB corpus store.
pub struct Store {
    pub(crate) path: PathBuf,
    pub(crate) table: Table,
    dim: usize,
    rt: tokio::runtime::Runtime,
}

/// Arrow schema of the documents table for embeddings of dimension `dim`.
pub(crate) fn documents_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("set_name", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("line", DataType::UInt64, false),
        // Large offsets: one Books3 document can be megabytes and a batch many of them.
        Field::new("text", DataType::LargeUtf8, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dim as i32,
            ),
            false,
        ),
    ]))
}

impl Store {
    pub(crate) fn err(&self, source: lancedb::Error) -> Error {
        Error::store(&self.path, source)
    }

    /// Runs one LanceDB future to completion on the store's runtime.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Opens the store at `path`, creating an empty documents table for dimension `dim` if absent.
    pub fn open_or_create(path: &Path, dim: usize) -> Result<Self> {
        Self::connect(path, Some(dim))?.of_dim(dim)
    }

    /// This store, if its embeddings have `dim` dimensions (the encoder's).
    fn of_dim(self, dim: usize) -> Result<Self> {
        if self.dim != dim {
            return Err(Error::bad_file(
                &self.path,
                format!(
                    "store holds {}-d embeddings, the encoder makes {dim}-d ones",
                    self.dim
                ),
            ));
        }
        Ok(self)
    }

    /// Opens the store as one of several writers starting at once (`--shard I/N`): the creator
    /// (worker 0) creates it if absent; the others wait for it to exist, up to
    /// [`CREATE_WAIT`]. Two processes creating one Lance table race: the second create commits
    /// as an overwrite of the first's version, which then conflicts with (or drops) appends.
    pub fn open_or_create_as(path: &Path, dim: usize, creator: bool) -> Result<Self> {
        if creator {
            return Self::open_or_create(path, dim);
        }
        wait_for_creator(path, "store", || Self::open(path))?.of_dim(dim)
    }

    /// Opens an existing store.
    pub fn open(path: &Path) -> Result<Self> {
        if !is_uri(path) {
            if path.is_file() {
                return Err(Error::bad_file(
                    path,
                    "a file, not a store: a store is the directory `tttnn ingest --store DIR` creates",
                ));
            }
            if !path.join(format!("{DOCUMENTS}.lance")).is_dir() {
                let what = if path.exists() {
                    "the directory holds no `documents.lance`"
                } else {
                    "no such directory"
                };
                return Err(Error::bad_file(
                    path,
                    format!("no store here ({what}): create one with `tttnn ingest --store DIR`"),
                ));
            }
        }
        Self::connect(path, None)
    }

    /// Opens the documents table at `path`; creates it (for `create` dimensions) if asked to.
    fn connect(path: &Path, create: Option<usize>) -> Result<Self> {
        if is_uri(path) {
            check_endpoint_env()?;
        }
        let rt = runtime()?;
        let err = |source| Error::store(path, source);
        let table = rt.block_on(async {
            let db = lancedb::connect(&path.to_string_lossy())
                .execute()
                .await
                .map_err(err)?;
            let names = db.table_names().execute().await.map_err(err)?;
            match create {
                // One creator only: ingest workers other than 0 wait for the table
                // (`open_or_create_as`).
                Some(dim) if !names.iter().any(|n| n == DOCUMENTS) => db
                    .create_empty_table(DOCUMENTS, documents_schema(dim))
                    .execute()
                    .await
                    .map_err(err),
                _ => db.open_table(DOCUMENTS).execute().await.map_err(err),
            }
        })?;
        Self::with_table(path, table, rt)
    }

    fn with_table(path: &Path, table: Table, rt: tokio::runtime::Runtime) -> Result<Self> {
        let schema = rt
            .block_on(table.schema())
            .map_err(|e| Error::store(path, e))?;
        let dim = match schema
            .field_with_name("embedding")
            .map(|f| f.data_type().clone())
        {
            Ok(DataType::FixedSizeList(_, d)) => d as usize,
            _ => {
                return Err(Error::bad_file(
                    path,
                    "documents table has no FixedSizeList `embedding` column",
                ))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            table,
            dim,
            rt,
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records which encoder build made the embeddings ingested last (provider, precision, ONNX
    /// Runtime version) in the table's config, so a store says how its vectors were computed.
    pub fn record_encoder(&self, encoder: &EncoderRecord) -> Result<()> {
        let native = self.native()?;
        self.block_on(native.update_config(encoder.entries()))
            .map_err(|e| self.err(e))
    }

    /// The encoder record of the last ingest, if one was written.
    pub fn encoder_record(&self) -> Result<Option<EncoderRecord>> {
        let native = self.native()?;
        let manifest = self.block_on(native.manifest()).map_err(|e| self.err(e))?;
        Ok(EncoderRecord::from_config(&manifest.config))
    }

    /// The Lance table under LanceDB's handle: its config lives in the dataset's manifest.
    fn native(&self) -> Result<&lancedb::table::NativeTable> {
        self.table
            .as_native()
            .ok_or_else(|| Error::bad_file(&self.path, "not a local Lance table"))
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of stored documents.
    pub fn count(&self) -> Result<usize> {
        self.block_on(self.table.count_rows(None))
            .map_err(|e| self.err(e))
    }

    /// Appends documents in one commit.
    pub fn add(&self, docs: &[Document]) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        if let Some(d) = docs.iter().find(|d| d.embedding.len() != self.dim) {
            return Err(Error::internal(format!(
                "document {} has a {}-d embedding, store is {}-d",
                d.id,
                d.embedding.len(),
                self.dim
            )));
        }
        let batch = RecordBatch::try_new(
            documents_schema(self.dim),
            vec![
                Arc::new(StringArray::from_iter_values(
                    docs.iter().map(|d| d.id.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    docs.iter().map(|d| d.split.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    docs.iter().map(|d| d.set_name.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    docs.iter().map(|d| d.source.as_str()),
                )),
                Arc::new(UInt64Array::from_iter_values(docs.iter().map(|d| d.line))),
                Arc::new(LargeStringArray::from_iter_values(
                    docs.iter().map(|d| d.text.as_str()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    docs.iter().map(|d| d.text.len() as u64),
                )),
                Arc::new(
                    FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
                        docs.iter()
                            .map(|d| Some(d.embedding.iter().copied().map(Some))),
                        self.dim as i32,
                    ),
                ),
            ],
        )
        .map_err(|e| Error::arrow("building the documents batch", e))?;
        self.block_on(self.table.add(batch).execute())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Data fragments of the table (one after a compaction; each commit adds one).
    pub fn fragments(&self) -> Result<usize> {
        let native = self.native()?;
        let manifest = self.block_on(native.manifest()).map_err(|e| self.err(e))?;
        Ok(manifest.fragments.len())
    }

    /// The Lance table version (recorded with each run).
    pub fn version(&self) -> Result<u64> {
        self.block_on(self.table.version()).map_err(|e| self.err(e))
    }

    /// Rows matching `filter` (a Lance SQL predicate), the given columns only.
    pub(crate) fn scan(
        &self,
        filter: Option<String>,
        columns: &[&str],
        limit: Option<usize>,
    ) -> Result<Vec<RecordBatch>> {
        let mut q = self.table.query().select(Select::columns(columns));
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        if let Some(n) = limit {
            q = q.limit(n);
        }
        self.block_on(async { q.execute().await?.try_collect().await })
            .map_err(|e| self.err(e))
    }

    /// Documents of `split` (and of set `set_name` if given) in file order: by source, then line.
    pub fn documents_of(&self, split: &str, set_name: Option<&str>) -> Result<Vec<DocRef>> {
        let mut filter = format!("split = {}", sql_str(split));
        if let Some(set) = set_name {
            filter += &format!(" AND set_name = {}", sql_str(set));
        }
        let batches = self.scan(Some(filter), &["id", "set_name", "source", "line"], None)?;
        let mut out = Vec::new();
        for b in &batches {
            let lines = u64_column(&self.path, b, "line")?;
            let ids = string_column(&self.path, b, "id")?;
            let sets = string_column(&self.path, b, "set_name")?;
            let sources = string_column(&self.path, b, "source")?;
            for (((id, set_name), source), line) in
                ids.into_iter().zip(sets).zip(sources).zip(lines)
            {
                out.push(DocRef {
                    id,
                    set_name,
                    source,
                    line,
                });
            }
        }
        out.sort_by(|a, b| (&a.source, a.line).cmp(&(&b.source, b.line)));
        Ok(out)
    }

    /// The stored embedding and text of document `id`, if it is stored.
    pub fn document(&self, id: &str) -> Result<Option<StoredText>> {
        let batches = self.scan(
            Some(format!("id = {}", sql_str(id))),
            &["embedding", "text"],
            Some(1),
        )?;
        let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Ok(None);
        };
        Ok(Some(StoredText {
            embedding: embedding_at(&self.path, embedding_column(&self.path, b)?, 0)?,
            text: string_column(&self.path, b, "text")?
                .into_iter()
                .next()
                .unwrap_or_default(),
        }))
    }

    /// The stored embedding and text of a document the caller knows is stored (a planned test
    /// document); its absence means the store changed under a run.
    pub fn expect_document(&self, id: &str) -> Result<StoredText> {
        self.document(id)?.ok_or_else(|| {
            Error::bad_file(
                &self.path,
                format!("document {id} vanished from the store during the run"),
            )
        })
    }

    /// Merges the small files many appends leave behind (docs/pitfalls.md §4), then deletes the
    /// versions before the merge: their files would otherwise double the store on disk. Files of
    /// a commit that never finished (a killed ingest) are left to Lance's 7-day rule.
    pub fn compact(&self) -> Result<()> {
        use lancedb::table::optimize::{CompactionMode, CompactionOptions};
        use lancedb::table::OptimizeAction;
        // Lance's defaults read ahead up to 2 GiB while rewriting, so the merge's peak RSS grew
        // with the table (351 -> 518 MB from 20k to 320k documents); copying pages without
        // decoding them and a 64 MiB read-ahead keep it flat (docs/benchmarks.md, ingest memory).
        self.block_on(async {
            self.table
                .optimize(OptimizeAction::Compact {
                    options: CompactionOptions {
                        compaction_mode: Some(CompactionMode::TryBinaryCopy),
                        io_buffer_size: Some(64 << 20),
                        ..Default::default()
                    },
                    remap_options: None,
                })
                .await?;
            self.table
                .optimize(OptimizeAction::Prune {
                    older_than: Some(lancedb::table::optimize::Duration::zero()),
                    delete_unverified: Some(false),
                    error_if_tagged_old_versions: Some(false),
                })
                .await
                .map(|_| ())
        })
        .map_err(|e| self.err(e))
    }
}

/// The runtime a store drives LanceDB's futures on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().map_err(Error::runtime)
}
