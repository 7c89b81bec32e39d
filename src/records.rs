//! Run records in DuckDB: the schema lives in `migrations/NNN_name.sql`, applied in order when a
//! database is opened and tracked in `schema_migrations`, so an experiment is a record you query.
use std::path::{Path, PathBuf};

use duckdb::{params, Connection};

use crate::corpus::PILE_SETS;
use crate::error::{Error, Result};

/// The schema migrations, in order. Never edit an applied one: add a new file and list it here.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("001_runs", include_str!("../migrations/001_runs.sql")),
    ("002_runner", include_str!("../migrations/002_runner.sql")),
    (
        "003_baselines",
        include_str!("../migrations/003_baselines.sql"),
    ),
];

/// A results database opened for writing (DuckDB allows one writing process per file).
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        let db = Self {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate()?;
        Ok(db)
    }

    /// Opens an existing database read-only (several readers may share it with no writer).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::bad_file(path, "no results database here"));
        }
        let config = duckdb::Config::default()
            .access_mode(duckdb::AccessMode::ReadOnly)
            .map_err(|e| Error::Records {
                path: path.to_path_buf(),
                source: e,
            })?;
        let conn = Connection::open_with_flags(path, config).map_err(|e| open_error(path, e))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: duckdb::Error) -> Error {
        Error::Records {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&self) -> Result<()> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     name VARCHAR PRIMARY KEY,
                     applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)",
            )
            .map_err(|e| self.err(e))?;
        let mut applied = false;
        for (name, sql) in MIGRATIONS {
            let done: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM schema_migrations WHERE name = ?",
                    params![name],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if done > 0 {
                continue;
            }
            applied = true;
            // One transaction per migration: a failed one leaves nothing half-applied.
            let script = format!("BEGIN TRANSACTION;\n{sql}\nINSERT INTO schema_migrations (name) VALUES ('{name}');\nCOMMIT;");
            if let Err(e) = self.conn.execute_batch(&script) {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(Error::Internal(format!(
                    "migration {name} failed on {}: {e}",
                    self.path.display()
                )));
            }
        }
        if applied {
            // DuckDB 1.5 cannot replay an ALTER TABLE of a table with function defaults (runs.id's
            // nextval) from the WAL after a crash: write the migrated schema to the file at once.
            self.conn
                .execute_batch("CHECKPOINT")
                .map_err(|e| self.err(e))?;
        }
        // The weights live in code (corpus::PILE_SETS) so one table feeds both the CLI and SQL.
        let have: i64 = self
            .conn
            .query_row("SELECT count(*) FROM pile_weights", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if have == 0 {
            let mut app = self
                .conn
                .appender("pile_weights")
                .map_err(|e| self.err(e))?;
            for (task, set, weight) in PILE_SETS {
                app.append_row(params![set, format!("pile_{task}"), weight])
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Inserts a run in state `running` and returns its id.
    pub fn create_run(&self, run: &NewRun) -> Result<i64> {
        self.conn
            .query_row(
                "INSERT INTO runs (name, method, selection, status, task, model, model_hash, encoder, store,
                     store_version, neighbors, lr, max_length, device, encoder_provider, config,
                     tttnn_version, git_commit, split, val_portion, seed, eval_at, optimizer_state,
                     distance_threshold, search, nprobes, refine_factor, limit_docs, shard_index,
                     shard_count, precision, alpha, alpha_docs, in_context_order, sift_candidates,
                     sift_lambda, sift_adaptive)
                 VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                         ?, ?, ?, ?, ?, ?)
                 RETURNING id",
                params![
                    run.name,
                    run.method,
                    run.selection,
                    run.task,
                    run.model,
                    run.model_hash,
                    run.encoder,
                    run.store,
                    run.store_version,
                    run.neighbors,
                    run.lr,
                    run.max_length,
                    run.device,
                    run.encoder_provider,
                    run.config,
                    crate::VERSION,
                    crate::GIT_COMMIT,
                    run.split,
                    run.val_portion,
                    run.seed,
                    run.eval_at,
                    run.optimizer_state,
                    run.distance_threshold,
                    run.search,
                    run.nprobes,
                    run.refine_factor,
                    run.limit_docs,
                    run.shard_index,
                    run.shard_count,
                    run.precision,
                    run.alpha,
                    run.alpha_docs,
                    run.in_context_order,
                    run.sift_candidates,
                    run.sift_lambda,
                    run.sift_adaptive,
                ],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Sets a run's status (`running`, `finished`, `failed`), with the error of a failed one.
    pub fn set_run_status(&self, run_id: i64, status: &str, error: Option<&str>) -> Result<()> {
        let finished = status != "running";
        self.conn
            .execute(
                "UPDATE runs SET status = ?, error = ?,
                     finished_at = CASE WHEN ? THEN current_timestamp ELSE NULL END
                 WHERE id = ?",
                params![status, error, finished, run_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The stored config JSON and status of a run, if it exists.
    pub fn run_config(&self, run_id: i64) -> Result<Option<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, CAST(config AS VARCHAR) FROM runs WHERE id = ?")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.next().transpose().map_err(|e| self.err(e))
    }

    /// Evaluation-order numbers (`seq`) of the documents a run has recorded.
    pub fn recorded_seqs(&self, run_id: i64) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq FROM docs WHERE run_id = ? ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Deletes a run's documents from evaluation-order number `seq` on (they are redone).
    pub fn delete_docs_from(&self, run_id: i64, seq: i64) -> Result<usize> {
        let sql = "BEGIN TRANSACTION;
             DELETE FROM curve WHERE run_id = $1 AND doc_id IN (SELECT doc_id FROM docs WHERE run_id = $1 AND seq >= $2);
             DELETE FROM neighbors WHERE run_id = $1 AND doc_id IN (SELECT doc_id FROM docs WHERE run_id = $1 AND seq >= $2);
             DELETE FROM docs WHERE run_id = $1 AND seq >= $2;
             COMMIT;";
        let before: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM docs WHERE run_id = ? AND seq >= ?",
                params![run_id, seq],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let sql = sql
            .replace("$1", &run_id.to_string())
            .replace("$2", &seq.to_string());
        self.conn.execute_batch(&sql).map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.err(e)
        })?;
        Ok(before as usize)
    }

    /// Records one document — its row, curve and neighbours — in one transaction, so a killed run
    /// never leaves half a document behind.
    pub fn record_doc(
        &self,
        run_id: i64,
        doc: &DocRecord,
        curve: &[(usize, f64)],
        neighbors: &[NeighborRecord],
    ) -> Result<()> {
        let result = (|| -> std::result::Result<(), duckdb::Error> {
            self.conn.execute_batch("BEGIN TRANSACTION")?;
            self.conn.execute(
                "INSERT INTO docs (run_id, doc_id, set_name, bytes, words, tokens, neighbors_used,
                     complete, retrieval_s, train_s, eval_s, task, position, seq, train_steps, skipped_chunks,
                     alpha, alpha_source, context_tokens, context_fallback)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    run_id,
                    doc.doc_id,
                    doc.set_name,
                    doc.bytes as i64,
                    doc.words as i64,
                    doc.tokens as i64,
                    doc.neighbors_used as i64,
                    doc.complete,
                    doc.retrieval_s,
                    doc.train_s,
                    doc.eval_s,
                    doc.task,
                    doc.position as i64,
                    doc.seq as i64,
                    doc.train_steps as i64,
                    doc.skipped_chunks as i64,
                    doc.alpha,
                    doc.alpha_source,
                    doc.context_tokens.map(|n| n as i64),
                    doc.context_fallback,
                ],
            )?;
            {
                let mut app = self.conn.appender("curve")?;
                for (k, loglik) in curve {
                    app.append_row(params![run_id, doc.doc_id, *k as i64, loglik])?;
                }
            }
            for n in neighbors {
                self.conn.execute(
                    "INSERT INTO neighbors (run_id, doc_id, rank, neighbor_id, distance, tokens, chunks,
                         train_loss, train_s, eval_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    params![
                        run_id,
                        doc.doc_id,
                        n.rank as i64,
                        n.neighbor_id,
                        n.distance,
                        n.tokens as i64,
                        n.chunks as i64,
                        n.train_loss.filter(|l| l.is_finite()),
                        n.train_s,
                        n.eval_s,
                    ],
                )?;
            }
            self.conn.execute_batch("COMMIT")
        })();
        result.map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.err(e)
        })
    }

    /// Copies every run of the databases `inputs` into this one as one run: they must be shards
    /// (`--shard I/N`, all N present once) of the same settings. Returns the new run's id.
    pub fn merge_shards(&self, inputs: &[PathBuf]) -> Result<i64> {
        let mut shards: Vec<(PathBuf, i64, i64, i64, String, String)> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            if !input.is_file() {
                return Err(Error::bad_file(input, "no results database here"));
            }
            let alias = format!("shard{i}");
            let path = input.display().to_string().replace('\'', "''");
            self.conn
                .execute_batch(&format!("ATTACH '{path}' AS {alias} (READ_ONLY)"))
                .map_err(|e| open_error(input, e))?;
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT id, coalesce(shard_index, 0), coalesce(shard_count, 1), status,
                         CAST(config AS VARCHAR) FROM {alias}.runs"
                ))
                .map_err(|e| self.err(e))?;
            let rows: Vec<(i64, i64, i64, String, String)> = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(|e| self.err(e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?;
            if rows.len() != 1 {
                return Err(Error::bad_file(
                    input,
                    format!(
                        "holds {} runs; merge takes databases of one shard run each",
                        rows.len()
                    ),
                ));
            }
            let (id, index, count, status, config) = rows.into_iter().next().unwrap_or_default();
            // Shards differ only in their `shard` setting.
            let mut config: serde_json::Value = serde_json::from_str(&config)
                .map_err(|e| Error::bad_file(input, format!("run config is not JSON: {e}")))?;
            if let Some(o) = config.as_object_mut() {
                o.remove("shard");
            }
            shards.push((input.clone(), id, index, count, status, config.to_string()));
        }
        let (first_path, _, _, count, _, config) =
            shards.first().cloned().ok_or_else(|| Error::BadSetting {
                field: "inputs".into(),
                message: "no databases to merge".into(),
            })?;
        let mut seen = vec![false; count as usize];
        for (path, _, index, n, status, cfg) in &shards {
            if *n != count || cfg != &config {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "is not a shard of the same run as {} (settings differ)",
                        first_path.display()
                    ),
                ));
            }
            if status != "finished" {
                return Err(Error::bad_file(
                    path,
                    format!("shard {index}/{n} is {status}, not finished: resume it first"),
                ));
            }
            if std::mem::replace(&mut seen[*index as usize], true) {
                return Err(Error::bad_file(
                    path,
                    format!("shard {index}/{n} given twice"),
                ));
            }
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(Error::BadSetting {
                field: "inputs".into(),
                message: format!("shard {missing}/{count} is missing"),
            });
        }
        let columns = "name, method, selection, status, started_at, finished_at, task, model, model_hash, encoder,
            store, store_version, neighbors, lr, max_length, device, encoder_provider, config, tttnn_version,
            git_commit, split, val_portion, seed, eval_at, optimizer_state, distance_threshold, search,
            nprobes, refine_factor, limit_docs, precision, alpha, alpha_docs, in_context_order,
            sift_candidates, sift_lambda, sift_adaptive";
        let mut sql = String::from("BEGIN TRANSACTION;\n");
        sql += &format!(
            "CREATE TEMP TABLE merged AS SELECT nextval('run_ids') AS id;
             INSERT INTO runs (id, {columns}, shard_index, shard_count)
             SELECT (SELECT id FROM merged), {columns}, NULL, {count} FROM shard0.runs;
             UPDATE runs SET started_at = (SELECT min(started_at) FROM ({starts})),
                             finished_at = (SELECT max(finished_at) FROM ({ends}))
             WHERE id = (SELECT id FROM merged);\n",
            starts = (0..shards.len())
                .map(|i| format!("SELECT started_at FROM shard{i}.runs"))
                .collect::<Vec<_>>()
                .join(" UNION ALL "),
            ends = (0..shards.len())
                .map(|i| format!("SELECT finished_at FROM shard{i}.runs"))
                .collect::<Vec<_>>()
                .join(" UNION ALL "),
        );
        for i in 0..shards.len() {
            for table in ["docs", "curve", "neighbors"] {
                sql += &format!(
                    "INSERT INTO {table} BY NAME SELECT * REPLACE ((SELECT id FROM merged) AS run_id) FROM shard{i}.{table};\n"
                );
            }
        }
        sql += "COMMIT;";
        let result = self.conn.execute_batch(&sql).map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.err(e)
        });
        let id = result.and_then(|_| {
            self.conn
                .query_row("SELECT id FROM merged", [], |r| r.get(0))
                .map_err(|e| self.err(e))
        });
        let _ = self.conn.execute_batch("DROP TABLE IF EXISTS merged");
        for i in 0..shards.len() {
            let _ = self.conn.execute_batch(&format!("DETACH shard{i}"));
        }
        id
    }

    /// Names of the applied migrations, in order.
    pub fn applied_migrations(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM schema_migrations ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Sets the SQL variable `runs` the bundled queries filter on: these run ids, or NULL for all.
    pub fn select_runs(&self, runs: &[i64]) -> Result<()> {
        let list = if runs.is_empty() {
            "NULL::BIGINT[]".to_string()
        } else {
            format!("{runs:?}::BIGINT[]")
        };
        self.conn
            .execute_batch(&format!("SET VARIABLE runs = {list}"))
            .map_err(|e| self.err(e))
    }

    /// The underlying connection, for queries.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A run's identity and settings, one column each (the full config also goes in as JSON).
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    pub name: Option<String>,
    pub method: String,
    pub selection: String,
    pub task: String,
    pub model: String,
    pub model_hash: String,
    pub encoder: Option<String>,
    pub store: String,
    pub store_version: i64,
    pub neighbors: i64,
    pub lr: f64,
    pub max_length: i64,
    pub device: String,
    pub encoder_provider: Option<String>,
    pub config: String,
    pub split: String,
    pub val_portion: f64,
    pub seed: i64,
    pub eval_at: String,
    pub optimizer_state: String,
    pub distance_threshold: Option<f64>,
    pub search: String,
    pub nprobes: Option<i64>,
    pub refine_factor: Option<i64>,
    pub limit_docs: Option<i64>,
    pub shard_index: i64,
    pub shard_count: i64,
    pub precision: String,
    pub alpha: Option<f64>,
    pub alpha_docs: Option<i64>,
    pub in_context_order: Option<String>,
    pub sift_candidates: Option<i64>,
    pub sift_lambda: Option<f64>,
    pub sift_adaptive: Option<f64>,
}

