//! `tttnn sql`: any SQL, a `.sql` file or one of the bundled `queries/` against a results
//! database, printed as a table or written as CSV, JSON or Parquet; `--watch` re-runs it.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use tttnn::records::{Db, Query, Rows};
use tttnn::{Error, Result};

use super::compare::ResamplingArgs;
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
/// QUERY is SQL text, a .sql file, or a bundled query: table1, table1_runs, bpb_vs_k, cost,
/// compare_runs, leakage, utility, retrieval_quality. Bundled queries read the variable `runs`
/// that --run sets (all runs when unset).
/// Output goes to stdout (so `>>` appends) unless --out names a file; Parquet needs --out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// SQL, a .sql file, or the name of a bundled query.
    pub query: String,
    /// Results database.
    #[arg(long, env = "TTTNN_DB", default_value = super::DEFAULT_DB)]
    pub db: PathBuf,
    /// Only these runs (sets the SQL variable `runs`, a list the bundled queries filter on);
    /// table1 takes each column from the given run of that method.
    #[arg(long = "run", value_name = "RUN_ID")]
    pub runs: Vec<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write to this file (replacing it) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Re-run the query every SECONDS until interrupted (Ctrl-C), e.g. during a run.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<f64>,
    /// table1: leave out test documents with a near copy among their neighbours (13-gram
    /// Jaccard ≥ 0.8; `tttnn sql leakage` lists them).
    #[arg(long)]
    pub exclude_near_copies: bool,
    /// Runs with several passes (`run --passes`): table1 reads the end of pass N instead of the
    /// last point, bpb_vs_k shows only pass N's points (sets the SQL variable `pass`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub pass: Option<u32>,
    /// table1: each column's 95% bootstrap interval beside it (COL_ci_low, COL_ci_high): the
    /// column's documents resampled within each task (--resamples, --seed).
    #[arg(long)]
    pub ci: bool,
    #[command(flatten)]
    pub resampling: ResamplingArgs,
}

/// Runs the subcommand.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let bundled = args.query.parse::<Query>().ok();
    let sql = if let Some(q) = bundled {
        q.sql().to_string()
    } else if args.query.trim_end().ends_with(".sql") {
        let path = Path::new(args.query.trim());
        std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
    } else {
        args.query.clone()
    };
    if args.ci && bundled != Some(Query::Table1) {
        return Err(Error::setting(
            "ci",
            "--ci gives table1's intervals: `tttnn sql table1 --ci` (tttnn compare gives paired \
             intervals of any runs)",
        ));
    }
    let once = || -> Result<()> {
        // Opened per query, and read-only: a running `tttnn run` holds the file only while it
        // records a document, and the open waits that out.
        let db = Db::open_read_only(&args.db)?;
        db.set_exclude_near_copies(args.exclude_near_copies)?;
        db.set_pass(args.pass)?;
        if args.ci {
            let r = args.resampling.resampling();
            p.say(format!(
                "table1 intervals: 95% percentile bootstrap over each column's documents within \
                 each task ({} resamples, seed {})",
                r.resamples, r.seed
            ));
            let rows = db.table1_with_intervals(&args.runs, &r)?;
            print_rows(&rows, args.format, args.out.as_deref())?;
        } else {
            print_query(&db, &sql, &args.runs, args.format, args.out.as_deref())?;
        }
        if bundled == Some(Query::Table1) {
            let runs = db.query(Query::Table1Runs.sql(), &args.runs)?;
            if runs.is_empty() && args.runs.is_empty() {
                // Columns come from finished runs unless chosen: say how to see a running one.
                p.warn(
                    "table1: no finished run with recorded documents; --run ID shows a running run",
                );
            } else if args.format == Format::Table && args.out.is_none() {
                print_table1_runs(&runs)?;
            }
        }
        Ok(())
    };
    let Some(seconds) = args.watch else {
        return once();
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(Error::setting(
            "watch",
            format!("{seconds} is not a number of seconds"),
        ));
    }
    loop {
        p.say(format!(
            "-- {} (every {seconds}s; Ctrl-C stops)",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ));
        once()?;
        std::thread::sleep(Duration::from_secs_f64(seconds));
    }
}

/// Runs `sql` (the last statement's rows are the output) with `runs` bound, and prints it to
/// stdout or writes it to `out`.
pub fn print_query(
    db: &Db,
    sql: &str,
    runs: &[i64],
    format: Format,
    out: Option<&Path>,
) -> Result<()> {
    if format == Format::Parquet {
        let Some(out) = out else {
            return Err(Error::setting(
                "out",
                "--format parquet writes a file: give --out FILE.parquet",
            ));
        };
        return db.export_parquet(sql, runs, out);
    }
    print_rows(&db.query(sql, runs)?, format, out)
}

