//! SQL against a results database: the bundled `queries/` (table1, bpb_vs_k, cost,
//! compare_runs), any user SQL, and typed readers for what tttnn itself draws or prints.
use std::path::Path;
use std::str::FromStr;

use arrow_array::RecordBatch;

use super::Db;
use crate::error::{Error, Result};

/// A bundled query, compiled into the binary so it works from any directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The paper's Table 1: bits per byte per task and method, each column from one run.
    Table1,
    /// Which run feeds each column of table1, and the curve point read.
    Table1Runs,
    /// Bits per byte against the number of neighbours.
    BpbVsK,
    /// Seconds per neighbour, per step and per document.
    Cost,
    /// Runs side by side, task by task.
    CompareRuns,
    /// Test documents with a near copy among their neighbours (13-gram Jaccard ≥ 0.8).
    Leakage,
    /// What neighbours were worth (`neighbor_gain`), by rank, distance and Jaccard band.
    Utility,
    /// Retrieval quality against an exact reference beside the change in bits per byte.
    RetrievalQuality,
}

impl Query {
    /// Every bundled query.
    pub const ALL: [Query; 8] = [
        Query::Table1,
        Query::Table1Runs,
        Query::BpbVsK,
        Query::Cost,
        Query::CompareRuns,
        Query::Leakage,
        Query::Utility,
        Query::RetrievalQuality,
    ];

    /// Its name, as `tttnn sql NAME` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Query::Table1 => "table1",
            Query::Table1Runs => "table1_runs",
            Query::BpbVsK => "bpb_vs_k",
            Query::Cost => "cost",
            Query::CompareRuns => "compare_runs",
            Query::Leakage => "leakage",
            Query::Utility => "utility",
            Query::RetrievalQuality => "retrieval_quality",
        }
    }

    /// Its SQL (`queries/NAME.sql`; table1 runs table1_runs first, whose view it reads).
    pub fn sql(self) -> &'static str {
        match self {
            Query::Table1 => concat!(
                include_str!("../../queries/table1_runs.sql"),
                include_str!("../../queries/table1.sql")
            ),
            Query::Table1Runs => include_str!("../../queries/table1_runs.sql"),
            Query::BpbVsK => include_str!("../../queries/bpb_vs_k.sql"),
            Query::Cost => include_str!("../../queries/cost.sql"),
            Query::CompareRuns => include_str!("../../queries/compare_runs.sql"),
            Query::Leakage => include_str!("../../queries/leakage.sql"),
            Query::Utility => include_str!("../../queries/utility.sql"),
            Query::RetrievalQuality => include_str!("../../queries/retrieval_quality.sql"),
        }
    }
}

impl FromStr for Query {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Query::ALL
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| format!("`{s}` is not a bundled query"))
    }
}

/// One point of a run's bits-per-byte curve for one task (a row of `bpb_vs_k`).
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    /// Run id.
    pub run_id: i64,
    /// Task (`pile_all` is the weighted mean).
    pub task: String,
    /// Neighbours trained on.
    pub k: i64,
    /// Documents averaged.
    pub docs: i64,
    /// Bits per byte (rounded to 4 digits by the query).
    pub bits_per_byte: f64,
}

