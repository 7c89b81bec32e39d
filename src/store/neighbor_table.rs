//! A neighbour table (`tttnn neighbors`): every selected test document's neighbours, retrieved
//! once, so TTT workers read them instead of searching the index (issue #16: the paper's
//! 180-server fan-out as one batch job). A LanceDB directory of three tables:
//! - `settings`: one row, the JSON of the settings it was computed with and the store's version,
//!   written atomically when the table is created;
//! - `neighbors`: one row per (document, slice, rank): `doc_id`, `rank` (1 = nearest within the
//!   slice), `neighbor_id`, `distance` (unsquared L2), `slice`, and where the matrix-product
//!   search found it (`exact_batch.rs`) the neighbour's `row_id` and `squared_distance`;
//! - `done`: one row per finished (document, slice) with its neighbour count, appended after its
//!   rows, so a killed job resumes from what `done` lists and the rows of unfinished documents are
//!   dropped.
//!
//! A table computed in M slices of the store (`--slice J/M`) holds each slice's own top k; the
//! reader merges them into the exact global top k by (squared distance, row id), the order of
//! Lance's flat search. Tables written before slices existed lack the three new columns and are
//! read (and resumed) as one slice.
//!
//! Shards (`--shard I/N`) append to the same tables concurrently: Lance commits concurrent appends
//! one after another (a writer whose commit finds a newer version rebases onto it and retries).
//! Worker 0 creates the tables and the others wait for them: two creators of one Lance table race,
//! the second's create committing as an overwrite of the first's.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase};
use lancedb::Table;

use super::arrow::{f32_column, string_column};
use crate::error::{Error, Result};

/// One neighbour of one test document, as the table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableNeighbor {
    /// 1 for the nearest.
    pub rank: u32,
    /// The neighbour's document id in the store.
    pub id: String,
    /// Unsquared L2 distance to the test document.
    pub distance: f32,
    /// The neighbour's Lance `_rowid` and squared distance, which order neighbours of different
    /// slices as Lance's flat search does (None where the per-query search found it).
    pub order: Option<(f32, u64)>,
}

/// A neighbour table, open.
pub struct NeighborTable {
    path: PathBuf,
    neighbors: Table,
    done: Table,
    /// The settings JSON it was computed with.
    settings: String,
    /// Whether the tables have the `slice` columns (tables written before slices do not).
    sliced: bool,
    rt: tokio::runtime::Runtime,
}

fn neighbors_schema(sliced: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("neighbor_id", DataType::Utf8, false),
        Field::new("distance", DataType::Float32, false),
    ];
    if sliced {
        fields.extend([
            Field::new("slice", DataType::UInt32, false),
            Field::new("row_id", DataType::UInt64, true),
            Field::new("squared_distance", DataType::Float32, true),
        ]);
    }
    Arc::new(Schema::new(fields))
}

fn done_schema(sliced: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("neighbors", DataType::UInt32, false),
    ];
    if sliced {
        fields.push(Field::new("slice", DataType::UInt32, false));
    }
    Arc::new(Schema::new(fields))
}

/// A UInt32 column, or 0 for every row where a table from before slices lacks it.
fn slice_column(path: &Path, b: &RecordBatch) -> Result<Vec<u32>> {
    match b.column_by_name("slice") {
        None => Ok(vec![0; b.num_rows()]),
        Some(c) => c
            .as_any()
            .downcast_ref::<UInt32Array>()
            .map(|a| a.values().to_vec())
            .ok_or_else(|| Error::bad_file(path, "column `slice` is not UInt32")),
    }
}

fn settings_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "settings",
        DataType::Utf8,
        false,
    )]))
}

impl NeighborTable {
    /// Opens the table at `path`, creating it with `settings` (JSON) if it does not exist and
    /// this process is the `creator` (worker 0 of `--shard I/N`; the others wait for it, as
    /// [`super::Store::open_or_create_as`]); an existing table must have the same settings.
    pub fn open_or_create(path: &Path, settings: &str, creator: bool) -> Result<Self> {
        let table = if creator {
            Self::connect(path, Some(settings))?
        } else {
            super::wait_for_creator(path, "neighbour table", || Self::connect(path, None))?
        };
        if table.settings != settings {
            return Err(Error::bad_file(
                path,
                format!(
                    "this neighbour table was computed with other settings: {}; these are {settings} (use another --out)",
                    table.settings
                ),
            ));
        }
        Ok(table)
    }

    /// Opens an existing table.
    pub fn open(path: &Path) -> Result<Self> {
        if !super::is_uri(path) && !path.exists() {
            return Err(Error::bad_file(
                path,
                "no neighbour table here (make one with `tttnn neighbors`)",
            ));
        }
        Self::connect(path, None)
    }

