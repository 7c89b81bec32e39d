//! The corpus store: documents, their embeddings and vector indexes in one LanceDB dataset, and
//! nearest-neighbour retrieval over it (exact, as the paper's Faiss `IndexFlatL2`, or IVF-PQ).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::Float32Type;
use arrow_array::{
    Array, FixedSizeListArray, Float32Array, LargeStringArray, RecordBatch, StringArray,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lancedb::index::vector::IvfPqIndexBuilder;
use lancedb::index::Index;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::{DistanceType, Table};

use crate::error::{Error, Result};

/// Name of the table holding the corpus.
pub const DOCUMENTS: &str = "documents";

/// One corpus document as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Stable id.
    pub id: String,
    /// `train`, `validation` or `test`.
    pub split: String,
    /// The Pile set name (`Github`, `FreeLaw`, ...).
    pub set_name: String,
    /// Source file the document came from.
    pub source: String,
    /// 1-based line of the document in its source file.
    pub line: u64,
    /// Full text.
    pub text: String,
    /// Encoder embedding.
    pub embedding: Vec<f32>,
}

/// A retrieved neighbour, nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbor {
    /// Document id.
    pub id: String,
    /// The Pile set name.
    pub set_name: String,
    /// Unsquared L2 distance to the query, as the original's distance filter uses.
    pub distance: f32,
    /// Full text.
    pub text: String,
    /// Stored embedding (SIFT selects on it).
    pub embedding: Vec<f32>,
}

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SearchMode {
    /// Brute-force L2 over every vector (the paper's `IndexFlatL2`).
    Exact,
    /// The vector index, probing `nprobes` partitions and re-ranking `refine_factor`·k candidates exactly.
    Indexed {
        nprobes: usize,
        refine_factor: Option<u32>,
    },
}

/// Partitions an indexed search probes unless told otherwise.
pub const DEFAULT_NPROBES: usize = 40;

/// Re-ranking an indexed search does unless told otherwise: `refine_factor`·k candidates by exact
/// distance. With these two defaults IVF-PQ kept recall@50 ≥ 0.99 against exact search on real
/// MiniLM embeddings and on 1M synthetic 1024-d vectors (docs/benchmarks.md); without re-ranking
/// it was 0.58–0.73, and distances would be PQ approximations.
pub const DEFAULT_REFINE_FACTOR: u32 = 5;

impl IvfPqParams {
    /// Defaults sized from the data: √rows partitions (at least 1), sub-vectors of 8 dimensions,
    /// 8-bit codes. IVF-PQ needs 256 rows to train its codebooks. Sub-vectors of 16 dimensions
    /// (LanceDB's usual dim/16) halve the index but lost recall on real embeddings.
    pub fn sized_for(rows: usize, dim: usize) -> std::result::Result<Self, String> {
        if rows < 256 {
            return Err(format!("IVF-PQ needs at least 256 rows to train 8-bit codebooks, the store has {rows}; use --kind flat"));
        }
        if !dim.is_multiple_of(8) {
            return Err(format!(
                "dimension {dim} is not a multiple of 8: give --sub-vectors (a divisor of {dim})"
            ));
        }
        let sub_vectors = dim / 8;
        Ok(Self {
            partitions: ((rows as f64).sqrt().round() as u32).max(1),
            sub_vectors: sub_vectors as u32,
            bits: 8,
        })
    }
}

/// What to retrieve: the original's settings plus tttnn's options.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieval {
    /// Neighbours wanted.
    pub k: usize,
    /// Exact or indexed search.
    pub mode: SearchMode,
    /// Drop neighbours farther than this (unsquared L2; the original's `distance_threshold`, 4.0).
    pub max_distance: Option<f32>,
    /// Leave this document out (the query document itself when it is in the store).
    pub exclude_id: Option<String>,
    /// Search only documents of this split (the original indexes only the training set).
    pub split: Option<String>,
}

/// Where a stored document came from, without its text or embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct DocRef {
    /// Document id.
    pub id: String,
    /// The Pile set name.
    pub set_name: String,
    /// Source file.
    pub source: String,
    /// 1-based line in the source file.
    pub line: u64,
}

/// IVF-PQ parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IvfPqParams {
    /// IVF partitions.
    pub partitions: u32,
    /// PQ sub-vectors (must divide the dimension).
    pub sub_vectors: u32,
    /// Bits per PQ code.
    pub bits: u32,
}

