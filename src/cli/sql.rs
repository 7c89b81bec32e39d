//! `tttnn sql`: any SQL, a `.sql` file or one of the bundled `queries/` against a results
//! database, printed as a table or written as CSV, JSON or Parquet.
use std::path::{Path, PathBuf};

use tttnn::records::{Db, Export, Query};
use tttnn::{Error, Result};

use super::ui::Printer;

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
    #[arg(long, env = "TTTNN_DB", default_value = super::DEFAULT_DB)]
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
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let sql = if let Ok(q) = args.query.parse::<Query>() {
        q.sql().to_string()
    } else if args.query.trim_end().ends_with(".sql") {
        let path = Path::new(args.query.trim());
        std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
    } else {
        args.query.clone()
    };
    let db = Db::open_read_only(&args.db)?;
    print_query(p, &db, &sql, &args.runs, args.format, args.out.as_deref())
}

/// Runs `sql` (the last statement's rows are the output) with `runs` bound, and prints or writes it.
pub fn print_query(
    p: &Printer,
    db: &Db,
    sql: &str,
    runs: &[i64],
    format: Format,
    out: Option<&Path>,
) -> Result<()> {
    let stdout = Path::new("/dev/stdout");
    let export = |kind| db.export(sql, runs, out.unwrap_or(stdout), kind);
    match format {
        Format::Table => {
            let batches = db.query(sql, runs)?;
            let table = duckdb::arrow::util::pretty::pretty_format_batches(&batches)
                .map_err(|e| Error::internal(format!("formatting the result: {e}")))?
                .to_string();
            match out {
                Some(path) => std::fs::write(path, table + "\n").map_err(|e| Error::io(path, e)),
                None => p.out(table),
            }
        }
        Format::Csv => export(Export::Csv),
        Format::Json => export(Export::Json),
        Format::Parquet => match out {
            Some(_) => export(Export::Parquet),
            None => Err(Error::setting(
                "out",
                "--format parquet writes a file: give --out FILE.parquet",
            )),
        },
    }
}