    fn connect(path: &Path, create: Option<&str>) -> Result<Self> {
        if super::is_uri(path) {
            super::check_endpoint_env()?;
        }
        let rt = super::runtime()?;
        let err = |source| Error::store(path, source);
        let (settings, neighbors, done, sliced) = rt.block_on(async {
            let db = lancedb::connect(&path.to_string_lossy())
                .execute()
                .await
                .map_err(err)?;
            let names = db.table_names().execute().await.map_err(err)?;
            let settings_table = match create {
                // The settings row is the table's first version, written by worker 0 alone
                // (`open_or_create`); a re-run opens what it wrote.
                Some(json) if !names.iter().any(|n| n == "settings") => {
                    let row = RecordBatch::try_new(
                        settings_schema(),
                        vec![Arc::new(StringArray::from(vec![json]))],
                    )
                    .map_err(|e| Error::arrow("the neighbour table's settings", e))?;
                    db.create_table("settings", row)
                        .execute()
                        .await
                        .map_err(err)?
                }
                Some(_) => db.open_table("settings").execute().await.map_err(err)?,
                None => db.open_table("settings").execute().await.map_err(|_| {
                    Error::bad_file(path, "not a neighbour table (no `settings` table)")
                })?,
            };
            // Worker 0 creates whichever of the other two is missing (a kill may have left one
            // out); the other workers only open them.
            let table = |name: &'static str, schema: SchemaRef| {
                let db = db.clone();
                async move {
                    match db.open_table(name).execute().await {
                        Ok(t) => Ok(t),
                        Err(_) if create.is_some() => db
                            .create_empty_table(name, schema)
                            .execute()
                            .await
                            .map_err(err),
                        Err(e) => Err(err(e)),
                    }
                }
            };
            let neighbors = table("neighbors", neighbors_schema(true)).await?;
            let done = table("done", done_schema(true)).await?;
            let sliced = neighbors
                .schema()
                .await
                .map_err(err)?
                .field_with_name("slice")
                .is_ok();
            let batches: Vec<RecordBatch> = settings_table
                .query()
                .execute()
                .await
                .map_err(err)?
                .try_collect()
                .await
                .map_err(err)?;
            let settings = batches
                .iter()
                .find(|b| b.num_rows() > 0)
                .map(|b| string_column(path, b, "settings"))
                .transpose()?
                .and_then(|v| v.into_iter().next())
                .ok_or_else(|| Error::bad_file(path, "the neighbour table has no settings row"))?;
            Ok::<_, Error>((settings, neighbors, done, sliced))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            neighbors,
            done,
            settings,
            sliced,
            rt,
        })
    }

    /// Where the table lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings JSON it was computed with.
    pub fn settings(&self) -> &str {
        &self.settings
    }

    fn err(&self, source: lancedb::Error) -> Error {
        Error::store(&self.path, source)
    }

    fn scan(&self, table: &Table, filter: Option<String>) -> Result<Vec<RecordBatch>> {
        self.rt
            .block_on(async {
                let mut q = table.query();
                if let Some(f) = filter {
                    q = q.only_if(f);
                }
                q.execute().await?.try_collect().await
            })
            .map_err(|e| self.err(e))
    }

    /// The documents whose neighbours in `slice` are all recorded.
    pub fn done(&self, slice: u32) -> Result<HashSet<String>> {
        Ok(self
            .done_slices()?
            .into_iter()
            .filter(|(_, s)| s.contains(&slice))
            .map(|(d, _)| d)
            .collect())
    }

    /// Every document with a `done` row, and the slices it is done in.
    fn done_slices(&self) -> Result<HashMap<String, HashSet<u32>>> {
        let mut out: HashMap<String, HashSet<u32>> = HashMap::new();
        for b in self.scan(&self.done, None)? {
            let docs = string_column(&self.path, &b, "doc_id")?;
            for (doc, slice) in docs.into_iter().zip(slice_column(&self.path, &b)?) {
                out.entry(doc).or_default().insert(slice);
            }
        }
        Ok(out)
    }

    /// Drops the rows in `slice` that `docs` (this worker's documents not marked done) have: a
    /// job of this worker killed between its two appends left them. Only this worker's own
    /// documents and slice: another worker's may be between its two appends right now.
    pub fn drop_unfinished(&self, docs: &HashSet<&str>, slice: u32) -> Result<usize> {
        let mut orphans = HashSet::new();
        for b in self.scan(&self.neighbors, None)? {
            let slices = slice_column(&self.path, &b)?;
            orphans.extend(
                string_column(&self.path, &b, "doc_id")?
                    .into_iter()
                    .zip(slices)
                    .filter(|(d, s)| *s == slice && docs.contains(d.as_str()))
                    .map(|(d, _)| d),
            );
        }
        if orphans.is_empty() {
            return Ok(0);
        }
        let list: Vec<String> = orphans.iter().map(|d| super::sql_str(d)).collect();
        let mut predicate = format!("doc_id IN ({})", list.join(", "));
        if self.sliced {
            predicate += &format!(" AND slice = {slice}");
        }
        self.rt
            .block_on(self.neighbors.delete(predicate.as_str()))
            .map_err(|e| self.err(e))?;
        Ok(orphans.len())
    }

    /// Appends documents' neighbours in `slice` (one commit), then marks them done (a second).
    pub fn append(&self, docs: &[(String, Vec<TableNeighbor>)], slice: u32) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        if slice > 0 && !self.sliced {
            return Err(Error::bad_file(
                &self.path,
                "this neighbour table was written before slices existed: compute slices into a new one",
            ));
        }
        let (batch, done) = self.append_parts(docs, slice)?;
        if batch.num_rows() > 0 {
            self.rt
                .block_on(self.neighbors.add(batch).execute())
                .map_err(|e| self.err(e))?;
        }
        self.rt
            .block_on(self.done.add(done).execute())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The two batches of an append: the neighbour rows and the done markers.
    fn append_parts(
        &self,
        docs: &[(String, Vec<TableNeighbor>)],
        slice: u32,
    ) -> Result<(RecordBatch, RecordBatch)> {
        let rows: Vec<(&String, &TableNeighbor)> = docs
            .iter()
            .flat_map(|(d, ns)| ns.iter().map(move |n| (d, n)))
            .collect();
        let mut columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(d, _)| d.as_str()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|(_, n)| n.rank),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(_, n)| n.id.as_str()),
            )),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|(_, n)| n.distance),
            )),
        ];
        let mut done: Vec<Arc<dyn Array>> = vec![
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|(d, _)| d.as_str()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                docs.iter().map(|(_, ns)| ns.len() as u32),
            )),
        ];
        if self.sliced {
            columns.extend([
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|_| slice)))
                    as Arc<dyn Array>,
                Arc::new(UInt64Array::from_iter(
                    rows.iter().map(|(_, n)| n.order.map(|o| o.1)),
                )),
                Arc::new(Float32Array::from_iter(
                    rows.iter().map(|(_, n)| n.order.map(|o| o.0)),
                )),
            ]);
            done.push(Arc::new(UInt32Array::from_iter_values(
                docs.iter().map(|_| slice),
            )));
        }
        let batch = RecordBatch::try_new(neighbors_schema(self.sliced), columns)
            .map_err(|e| Error::arrow("the neighbour rows", e))?;
        let done = RecordBatch::try_new(done_schema(self.sliced), done)
            .map_err(|e| Error::arrow("the done rows", e))?;
        Ok((batch, done))
    }

    /// Every document done in all `slices` with its `k` nearest neighbours, nearest first: one
    /// slice's rows in their ranks; several slices' merged by (squared distance, row id).
    pub fn load(&self, slices: u32, k: usize) -> Result<HashMap<String, Vec<TableNeighbor>>> {
        let mut out: HashMap<String, Vec<(u32, TableNeighbor)>> = self
            .done_slices()?
            .into_iter()
            .filter(|(_, s)| (0..slices).all(|j| s.contains(&j)))
            .map(|(d, _)| (d, Vec::new()))
            .collect();
        for b in self.scan(&self.neighbors, None)? {
            let docs = string_column(&self.path, &b, "doc_id")?;
            let ids = string_column(&self.path, &b, "neighbor_id")?;
            let distances = f32_column(&self.path, &b, "distance")?;
            let slice = slice_column(&self.path, &b)?;
            let ranks = b
                .column_by_name("rank")
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
                .ok_or_else(|| Error::bad_file(&self.path, "no UInt32 column `rank`"))?;
            let row_ids = b
                .column_by_name("row_id")
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
            let squared = b
                .column_by_name("squared_distance")
                .and_then(|c| c.as_any().downcast_ref::<Float32Array>());
            for (i, ((doc, id), distance)) in docs.into_iter().zip(ids).zip(distances).enumerate() {
                // Rows of a document not marked done are a killed job's leftovers.
                if let Some(list) = out.get_mut(&doc) {
                    let order = match (squared, row_ids) {
                        (Some(s), Some(r)) if s.is_valid(i) && r.is_valid(i) => {
                            Some((s.value(i), r.value(i)))
                        }
                        _ => None,
                    };
                    list.push((
                        slice[i],
                        TableNeighbor {
                            rank: ranks.value(i),
                            id,
                            distance,
                            order,
                        },
                    ));
                }
            }
        }
        out.into_iter()
            .map(|(doc, mut rows)| {
                rows.sort_by_key(|(s, n)| (*s, n.rank));
                rows.dedup_by_key(|(s, n)| (*s, n.rank));
                let mut list: Vec<TableNeighbor> = rows.into_iter().map(|(_, n)| n).collect();
                if slices > 1 {
                    let mut ordered = list
                        .into_iter()
                        .map(|n| match n.order {
                            Some(o) => Ok((o, n)),
                            None => Err(Error::bad_file(
                                &self.path,
                                format!("document {doc}'s neighbour {} has no row id to merge slices by", n.id),
                            )),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    ordered.sort_by(|(a, _), (b, _)| super::flat_search_order(*a, *b));
                    list = ordered.into_iter().take(k).map(|(_, n)| n).collect();
                    for (i, n) in list.iter_mut().enumerate() {
                        n.rank = i as u32 + 1;
                    }
                }
                Ok((doc, list))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rank: u32, id: &str) -> TableNeighbor {
        TableNeighbor {
            rank,
            id: id.into(),
            distance: rank as f32 / 10.0,
            order: None,
        }
    }

    #[test]
    fn a_killed_jobs_unfinished_rows_are_ignored_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let t = NeighborTable::open_or_create(&path, r#"{"k":2}"#, true).unwrap();
        t.append(&[("a".into(), vec![row(2, "y"), row(1, "x")])], 0)
            .unwrap();
        // Killed between its two appends: b's rows are there, b is not marked done.
        let (orphans, _) = t
            .append_parts(&[("b".into(), vec![row(1, "z")])], 0)
            .unwrap();
        t.rt.block_on(t.neighbors.add(orphans).execute()).unwrap();
        let loaded = t.load(1, 2).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["a"], vec![row(1, "x"), row(2, "y")]);
        drop(t);
        let t = NeighborTable::open_or_create(&path, r#"{"k":2}"#, true).unwrap();
        // Another worker's unfinished document is not this worker's to drop.
        assert_eq!(t.drop_unfinished(&HashSet::from(["c"]), 0).unwrap(), 0);
        assert_eq!(t.drop_unfinished(&HashSet::from(["b"]), 1).unwrap(), 0);
        assert_eq!(t.drop_unfinished(&HashSet::from(["b", "c"]), 0).unwrap(), 1);
        assert_eq!(t.done(0).unwrap(), HashSet::from(["a".to_string()]));
        // Other settings are another table.
        let e = NeighborTable::open_or_create(&path, r#"{"k":3}"#, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("other settings"), "{e}");
        assert!(NeighborTable::open(&dir.path().join("none")).is_err());
    }

    #[test]
    fn slices_merge_into_the_global_top_k_by_distance_then_row_id() {
        let dir = tempfile::tempdir().unwrap();
        let t = NeighborTable::open_or_create(&dir.path().join("t"), "{}", true).unwrap();
        let n = |rank: u32, id: &str, squared: f32, row_id: u64| TableNeighbor {
            rank,
            id: id.into(),
            distance: squared.sqrt(),
            order: Some((squared, row_id)),
        };
        // Slice 0 holds rows 0..10, slice 1 rows 10..20; "c" and "y" tie at 0.25.
        t.append(
            &[("a".into(), vec![n(1, "x", 0.1, 3), n(2, "y", 0.25, 7)])],
            0,
        )
        .unwrap();
        t.append(
            &[("a".into(), vec![n(1, "c", 0.25, 12), n(2, "d", 0.3, 11)])],
            1,
        )
        .unwrap();
        // "b" is done in slice 0 only: not yet a finished document of a 2-slice table.
        t.append(&[("b".into(), vec![n(1, "z", 0.5, 1)])], 0)
            .unwrap();
        let loaded = t.load(2, 3).unwrap();
        assert_eq!(loaded.len(), 1);
        let got: Vec<(u32, &str)> = loaded["a"]
            .iter()
            .map(|m| (m.rank, m.id.as_str()))
            .collect();
        assert_eq!(got, vec![(1, "x"), (2, "y"), (3, "c")]);
        assert_eq!(t.done(1).unwrap(), HashSet::from(["a".to_string()]));
        assert_eq!(t.load(1, 3).unwrap().len(), 2);
    }
}