/// A query's result: its columns and its rows.
#[derive(Debug, Clone)]
pub struct Rows {
    /// The columns, even when there are no rows.
    pub schema: arrow_schema::SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

impl Rows {
    /// How many rows.
    pub fn len(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Db {
    /// Sets the SQL variable `exclude_near_copies` table1 reads: leave out documents with a
    /// neighbour of 13-gram Jaccard ≥ 0.8.
    pub fn set_exclude_near_copies(&self, exclude: bool) -> Result<()> {
        self.conn
            .execute_batch(&format!("SET VARIABLE exclude_near_copies = {exclude}"))
            .map_err(|e| self.err(e))
    }

    /// Sets the SQL variable `pass` table1 and bpb_vs_k read: a run with several passes read at
    /// the end of this pass (table1) or only this pass's points (bpb_vs_k); NULL: its last point
    /// (table1), every point (bpb_vs_k).
    pub fn set_pass(&self, pass: Option<u32>) -> Result<()> {
        let value = pass.map_or("NULL::INTEGER".to_string(), |p| p.to_string());
        self.conn
            .execute_batch(&format!("SET VARIABLE pass = {value}"))
            .map_err(|e| self.err(e))
    }

    /// Sets the SQL variable `runs` the bundled queries filter on: these run ids, or NULL for all.
    pub(super) fn select_runs(&self, runs: &[i64]) -> Result<()> {
        let list = if runs.is_empty() {
            "NULL::BIGINT[]".to_string()
        } else {
            format!("{runs:?}::BIGINT[]")
        };
        self.conn
            .execute_batch(&format!("SET VARIABLE runs = {list}"))
            .map_err(|e| self.err(e))
    }

    /// Runs every statement of `sql` but the last with `runs` bound, and returns the last.
    fn prepare_script(&self, sql: &str, runs: &[i64]) -> Result<String> {
        self.select_runs(runs)?;
        let mut stmts = statements(sql);
        let last = stmts
            .pop()
            .ok_or_else(|| Error::setting("query", "no SQL statement"))?;
        for s in &stmts {
            self.conn
                .execute_batch(s)
                .map_err(|e| self.query_error(e))?;
        }
        Ok(last)
    }

    fn query_error(&self, e: duckdb::Error) -> Error {
        Error::bad_file(&self.path, format!("query failed: {e}"))
    }

    /// The rows of `sql` (its last statement) with the variable `runs` bound.
    pub fn query(&self, sql: &str, runs: &[i64]) -> Result<Rows> {
        let last = self.prepare_script(sql, runs)?;
        let mut stmt = self.conn.prepare(&last).map_err(|e| self.query_error(e))?;
        let arrow = stmt.query_arrow([]).map_err(|e| self.query_error(e))?;
        // The schema too: a query with no rows still has its header.
        let schema = arrow.get_schema();
        Ok(Rows {
            schema,
            batches: arrow.collect(),
        })
    }

    /// Writes the rows of `sql` (its last statement) to the file `target` as Parquet, with
    /// DuckDB's `COPY` (text formats are written by the caller from [`Db::query`]).
    pub fn export_parquet(&self, sql: &str, runs: &[i64], target: &Path) -> Result<()> {
        let last = self.prepare_script(sql, runs)?;
        let target = target.display().to_string().replace('\'', "''");
        self.conn
            .execute_batch(&format!("COPY ({last}) TO '{target}' (FORMAT parquet)"))
            .map_err(|e| self.query_error(e))
    }

    /// The `bpb_vs_k` curves of `runs` (all runs if empty), read by column name.
    pub fn bpb_vs_k(&self, runs: &[i64]) -> Result<Vec<CurvePoint>> {
        self.select_runs(runs)?;
        let mut stmt = self
            .conn
            .prepare(Query::BpbVsK.sql())
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(CurvePoint {
                    run_id: r.get("run_id")?,
                    task: r.get("task")?,
                    k: r.get("k")?,
                    docs: r.get("docs")?,
                    bits_per_byte: r.get("bits_per_byte")?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }
}

/// Splits a script into statements at semicolons outside quotes and `--` comments.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quote, mut comment) = (None::<char>, false);
    for c in sql.chars() {
        if comment {
            if c == '\n' {
                comment = false;
                cur.push(c);
            }
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '-' && cur.ends_with('-') => {
                cur.pop();
                comment = true;
                continue;
            }
            None if c == ';' => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
                continue;
            }
            None => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let s = statements("-- a; comment\nSELECT 'x;y'; SELECT 2 -- trailing; here\n;");
        assert_eq!(s, vec!["SELECT 'x;y'", "SELECT 2"]);
    }

    #[test]
    fn every_bundled_query_runs_on_an_empty_database_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.duckdb")).unwrap();
        for q in Query::ALL {
            assert_eq!(q.name().parse::<Query>().unwrap(), q);
            db.query(q.sql(), &[])
                .unwrap_or_else(|e| panic!("{}: {e}", q.name()));
        }
        assert!(db.bpb_vs_k(&[1]).unwrap().is_empty());
        assert!("nope".parse::<Query>().is_err());
        // Readers open the file read-only: table1's temp view must work there too.
        drop(db);
        let ro = Db::open_read_only(&dir.path().join("r.duckdb")).unwrap();
        ro.set_exclude_near_copies(true).unwrap();
        for q in Query::ALL {
            let rows = ro
                .query(q.sql(), &[3])
                .unwrap_or_else(|e| panic!("{}: {e}", q.name()));
            assert!(rows.is_empty() && !rows.schema.fields().is_empty());
        }
    }
}
