//! `tttnn sql`: any SQL, a `.sql` file or one of the bundled `queries/` against a results
//! database, printed as a table or written as CSV, JSON or Parquet.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::records::Db;

/// The queries in `queries/`, bundled so they work from any directory.
pub const QUERIES: &[(&str, &str)] = &[
    ("table1", include_str!("../../queries/table1.sql")),
    ("bpb_vs_k", include_str!("../../queries/bpb_vs_k.sql")),
    ("cost", include_str!("../../queries/cost.sql")),
    (
        "compare_runs",
        include_str!("../../queries/compare_runs.sql"),
    ),
];

/// The bundled query called `name` (`table1`, `bpb_vs_k`, `cost`, `compare_runs`).
pub fn builtin(name: &str) -> Option<&'static str> {
    QUERIES.iter().find(|(n, _)| *n == name).map(|(_, q)| *q)
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header.
    Csv,
    /// A JSON array of objects.
    Json,
    /// Parquet (needs --out).
    Parquet,
}

/// Run SQL against a results database.
///
/// QUERY is SQL text, a .sql file, or a bundled query: table1, bpb_vs_k, cost, compare_runs.
/// Bundled queries read the variable `runs` that --run sets (all runs when unset).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// SQL, a .sql file, or the name of a bundled query.
    pub query: String,
    /// Results database.
    #[arg(long, env = "TTTNN_DB", default_value = "results.duckdb")]
    pub db: PathBuf,
    /// Only these runs (sets the SQL variable `runs`, a list the bundled queries filter on).
    #[arg(long = "run", value_name = "RUN_ID")]
    pub runs: Vec<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    let sql = if let Some(q) = builtin(&args.query) {
        q.to_string()
    } else if args.query.trim_end().ends_with(".sql") {
        let p = Path::new(args.query.trim());
        std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?
    } else {
        args.query.clone()
    };
    let db = Db::open_read_only(&args.db)?;
    print_query(&db, &sql, &args.runs, args.format, args.out.as_deref())
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

/// Runs `sql` (the last statement's rows are the output) with `runs` bound, and prints or writes it.
pub fn print_query(
    db: &Db,
    sql: &str,
    runs: &[i64],
    format: Format,
    out: Option<&Path>,
) -> Result<()> {
    let conn = db.connection();
    let err = |e: duckdb::Error| Error::BadInput {
        path: db.path().to_path_buf(),
        line: None,
        message: format!("query failed: {e}"),
    };
    db.select_runs(runs)?;
    let mut stmts = statements(sql);
    let last = stmts.pop().ok_or_else(|| Error::BadSetting {
        field: "query".into(),
        message: "no SQL statement".into(),
    })?;
    for s in &stmts {
        conn.execute_batch(s).map_err(err)?;
    }
    let copy_to = |target: &str, options: &str| -> Result<()> {
        conn.execute_batch(&format!(
            "COPY ({last}) TO '{}' ({options})",
            target.replace('\'', "''")
        ))
        .map_err(err)
    };
    let target = out.map(|p| p.display().to_string());
    match format {
        Format::Table => {
            let mut stmt = conn.prepare(&last).map_err(err)?;
            let batches: Vec<_> = stmt.query_arrow([]).map_err(err)?.collect();
            let table = duckdb::arrow::util::pretty::pretty_format_batches(&batches)
                .map_err(|e| Error::Internal(format!("formatting the result: {e}")))?
                .to_string();
            match out {
                Some(p) => std::fs::write(p, table + "\n").map_err(|e| Error::io(p, e))?,
                None => println!("{table}"),
            }
        }
        Format::Csv => copy_to(
            target.as_deref().unwrap_or("/dev/stdout"),
            "FORMAT csv, HEADER",
        )?,
        Format::Json => copy_to(
            target.as_deref().unwrap_or("/dev/stdout"),
            "FORMAT json, ARRAY true",
        )?,
        Format::Parquet => match target {
            Some(t) => copy_to(&t, "FORMAT parquet")?,
            None => {
                return Err(Error::BadSetting {
                    field: "out".into(),
                    message: "--format parquet writes a file: give --out FILE.parquet".into(),
                })
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let s = statements("-- a; comment\nSELECT 'x;y'; SELECT 2 -- trailing; here\n;");
        assert_eq!(s, vec!["SELECT 'x;y'", "SELECT 2"]);
    }
}