/// Prints `rows` (a query's result, or one tttnn computed) to stdout in `format`, or writes them
/// to `out`; Parquet needs `out`.
pub fn print_rows(rows: &Rows, format: Format, out: Option<&Path>) -> Result<()> {
    if format == Format::Parquet {
        let Some(out) = out else {
            return Err(Error::setting(
                "out",
                "--format parquet writes a file: give --out FILE.parquet",
            ));
        };
        let file = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, rows.schema.clone(), None)
            .map_err(|e| Error::bad_file(out, format!("cannot write Parquet: {e}")))?;
        for b in &rows.batches {
            writer
                .write(b)
                .map_err(|e| Error::bad_file(out, format!("cannot write Parquet: {e}")))?;
        }
        writer
            .close()
            .map_err(|e| Error::bad_file(out, format!("cannot write Parquet: {e}")))?;
        return Ok(());
    }
    let (mut w, name): (Box<dyn Write>, &Path) = match out {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
            (Box::new(std::io::BufWriter::new(file)), path)
        }
        None => (Box::new(std::io::stdout().lock()), Path::new("<stdout>")),
    };
    write_rows(rows, format, &mut w)
        .and_then(|()| w.flush())
        .map_err(|e| Error::io(name, e))
}

/// `rows` as the JSON array of objects `--format json` prints, for output that embeds them.
pub fn rows_as_json(rows: &Rows) -> Result<serde_json::Value> {
    let mut buf = Vec::new();
    write_rows(rows, Format::Json, &mut buf)
        .map_err(|e| Error::internal(format!("rows as JSON: {e}")))?;
    serde_json::from_slice(&buf).map_err(|e| Error::json("rows as JSON", e))
}

/// Prints which run fed each column of table1 (the rows of the `table1_runs` query), below the
/// table.
pub fn print_table1_runs(runs: &Rows) -> Result<()> {
    let mut w = std::io::stdout().lock();
    writeln!(w, "columns from runs (tttnn sql table1_runs):")
        .and_then(|()| write_rows(runs, Format::Table, &mut w))
        .and_then(|()| w.flush())
        .map_err(|e| Error::io("<stdout>", e))
}

/// Writes `rows` in `format` (a text format) to `w`.
fn write_rows(rows: &Rows, format: Format, w: &mut dyn Write) -> std::io::Result<()> {
    match format {
        Format::Table => {
            let table = duckdb::arrow::util::pretty::pretty_format_batches_with_schema(
                rows.schema.clone(),
                &rows.batches,
            )
            .map_err(arrow_io)?;
            writeln!(w, "{table}")
        }
        Format::Csv => {
            let mut csv = arrow_csv::WriterBuilder::new().with_header(true).build(w);
            if rows.batches.is_empty() {
                // A header with no rows, as COPY writes it.
                csv.write(&RecordBatch::new_empty(flat_schema(&rows.schema)))
                    .map_err(arrow_io)?;
            }
            for b in &rows.batches {
                csv.write(&flat(b).map_err(arrow_io)?).map_err(arrow_io)?;
            }
            Ok(())
        }
        Format::Json => {
            let mut json = arrow_json::ArrayWriter::new(&mut *w);
            for b in &rows.batches {
                json.write(b).map_err(arrow_io)?;
            }
            // No rows is `[]`.
            json.finish().map_err(arrow_io)?;
            writeln!(w)
        }
        Format::Parquet => unreachable!("Parquet is written by print_rows or DuckDB's COPY"),
    }
}

/// An Arrow error as the I/O error it wraps (a closed pipe stays a closed pipe).
fn arrow_io(e: arrow_schema::ArrowError) -> std::io::Error {
    match e {
        arrow_schema::ArrowError::IoError(_, source) => source,
        e => std::io::Error::other(e),
    }
}

/// Whether CSV can write a column as it is (nested types such as DESCRIBE's lists cannot).
fn csv_writable(t: &DataType) -> bool {
    !matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Struct(_)
            | DataType::Map(..)
            | DataType::Union(..)
            | DataType::Dictionary(..)
    )
}

fn flat_schema(schema: &Schema) -> Arc<Schema> {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match csv_writable(f.data_type()) {
                true => f.as_ref().clone(),
                false => Field::new(f.name(), DataType::Utf8, true),
            })
            .collect::<Vec<_>>(),
    ))
}

/// `batch` with every column CSV cannot write rendered as text, as DuckDB prints it.
fn flat(batch: &RecordBatch) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = batch.schema();
    if schema.fields().iter().all(|f| csv_writable(f.data_type())) {
        return Ok(batch.clone());
    }
    let options = arrow_cast::display::FormatOptions::default();
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(
            |(c, f)| -> std::result::Result<ArrayRef, arrow_schema::ArrowError> {
                if csv_writable(f.data_type()) {
                    return Ok(c.clone());
                }
                let fmt = arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &options)?;
                let text: StringArray = (0..c.len())
                    .map(|i| c.is_valid(i).then(|| fmt.value(i).to_string()))
                    .collect();
                Ok(Arc::new(text))
            },
        )
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(flat_schema(&schema), columns)
}