/// How a store's embeddings were computed, kept in the Lance table's config (`tttnn.encoder.*`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EncoderRecord {
    /// Encoder directory.
    pub dir: String,
    /// ONNX Runtime execution provider that ran, e.g. `CUDAExecutionProvider`.
    pub provider: String,
    /// `fp32`, `fp32+tf32` or `fp16`.
    pub precision: String,
    /// ONNX Runtime library version.
    pub ort_version: String,
}

impl EncoderRecord {
    const KEYS: [&'static str; 4] = [
        "tttnn.encoder.dir",
        "tttnn.encoder.provider",
        "tttnn.encoder.precision",
        "tttnn.encoder.ort_version",
    ];

    fn entries(&self) -> Vec<(String, String)> {
        let values = [
            &self.dir,
            &self.provider,
            &self.precision,
            &self.ort_version,
        ];
        Self::KEYS
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn from_config(config: &std::collections::HashMap<String, String>) -> Option<Self> {
        let get = |i: usize| config.get(Self::KEYS[i]).cloned();
        Some(Self {
            dir: get(0)?,
            provider: get(1)?,
            precision: get(2)?,
            ort_version: get(3)?,
        })
    }
}

/// The LanceDB corpus store.
pub struct Store {
    path: PathBuf,
    table: Table,
    dim: usize,
}

/// Arrow schema of the documents table for embeddings of dimension `dim`.
pub fn documents_schema(dim: usize) -> SchemaRef {
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
    fn err(&self, source: lancedb::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the store at `path`, creating an empty documents table for dimension `dim` if absent.
    pub async fn open_or_create(path: &Path, dim: usize) -> Result<Self> {
        let err = |source| Error::Store {
            path: path.to_path_buf(),
            source,
        };
        let db = lancedb::connect(&path.to_string_lossy())
            .execute()
            .await
            .map_err(err)?;
        let names = db.table_names().execute().await.map_err(err)?;
        let table = if names.iter().any(|n| n == DOCUMENTS) {
            db.open_table(DOCUMENTS).execute().await.map_err(err)?
        } else {
            db.create_empty_table(DOCUMENTS, documents_schema(dim))
                .execute()
                .await
                .map_err(err)?
        };
        let store = Self {
            path: path.to_path_buf(),
            table,
            dim,
        };
        let have = store.stored_dim().await?;
        if have != dim {
            return Err(Error::bad_file(
                path,
                format!("store holds {have}-d embeddings, the encoder makes {dim}-d ones"),
            ));
        }
        Ok(store)
    }

    /// Opens an existing store.
    pub async fn open(path: &Path) -> Result<Self> {
        let err = |source| Error::Store {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            return Err(Error::bad_file(
                path,
                "no store here (create one with `tttnn ingest`)",
            ));
        }
        let db = lancedb::connect(&path.to_string_lossy())
            .execute()
            .await
            .map_err(err)?;
        let table = db.open_table(DOCUMENTS).execute().await.map_err(err)?;
        let mut store = Self {
            path: path.to_path_buf(),
            table,
            dim: 0,
        };
        store.dim = store.stored_dim().await?;
        Ok(store)
    }

    async fn stored_dim(&self) -> Result<usize> {
        let schema = self.table.schema().await.map_err(|e| self.err(e))?;
        match schema
            .field_with_name("embedding")
            .map(|f| f.data_type().clone())
        {
            Ok(DataType::FixedSizeList(_, d)) => Ok(d as usize),
            _ => Err(Error::bad_file(
                &self.path,
                "documents table has no FixedSizeList `embedding` column",
            )),
        }
    }

    /// Records which encoder build made the embeddings ingested last (provider, precision, ONNX
    /// Runtime version) in the table's config, so a store says how its vectors were computed.
    pub async fn record_encoder(&self, encoder: &EncoderRecord) -> Result<()> {
        self.native()?
            .update_config(encoder.entries())
            .await
            .map_err(|e| self.err(e))
    }

    /// The encoder record of the last ingest, if one was written.
    pub async fn encoder_record(&self) -> Result<Option<EncoderRecord>> {
        let manifest = self.native()?.manifest().await.map_err(|e| self.err(e))?;
        Ok(EncoderRecord::from_config(&manifest.config))
    }

    /// The Lance table under LanceDB's handle: its config lives in the dataset's manifest.
    fn native(&self) -> Result<&lancedb::table::NativeTable> {
        self.table.as_native().ok_or_else(|| {
            Error::Internal(format!(
                "{} is not a local Lance table",
                self.path.display()
            ))
        })
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of stored documents.
    pub async fn count(&self) -> Result<usize> {
        self.table.count_rows(None).await.map_err(|e| self.err(e))
    }

    /// Appends documents in one commit.
    pub async fn add(&self, docs: &[Document]) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        if let Some(d) = docs.iter().find(|d| d.embedding.len() != self.dim) {
            return Err(Error::Internal(format!(
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
        .map_err(|e| Error::Internal(format!("building a record batch: {e}")))?;
        self.table
            .add(batch)
            .execute()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The Lance table version (recorded with each run).
    pub async fn version(&self) -> Result<u64> {
        self.table.version().await.map_err(|e| self.err(e))
    }

    /// Rows matching `filter` (a Lance SQL predicate), the given columns only.
    async fn scan(
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
        q.execute()
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))
    }

    /// Highest line of `source` already stored: ingest resumes after it.
    pub async fn max_line(&self, source: &str) -> Result<Option<u64>> {
        let batches = self
            .scan(
                Some(format!("source = {}", sql_str(source))),
                &["line"],
                None,
            )
            .await?;
        let mut max = None;
        for b in &batches {
            let lines = b
                .column_by_name("line")
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                .ok_or_else(|| Error::Internal("line column is not UInt64".into()))?;
            for i in 0..lines.len() {
                max = max.max(Some(lines.value(i)));
            }
        }
        Ok(max)
    }

    /// Rows whose id starts with `prefix` but come from another source than `source`.
    pub async fn other_source_with_prefix(
        &self,
        prefix: &str,
        source: &str,
    ) -> Result<Option<String>> {
        let batches = self
            .scan(
                Some(format!(
                    "starts_with(id, {}) AND source <> {}",
                    sql_str(prefix),
                    sql_str(source)
                )),
                &["source"],
                Some(1),
            )
            .await?;
        Ok(batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| string_column(b, "source").ok())
            .and_then(|v| v.into_iter().next()))
    }

    /// Every document id, in no particular order.
    pub async fn ids(&self) -> Result<Vec<String>> {
        let batches = self.scan(None, &["id"], None).await?;
        let mut out = Vec::new();
        for b in &batches {
            out.extend(string_column(b, "id")?);
        }
        Ok(out)
    }

    /// Documents of `split` (and of set `set_name` if given) in file order: by source, then line.
    pub async fn documents_of(&self, split: &str, set_name: Option<&str>) -> Result<Vec<DocRef>> {
        let mut filter = format!("split = {}", sql_str(split));
        if let Some(set) = set_name {
            filter += &format!(" AND set_name = {}", sql_str(set));
        }
        let batches = self
            .scan(Some(filter), &["id", "set_name", "source", "line"], None)
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            let lines = b
                .column_by_name("line")
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                .ok_or_else(|| Error::Internal("line column is not UInt64".into()))?;
            let ids = string_column(b, "id")?;
            let sets = string_column(b, "set_name")?;
            let sources = string_column(b, "source")?;
            for (i, ((id, set_name), source)) in ids.into_iter().zip(sets).zip(sources).enumerate()
            {
                out.push(DocRef {
                    id,
                    set_name,
                    source,
                    line: lines.value(i),
                });
            }
        }
        out.sort_by(|a, b| (&a.source, a.line).cmp(&(&b.source, b.line)));
        Ok(out)
    }

    /// Number of rows from any of `sources`.
    pub async fn count_from(&self, sources: &[String]) -> Result<usize> {
        if sources.is_empty() {
            return Ok(0);
        }
        let list: Vec<String> = sources.iter().map(|s| sql_str(s)).collect();
        self.table
            .count_rows(Some(format!("source IN ({})", list.join(", "))))
            .await
            .map_err(|e| self.err(e))
    }

    /// The stored embedding and text of document `id`.
    pub async fn document(&self, id: &str) -> Result<Option<(Vec<f32>, String)>> {
        let batches = self
            .scan(
                Some(format!("id = {}", sql_str(id))),
                &["embedding", "text"],
                Some(1),
            )
            .await?;
        for b in &batches {
            if b.num_rows() == 0 {
                continue;
            }
            let embedding = embedding_at(embedding_column(b)?, 0)?;
            let text = string_column(b, "text")?
                .into_iter()
                .next()
                .unwrap_or_default();
            return Ok(Some((embedding, text)));
        }
        Ok(None)
    }

    /// Merges the small files many appends leave behind (pitfalls §4), then deletes the versions
    /// before the merge: their files would otherwise double the store on disk. Files of a commit
    /// that never finished (a killed ingest) are left to Lance's 7-day rule.
    pub async fn compact(&self) -> Result<()> {
        use lancedb::table::optimize::{CompactionMode, CompactionOptions};
        use lancedb::table::OptimizeAction;
        // Lance's defaults read ahead up to 2 GiB while rewriting, so the merge's peak RSS grew
        // with the table (351 -> 518 MB from 20k to 320k documents); copying pages without
        // decoding them and a 64 MiB read-ahead keep it flat (docs/benchmarks.md, ingest memory).
        self.table
            .optimize(OptimizeAction::Compact {
                options: CompactionOptions {
                    compaction_mode: Some(CompactionMode::TryBinaryCopy),
                    io_buffer_size: Some(64 << 20),
                    ..Default::default()
                },
                remap_options: None,
            })
            .await
            .map_err(|e| self.err(e))?;
        self.table
            .optimize(OptimizeAction::Prune {
                older_than: Some(lancedb::table::optimize::Duration::zero()),
                delete_unverified: Some(false),
                error_if_tagged_old_versions: Some(false),
            })
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Names of the vector indexes on `embedding`.
    pub async fn vector_indexes(&self) -> Result<Vec<String>> {
        let idx = self.table.list_indices().await.map_err(|e| self.err(e))?;
        Ok(idx
            .into_iter()
            .filter(|i| i.columns.iter().any(|c| c == "embedding"))
            .map(|i| i.name)
            .collect())
    }

    /// Drops every vector index, leaving exact (flat) search.
    pub async fn drop_vector_indexes(&self) -> Result<usize> {
        let names = self.vector_indexes().await?;
        for n in &names {
            self.table.drop_index(n).await.map_err(|e| self.err(e))?;
        }
        Ok(names.len())
    }

    /// The neighbours of `vector` under `r`: nearest first, `exclude_id` left out, at most
    /// `max_distance` away, at most `k` of them.
    pub async fn retrieve(&self, vector: &[f32], r: &Retrieval) -> Result<Vec<Neighbor>> {
        let extra = usize::from(r.exclude_id.is_some());
        let mut out = self
            .nearest_in(vector, r.k + extra, r.mode, r.split.as_deref())
            .await?;
        if let Some(id) = &r.exclude_id {
            out.retain(|n| &n.id != id);
        }
        if let Some(d) = r.max_distance {
            out.retain(|n| n.distance <= d);
        }
        out.truncate(r.k);
        Ok(out)
    }

    /// Builds (or replaces) the IVF-PQ vector index on `embedding`, L2 distance.
    pub async fn create_ivf_pq(&self, p: IvfPqParams) -> Result<()> {
        let builder = IvfPqIndexBuilder::default()
            .distance_type(DistanceType::L2)
            .num_partitions(p.partitions)
            .num_sub_vectors(p.sub_vectors)
            .num_bits(p.bits);
        self.table
            .create_index(&["embedding"], Index::IvfPq(builder))
            .replace(true)
            .execute()
            .await
            .map_err(|e| self.err(e))
    }

    /// The `k` nearest documents to `vector`, nearest first, by L2 distance.
    pub async fn nearest(
        &self,
        vector: &[f32],
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Neighbor>> {
        self.nearest_in(vector, k, mode, None).await
    }

    /// [`Store::nearest`] among the documents of one split only.
    ///
    /// Lance evaluates a filter applied before the search by scanning the `split` column of every
    /// row, which at 1M rows made an IVF-PQ query 8x slower (docs/benchmarks.md). The split is
    /// therefore first applied to the 2k nearest of all documents; only when fewer than k of them
    /// are in the split is the search repeated with the filter first. For exact search both give
    /// the same neighbours: the k nearest of the split are among the 2k nearest of all.
    pub async fn nearest_in(
        &self,
        vector: &[f32],
        k: usize,
        mode: SearchMode,
        split: Option<&str>,
    ) -> Result<Vec<Neighbor>> {
        let Some(split) = split else {
            return self.search(vector, k, mode, None).await;
        };
        let filter = format!("split = {}", sql_str(split));
        let mut out = self
            .search(vector, 2 * k, mode, Some((&filter, Filter::After)))
            .await?;
        if out.len() < k {
            out = self
                .search(vector, k, mode, Some((&filter, Filter::Before)))
                .await?;
        }
        out.truncate(k);
        Ok(out)
    }

    /// The `limit` nearest documents to `vector` passing `filter`, nearest first.
    async fn search(
        &self,
        vector: &[f32],
        limit: usize,
        mode: SearchMode,
        filter: Option<(&str, Filter)>,
    ) -> Result<Vec<Neighbor>> {
        if vector.len() != self.dim {
            return Err(Error::Internal(format!(
                "query vector is {}-d, store is {}-d",
                vector.len(),
                self.dim
            )));
        }
        let mut query = self
            .table
            .vector_search(vector)
            .map_err(|e| self.err(e))?
            .column("embedding")
            .distance_type(DistanceType::L2)
            .select(Select::columns(&[
                "id",
                "set_name",
                "text",
                "embedding",
                "_distance",
            ]))
            .limit(limit);
        if let Some((predicate, when)) = filter {
            query = query.only_if(predicate);
            if when == Filter::After {
                query = query.postfilter();
            }
        }
        query = match mode {
            SearchMode::Exact => query.bypass_vector_index(),
            SearchMode::Indexed {
                nprobes,
                refine_factor,
            } => {
                let q = query.nprobes(nprobes).map_err(|e| self.err(e))?;
                match refine_factor {
                    Some(r) => q.refine_factor(r),
                    None => q,
                }
            }
        };
        let batches: Vec<RecordBatch> = query
            .execute()
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for b in &batches {
            let ids = string_column(b, "id")?;
            let sets = string_column(b, "set_name")?;
            let texts = string_column(b, "text")?;
            let dist = b
                .column_by_name("_distance")
                .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
                .ok_or_else(|| Error::Internal("search result has no _distance column".into()))?;
            let embeddings = embedding_column(b)?;
            for i in 0..b.num_rows() {
                // LanceDB's L2 is the squared distance; the original filters on the unsquared one.
                out.push(Neighbor {
                    id: ids[i].clone(),
                    set_name: sets[i].clone(),
                    distance: dist.value(i).max(0.0).sqrt(),
                    text: texts[i].clone(),
                    embedding: embedding_at(embeddings, i)?,
                });
            }
        }
        out.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        Ok(out)
    }
}

/// When a filter applies: before the nearest-neighbour search, or to its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Before,
    After,
}

/// A SQL string literal for a Lance filter.
fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn embedding_column(b: &RecordBatch) -> Result<&FixedSizeListArray> {
    b.column_by_name("embedding")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
        .ok_or_else(|| Error::Internal("embedding column is not a FixedSizeList".into()))
}

/// Row `i` of an embedding column.
fn embedding_at(column: &FixedSizeListArray, i: usize) -> Result<Vec<f32>> {
    let values = column.value(i);
    values
        .as_any()
        .downcast_ref::<Float32Array>()
        .map(|v| v.values().to_vec())
        .ok_or_else(|| Error::Internal("embedding values are not Float32".into()))
}

fn string_column(b: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("no column {name}")))?;
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return Ok((0..a.len()).map(|i| a.value(i).to_string()).collect());
    }
    if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
        return Ok((0..a.len()).map(|i| a.value(i).to_string()).collect());
    }
    Err(Error::Internal(format!(
        "column {name} is not a string column"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ivf_pq_defaults_follow_the_documented_rule() {
        assert_eq!(
            IvfPqParams::sized_for(1_000_000, 1024).unwrap(),
            IvfPqParams {
                partitions: 1000,
                sub_vectors: 128,
                bits: 8
            }
        );
        assert_eq!(
            IvfPqParams::sized_for(10_000, 384).unwrap(),
            IvfPqParams {
                partitions: 100,
                sub_vectors: 48,
                bits: 8
            }
        );
        assert_eq!(IvfPqParams::sized_for(300, 40).unwrap().sub_vectors, 5);
        assert!(IvfPqParams::sized_for(100, 1024)
            .unwrap_err()
            .contains("256 rows"));
        assert!(IvfPqParams::sized_for(1000, 30).is_err());
    }
}
