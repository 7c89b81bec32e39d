//! Run records in DuckDB: the schema lives in `migrations/NNN_name.sql`, applied in order when a
//! database is opened and tracked in `schema_migrations`, so an experiment is a record you query.
//!
//! One `Db` type, split by concern as lance splits `Dataset`: this file opens and migrates;
//! `run.rs` holds a run's lifecycle and recording; `merge.rs` joins shard databases;
//! `queries.rs` runs the bundled and user SQL.
mod compare;
mod merge;
mod queries;
mod run;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use duckdb::{params, Connection};

pub use compare::{Comparison, ComparisonRow, NeighborGain, NeighborGains};
pub use queries::{CurvePoint, Query, Rows};
pub use run::{CurveRecord, DocRecord, NeighborRecord, NewRun, RunRow, RunStatus};

use crate::corpus::PILE_SETS;
use crate::error::{Error, Result};

/// The schema migrations, in order. Never edit an applied one: add a new file and list it here.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("001_runs", include_str!("../../migrations/001_runs.sql")),
    (
        "002_runner",
        include_str!("../../migrations/002_runner.sql"),
    ),
    (
        "003_baselines",
        include_str!("../../migrations/003_baselines.sql"),
    ),
    (
        "004_settings_in_config",
        include_str!("../../migrations/004_settings_in_config.sql"),
    ),
    (
        "005_results_as_the_paper",
        include_str!("../../migrations/005_results_as_the_paper.sql"),
    ),
    (
        "006_lanes_and_adapters",
        include_str!("../../migrations/006_lanes_and_adapters.sql"),
    ),
    (
        "007_training_tokens",
        include_str!("../../migrations/007_training_tokens.sql"),
    ),
    (
        "008_schedules",
        include_str!("../../migrations/008_schedules.sql"),
    ),
    (
        "009_comparisons",
        include_str!("../../migrations/009_comparisons.sql"),
    ),
    (
        "010_retrieval_quality",
        include_str!("../../migrations/010_retrieval_quality.sql"),
    ),
];

/// A results database. DuckDB lets one process write a file, or several read it, at a time
/// (docs/pitfalls.md §6), so a `Db` is held only as long as one piece of work: a run opens it to
/// record each document and closes it, and readers (`tttnn sql`, `report`, another run) wait for
/// a write in progress rather than fail.
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// Seconds an open waits for another process's hold on the file unless `TTTNN_DB_WAIT` says.
pub const DEFAULT_DB_WAIT_S: f64 = 60.0;

impl Db {
    /// Opens (creating if needed) the database at `path` for writing and applies pending
    /// migrations, waiting for another process's hold on the file (see [`DEFAULT_DB_WAIT_S`]).
    pub fn open(path: &Path) -> Result<Self> {
        check_is_database(path)?;
        let conn = open_waiting(path, || Connection::open(path))?;
        let db = Self {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate()?;
        Ok(db)
    }

    /// Opens an existing database read-only, waiting out a writer's hold on it (several readers
    /// may share it).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        check_is_database(path)?;
        if !path.is_file() {
            return Err(Error::bad_file(path, "no results database here"));
        }
        let conn = open_waiting(path, || {
            let config = duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly)?;
            Connection::open_with_flags(path, config)
        })?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: duckdb::Error) -> Error {
        Error::records(&self.path, source)
    }

    /// Runs `f` in one transaction: committed if it succeeds, rolled back if it fails, so a killed
    /// or failed write never leaves half of itself behind.
    fn in_transaction<T>(&self, f: impl FnOnce(&Connection) -> duckdb::Result<T>) -> Result<T> {
        self.conn
            .execute_batch("BEGIN TRANSACTION")
            .map_err(|e| self.err(e))?;
        match f(&self.conn).and_then(|v| self.conn.execute_batch("COMMIT").map(|_| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(self.err(e))
            }
        }
    }

    fn migrate(&self) -> Result<()> {
        // The common case, a database at today's schema, reads one count and writes nothing: a
        // run opens the file once per document.
        let current: Option<i64> = self
            .conn
            .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
            .ok();
        if current == Some(MIGRATIONS.len() as i64) {
            return Ok(());
        }
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
            self.in_transaction(|c| {
                c.execute_batch(sql)?;
                c.execute(
                    "INSERT INTO schema_migrations (name) VALUES (?)",
                    params![name],
                )
            })
            .map_err(|e| {
                Error::internal(format!(
                    "migration {name} failed on {}: {e}",
                    self.path.display()
                ))
            })?;
        }
        if applied {
            // DuckDB 1.5 cannot replay an ALTER TABLE of a table with function defaults (runs.id's
            // nextval) from the WAL after a crash: write the migrated schema to the file at once.
            self.conn
                .execute_batch("CHECKPOINT")
                .map_err(|e| self.err(e))?;
            self.refresh_settings_view(None)?;
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

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file that belongs with a run of this database (`<db>.<kind>/run-<id>.safetensors`), such
    /// as the AdamW state a resumed run continues from.
    pub fn artifact_path(&self, run_id: i64, kind: &str) -> PathBuf {
        Self::artifact_path_of(&self.path, run_id, kind)
    }

    /// [`Db::artifact_path`] of the database at `db`, without opening it.
    pub fn artifact_path_of(db: &Path, run_id: i64, kind: &str) -> PathBuf {
        let mut dir = db.as_os_str().to_owned();
        dir.push(format!(".{kind}"));
        PathBuf::from(dir).join(format!("run-{run_id}.safetensors"))
    }
}

