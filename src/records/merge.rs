//! Merging the databases of a sharded run (`tttnn run --shard I/N`, one file each) into one run,
//! and gathering the runs of several databases (a sweep's workers', `tttnn merge --runs`) into one.
use std::path::{Path, PathBuf};

use super::{Db, RunStatus};
use crate::error::{Error, Result};

/// One shard database's run, as merge checks it.
#[derive(Debug, Clone)]
struct ShardRun {
    path: PathBuf,
    index: usize,
    count: usize,
    status: String,
    /// Its settings with the shard left out (as `same_settings` gives them): every shard of one
    /// run has the same.
    config: String,
}

impl Db {
    /// Copies every run of the databases `inputs` into this one as one run: they must be shards
    /// (`--shard I/N`, all N present once) of the same settings, which `without_shard` gives for
    /// a recorded config JSON (the runner's settings, the shard left out). Returns the new run's
    /// id.
    pub fn merge_shards(
        &self,
        inputs: &[PathBuf],
        without_shard: &dyn Fn(&str) -> Result<String>,
    ) -> Result<i64> {
        let result = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| self.attach_shard(i, input, without_shard))
            .collect::<Result<Vec<_>>>()
            .and_then(|shards| {
                self.check_shards(&shards)?;
                self.copy_shards(&shards)
            });
        // Whatever failed, this connection is left as it was found: a shard attached before a
        // failed check (or one that failed its own check) is detached too.
        let _ = self.conn.execute_batch("DROP TABLE IF EXISTS merged");
        for i in 0..inputs.len() {
            let _ = self
                .conn
                .execute_batch(&format!("DETACH DATABASE IF EXISTS shard{i}"));
        }
        let id = result?;
        self.refresh_settings_view(None)?;
        Ok(id)
    }

    fn attach_shard(
        &self,
        i: usize,
        input: &Path,
        without_shard: &dyn Fn(&str) -> Result<String>,
    ) -> Result<ShardRun> {
        self.attach(&format!("shard{i}"), input)?;
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT coalesce(shard_index, 0), coalesce(shard_count, 1), status,
                     CAST(config AS VARCHAR) FROM shard{i}.runs"
            ))
            .map_err(|e| self.err(e))?;
        let rows: Vec<(i64, i64, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let [(index, count, status, config)] = <[_; 1]>::try_from(rows).map_err(|rows| {
            Error::bad_file(
                input,
                format!(
                    "holds {} runs; merge takes databases of one shard run each",
                    rows.len()
                ),
            )
        })?;
        let config = without_shard(&config)
            .map_err(|e| Error::bad_file(input, format!("run config unreadable: {e}")))?;
        Ok(ShardRun {
            path: input.to_path_buf(),
            index: index as usize,
            count: count as usize,
            status,
            config,
        })
    }

    /// Attaches the database at `input` read-only as `alias`.
    fn attach(&self, alias: &str, input: &Path) -> Result<()> {
        if !input.is_file() {
            return Err(Error::bad_file(input, "no results database here"));
        }
        let path = input.display().to_string().replace('\'', "''");
        self.conn
            .execute_batch(&format!("ATTACH '{path}' AS {alias} (READ_ONLY)"))
            .map_err(|e| {
                if super::is_lock_error(&e) {
                    // A database still being written (DuckDB: one writing process per file).
                    Error::bad_file(input, format!("database is in use by another process: {e}"))
                } else {
                    Error::records(input, e)
                }
            })
    }

    /// Copies every run of the databases `inputs` (a sweep's workers', one file each) into this
    /// one, each under a new id; a run whose name this database holds already is left out, so
    /// gathering again copies nothing twice. Every run copied must be finished. Returns the new
    /// runs' ids.
    pub fn gather_runs(&self, inputs: &[PathBuf]) -> Result<Vec<i64>> {
        let mut copied = Vec::new();
        let result = (|| -> Result<()> {
            for (i, input) in inputs.iter().enumerate() {
                let alias = format!("gather{i}");
                self.attach(&alias, input)?;
                let mut stmt = self
                    .conn
                    .prepare(&format!(
                        "SELECT g.id, g.name, g.status,
                             EXISTS (SELECT 1 FROM runs r WHERE r.name = g.name) AS present
                         FROM {alias}.runs g ORDER BY g.id"
                    ))
                    .map_err(|e| self.err(e))?;
                let runs: Vec<(i64, Option<String>, String, bool)> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(|e| self.err(e))?
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| self.err(e))?;
                for (old, name, status, present) in runs {
                    if present {
                        continue;
                    }
                    if status != RunStatus::Finished.as_str() {
                        return Err(Error::bad_file(
                            input,
                            format!(
                                "run {old} ({}) is {status}, not finished: resume it first",
                                name.as_deref().unwrap_or("unnamed")
                            ),
                        ));
                    }
                    let mut sql = format!(
                        "CREATE TEMP TABLE gathered AS SELECT nextval('run_ids') AS id;
                         INSERT INTO runs BY NAME SELECT * EXCLUDE (id), (SELECT id FROM gathered) AS id
                         FROM {alias}.runs WHERE id = {old};\n"
                    );
                    for table in ["docs", "curve", "neighbors"] {
                        sql += &format!(
                            "INSERT INTO {table} BY NAME SELECT * REPLACE ((SELECT id FROM gathered) AS run_id)
                             FROM {alias}.{table} WHERE run_id = {old};\n"
                        );
                    }
                    let id = self.in_transaction(|c| {
                        c.execute_batch(&sql)?;
                        let id = c.query_row("SELECT id FROM gathered", [], |r| r.get(0))?;
                        c.execute_batch("DROP TABLE gathered")?;
                        Ok(id)
                    })?;
                    copied.push(id);
                }
            }
            Ok(())
        })();
        let _ = self.conn.execute_batch("DROP TABLE IF EXISTS gathered");
        for i in 0..inputs.len() {
            let _ = self
                .conn
                .execute_batch(&format!("DETACH DATABASE IF EXISTS gather{i}"));
        }
        result?;
        self.refresh_settings_view(None)?;
        Ok(copied)
    }

    fn check_shards(&self, shards: &[ShardRun]) -> Result<()> {
        let first = shards
            .first()
            .ok_or_else(|| Error::setting("inputs", "no databases to merge"))?;
        let mut seen = vec![false; first.count];
        for s in shards {
            if s.count != first.count || s.config != first.config {
                return Err(Error::bad_file(
                    &s.path,
                    format!(
                        "is not a shard of the same run as {} (settings differ)",
                        first.path.display()
                    ),
                ));
            }
            if s.status != RunStatus::Finished.as_str() {
                return Err(Error::bad_file(
                    &s.path,
                    format!(
                        "shard {}/{} is {}, not finished: resume it first",
                        s.index, s.count, s.status
                    ),
                ));
            }
            if std::mem::replace(&mut seen[s.index], true) {
                return Err(Error::bad_file(
                    &s.path,
                    format!("shard {}/{} given twice", s.index, s.count),
                ));
            }
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(Error::setting(
                "inputs",
                format!("shard {missing}/{} is missing", first.count),
            ));
        }
        Ok(())
    }

    /// Copies the attached shards into one new run, in one transaction.
    fn copy_shards(&self, shards: &[ShardRun]) -> Result<i64> {
        let count = shards.len();
        let union = |column: &str| {
            (0..count)
                .map(|i| format!("SELECT {column} FROM shard{i}.runs"))
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        };
        // By name: a shard recorded before a migration lacks its columns, which then take their
        // defaults.
        let mut sql = format!(
            "CREATE TEMP TABLE merged AS SELECT nextval('run_ids') AS id;
             INSERT INTO runs BY NAME
             SELECT * EXCLUDE (id, shard_index, shard_count, error),
                    (SELECT id FROM merged) AS id, {count} AS shard_count
             FROM shard0.runs;
             UPDATE runs SET started_at = (SELECT min(started_at) FROM ({starts})),
                             finished_at = (SELECT max(finished_at) FROM ({ends}))
             WHERE id = (SELECT id FROM merged);\n",
            starts = union("started_at"),
            ends = union("finished_at"),
        );
        for i in 0..count {
            for table in ["docs", "curve", "neighbors"] {
                sql += &format!(
                    "INSERT INTO {table} BY NAME SELECT * REPLACE ((SELECT id FROM merged) AS run_id) FROM shard{i}.{table};\n"
                );
            }
        }
        self.in_transaction(|c| {
            c.execute_batch(&sql)?;
            c.query_row("SELECT id FROM merged", [], |r| r.get(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::NewRun;
    use crate::task::Shard;

    #[test]
    fn a_refused_merge_leaves_no_shard_attached() {
        let dir = tempfile::tempdir().unwrap();
        let two_runs = dir.path().join("two.duckdb");
        {
            let db = Db::open(&two_runs).unwrap();
            for _ in 0..2 {
                db.create_run(&NewRun {
                    name: None,
                    method: "ttt-nn".into(),
                    selection: "nn".into(),
                    task: "pile_all".into(),
                    model: "m".into(),
                    model_hash: "h".into(),
                    encoder: None,
                    store: "s".into(),
                    store_version: 1,
                    neighbors: 1,
                    max_length: 8,
                    shard: Shard::ALL,
                    lanes: 1,
                    adapter: "full".into(),
                    config: "{}".into(),
                    defaults: "{}".into(),
                })
                .unwrap();
            }
        }
        let out = Db::open(&dir.path().join("out.duckdb")).unwrap();
        // The same refusal twice: the first attempt's ATTACH did not outlive it.
        for _ in 0..2 {
            let e = out
                .merge_shards(std::slice::from_ref(&two_runs), &|c| Ok(c.to_string()))
                .unwrap_err();
            assert!(e.to_string().contains("holds 2 runs"), "{e}");
        }
    }
}