/// One evaluated document.
#[derive(Debug, Clone, Default)]
pub struct DocRecord {
    pub doc_id: String,
    pub task: String,
    pub set_name: String,
    pub position: usize,
    pub seq: usize,
    pub bytes: u64,
    pub words: u64,
    pub tokens: usize,
    pub neighbors_used: usize,
    pub complete: bool,
    pub retrieval_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub train_steps: usize,
    pub skipped_chunks: usize,
    pub alpha: Option<f64>,
    pub alpha_source: Option<String>,
    pub context_tokens: Option<usize>,
    pub context_fallback: Option<bool>,
}

/// One neighbour a document was trained on.
#[derive(Debug, Clone, Default)]
pub struct NeighborRecord {
    pub rank: usize,
    pub neighbor_id: String,
    pub distance: f64,
    pub tokens: usize,
    pub chunks: usize,
    pub train_loss: Option<f64>,
    pub train_s: f64,
    pub eval_s: Option<f64>,
}

fn open_error(path: &Path, e: duckdb::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("lock") {
        // DuckDB allows one writing process per file (pitfalls §6).
        return Error::bad_file(
            path,
            format!("database is in use by another process: {msg}"),
        );
    }
    Error::Records {
        path: path.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.trim_end_matches(".sql").to_string())
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(files, listed);
    }
}
