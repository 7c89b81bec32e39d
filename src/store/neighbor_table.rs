//! A neighbour table (`tttnn neighbors`): every selected test document's neighbours, retrieved
//! once, so TTT workers read them instead of searching the index (issue #16: the paper's
//! 180-server fan-out as one batch job). A LanceDB directory of three tables:
//! - `settings`: one row, the JSON of the settings it was computed with and the store's version,
//!   written atomically when the table is created;
//! - `neighbors`: one row per (document, rank): `doc_id`, `rank` (1 = nearest), `neighbor_id`,
//!   `distance` (unsquared L2);
//! - `done`: one row per finished document with its neighbour count, appended after its rows, so
//!   a killed job resumes from what `done` lists and the rows of unfinished documents are dropped.
//!
//! Shards (`--shard I/N`) append to the same tables concurrently: Lance commits concurrent appends
//! one after another (a writer whose commit finds a newer version rebases onto it and retries).
//! Worker 0 creates the tables and the others wait for them: two creators of one Lance table race,
//! the second's create committing as an overwrite of the first's.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Float32Array, RecordBatch, StringArray, UInt32Array};
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
}

/// A neighbour table, open.
pub struct NeighborTable {
    path: PathBuf,
    neighbors: Table,
    done: Table,
    /// The settings JSON it was computed with.
    settings: String,
    rt: tokio::runtime::Runtime,
}

fn neighbors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("neighbor_id", DataType::Utf8, false),
        Field::new("distance", DataType::Float32, false),
    ]))
}

fn done_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("neighbors", DataType::UInt32, false),
    ]))
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
        let (settings, neighbors, done) = rt.block_on(async {
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
            let neighbors = table("neighbors", neighbors_schema()).await?;
            let done = table("done", done_schema()).await?;
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
            Ok::<_, Error>((settings, neighbors, done))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            neighbors,
            done,
            settings,
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

    /// The documents whose neighbours are all recorded.
    pub fn done(&self) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for b in self.scan(&self.done, None)? {
            out.extend(string_column(&self.path, &b, "doc_id")?);
        }
        Ok(out)
    }

    /// Drops the rows that `docs` (this worker's documents not marked done) have: a job of this
    /// worker killed between its two appends left them. Only this worker's own documents: another
    /// shard's may be between its two appends right now.
    pub fn drop_unfinished(&self, docs: &HashSet<&str>) -> Result<usize> {
        let mut orphans = HashSet::new();
        for b in self.scan(&self.neighbors, None)? {
            orphans.extend(
                string_column(&self.path, &b, "doc_id")?
                    .into_iter()
                    .filter(|d| docs.contains(d.as_str())),
            );
        }
        if orphans.is_empty() {
            return Ok(0);
        }
        let list: Vec<String> = orphans.iter().map(|d| super::sql_str(d)).collect();
        let predicate = format!("doc_id IN ({})", list.join(", "));
        self.rt
            .block_on(self.neighbors.delete(predicate.as_str()))
            .map_err(|e| self.err(e))?;
        Ok(orphans.len())
    }

    /// Appends documents' neighbours (one commit), then marks them done (a second).
    pub fn append(&self, docs: &[(String, Vec<TableNeighbor>)]) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let (batch, done) = self.append_parts(docs)?;
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
    ) -> Result<(RecordBatch, RecordBatch)> {
        let rows: Vec<(&String, &TableNeighbor)> = docs
            .iter()
            .flat_map(|(d, ns)| ns.iter().map(move |n| (d, n)))
            .collect();
        let batch = RecordBatch::try_new(
            neighbors_schema(),
            vec![
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
            ],
        )
        .map_err(|e| Error::arrow("the neighbour rows", e))?;
        let done = RecordBatch::try_new(
            done_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    docs.iter().map(|(d, _)| d.as_str()),
                )),
                Arc::new(UInt32Array::from_iter_values(
                    docs.iter().map(|(_, ns)| ns.len() as u32),
                )),
            ],
        )
        .map_err(|e| Error::arrow("the done rows", e))?;
        Ok((batch, done))
    }

    /// Every done document's neighbours, nearest first.
    pub fn load(&self) -> Result<HashMap<String, Vec<TableNeighbor>>> {
        let mut out: HashMap<String, Vec<TableNeighbor>> =
            self.done()?.into_iter().map(|d| (d, Vec::new())).collect();
        for b in self.scan(&self.neighbors, None)? {
            let docs = string_column(&self.path, &b, "doc_id")?;
            let ids = string_column(&self.path, &b, "neighbor_id")?;
            let distances = f32_column(&self.path, &b, "distance")?;
            let ranks = b
                .column_by_name("rank")
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
                .ok_or_else(|| Error::bad_file(&self.path, "no UInt32 column `rank`"))?;
            for (i, ((doc, id), distance)) in docs.into_iter().zip(ids).zip(distances).enumerate() {
                // Rows of a document not marked done are a killed job's leftovers.
                if let Some(list) = out.get_mut(&doc) {
                    list.push(TableNeighbor {
                        rank: ranks.value(i),
                        id,
                        distance,
                    });
                }
            }
        }
        for list in out.values_mut() {
            list.sort_by_key(|n| n.rank);
            list.dedup_by_key(|n| n.rank);
        }
        Ok(out)
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
        }
    }

    #[test]
    fn a_killed_jobs_unfinished_rows_are_ignored_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let t = NeighborTable::open_or_create(&path, r#"{"k":2}"#, true).unwrap();
        t.append(&[("a".into(), vec![row(2, "y"), row(1, "x")])])
            .unwrap();
        // Killed between its two appends: b's rows are there, b is not marked done.
        let (orphans, _) = t.append_parts(&[("b".into(), vec![row(1, "z")])]).unwrap();
        t.rt.block_on(t.neighbors.add(orphans).execute()).unwrap();
        let loaded = t.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["a"], vec![row(1, "x"), row(2, "y")]);
        drop(t);
        let t = NeighborTable::open_or_create(&path, r#"{"k":2}"#, true).unwrap();
        // Another worker's unfinished document is not this worker's to drop.
        assert_eq!(t.drop_unfinished(&HashSet::from(["c"])).unwrap(), 0);
        assert_eq!(t.drop_unfinished(&HashSet::from(["b", "c"])).unwrap(), 1);
        assert_eq!(t.done().unwrap(), HashSet::from(["a".to_string()]));
        // Other settings are another table.
        let e = NeighborTable::open_or_create(&path, r#"{"k":3}"#, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("other settings"), "{e}");
        assert!(NeighborTable::open(&dir.path().join("none")).is_err());
    }
}
