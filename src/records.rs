//! Run records in DuckDB: the schema lives in `migrations/NNN_name.sql`, applied in order when a
//! database is opened and tracked in `schema_migrations`, so an experiment is a record you query.
use std::path::{Path, PathBuf};

use duckdb::{params, Connection};

use crate::error::{Error, Result};

/// The schema migrations, in order. Never edit an applied one: add a new file and list it here.
pub const MIGRATIONS: &[(&str, &str)] = &[("001_runs", include_str!("../migrations/001_runs.sql"))];

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

    /// The underlying connection, for queries.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
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