/// Whether DuckDB refused a file because another process holds it ("Could not set lock on file
/// ... Conflicting lock is held"; docs/pitfalls.md §6).
pub(crate) fn is_lock_error(e: &duckdb::Error) -> bool {
    e.to_string().contains("lock")
}

/// How long to wait for another process's hold on a results database: `TTTNN_DB_WAIT` seconds.
fn db_wait() -> Result<Duration> {
    let Ok(v) = std::env::var("TTTNN_DB_WAIT") else {
        return Ok(Duration::from_secs_f64(DEFAULT_DB_WAIT_S));
    };
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0 && s.is_finite())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| Error::setting("TTTNN_DB_WAIT", format!("`{v}` is not a number of seconds")))
}

/// A file at `path` that is not a DuckDB database is bad input, said before DuckDB reads it
/// (DuckDB's own words for some files are about in-memory databases). Its main header holds the
/// magic `DUCK` after an 8-byte checksum.
fn check_is_database(path: &Path) -> Result<()> {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(());
    };
    match f.metadata() {
        Ok(m) if m.is_dir() => {
            return Err(Error::bad_file(
                path,
                "a directory, not a DuckDB results database: give --db a file path",
            ))
        }
        // An empty file: DuckDB makes it a new database.
        Ok(m) if m.len() == 0 => return Ok(()),
        _ => {}
    }
    let mut head = [0u8; 12];
    match f.read_exact(&mut head) {
        Ok(()) if &head[8..] == b"DUCK" => Ok(()),
        _ => Err(Error::not_a_database(path)),
    }
}

/// Opens with `open`, retrying while another process holds the file's lock (a run recording a
/// document, a reader), for at most [`db_wait`].
fn open_waiting(path: &Path, open: impl Fn() -> duckdb::Result<Connection>) -> Result<Connection> {
    let wait = db_wait()?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match open() {
            Ok(c) => return Ok(c),
            Err(e) if is_lock_error(&e) => {
                if start.elapsed() >= wait {
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "database is in use by another process (waited {} s; TTTNN_DB_WAIT sets how long): {e}",
                            wait.as_secs_f64()
                        ),
                    ));
                }
                std::thread::sleep(pause.min(wait.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(Error::records(path, e)),
        }
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

    #[test]
    fn a_database_of_an_older_tttnn_migrates_with_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.duckdb");
        {
            // The schema as tttnn left it before migration 004, with a recorded run.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_migrations (name VARCHAR PRIMARY KEY,
                     applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)",
            )
            .unwrap();
            for (name, sql) in &MIGRATIONS[..3] {
                c.execute_batch(sql).unwrap();
                c.execute("INSERT INTO schema_migrations (name) VALUES (?)", [name])
                    .unwrap();
            }
            c.execute_batch(
                "INSERT INTO runs (method, status, config, tttnn_version, lr, in_context_order)
                 VALUES ('in-context', 'finished', '{\"lr\": 0.25, \"in_context_order\": \"original\"}',
                         '0.1.0', 0.25, 'original')",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.applied_migrations().unwrap().len(), MIGRATIONS.len());
        let (method, lr, order): (String, f64, String) = db
            .conn
            .query_row(
                "SELECT r.method, s.lr, s.in_context_order FROM runs r
                 JOIN run_settings s ON s.run_id = r.id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (method.as_str(), lr, order.as_str()),
            ("in-context", 0.25, "original")
        );
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.duckdb")).unwrap();
        let r = db.in_transaction(|c| {
            c.execute_batch("INSERT INTO pile_weights VALUES ('X', 'pile_x', 1.0)")?;
            c.execute_batch("INSERT INTO nowhere VALUES (1)")
        });
        assert!(r.is_err());
        let n: i64 = db
            .conn
            .query_row(
                "SELECT count(*) FROM pile_weights WHERE set_name = 'X'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(
            db.artifact_path(3, "optimizer"),
            dir.path().join("r.duckdb.optimizer/run-3.safetensors")
        );
    }
}
