//! `tttnn sweep`: a grid of runs from one file, compared with its baseline at the end.
use std::path::PathBuf;
use std::time::Duration;

use tttnn::runner::sweep::{self, PointState, Sweep, SweepEvent, SweepOptions};
use tttnn::runner::Event;
use tttnn::task::Shard;
use tttnn::{Error, Result};

use super::compare::ResamplingArgs;
use super::sql::{print_rows, rows_as_json, Format};
use super::ui::Printer;

/// Run a grid of `tttnn run` settings from one file, each point one named run, and compare them.
///
/// SWEEP.toml has `[base]` (any `tttnn run` setting, the --config schema), `[grid]` (settings →
/// lists of values: every combination is one run, named NAME/key=value,...) and/or `points` (a
/// list of tables of settings, each one run; `{}` is [base] alone, named NAME/base), and
/// optionally `name`, `db` and `baseline = { key = value }` (the point the others are compared
/// with; default the first). Points whose retrieval agrees read one neighbour table, computed once; re-running
/// skips finished points and resumes unfinished ones; --shard I/N splits the points among
/// workers. At the end: each finished point against the baseline, paired (`tttnn compare`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sweep file.
    pub sweep: PathBuf,
    /// Results database [default: the file's `db`, else results.duckdb].
    #[arg(long, env = "TTTNN_DB")]
    pub db: Option<PathBuf>,
    /// Where the neighbour tables go [default: DB.neighbors/ beside the database]: workers with a
    /// database each (--shard) give one directory they all see, to share the tables.
    #[arg(long, env = "TTTNN_SWEEP_TABLES")]
    pub tables: Option<PathBuf>,
    /// Say what would run and what would be reused; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// This worker's share of the points: I, I+N, I+2N, ... (each worker also computes its share
    /// of every neighbour table, then waits for the others').
    #[arg(long, env = "TTTNN_SHARD", default_value_t = Shard::ALL)]
    pub shard: Shard,
    /// Print what the sweep did (points, tables, store queries, comparison) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The comparison's output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the comparison to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub resampling: ResamplingArgs,
}

/// Seconds a sweep worker waits for the other workers' shares of a neighbour table.
fn table_wait() -> Result<Duration> {
    match std::env::var("TTTNN_SWEEP_WAIT") {
        Err(_) => Ok(Duration::from_secs(24 * 3600)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s >= 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::setting(
                    "TTTNN_SWEEP_WAIT",
                    format!("`{v}` is not a number of seconds"),
                )
            }),
    }
}

/// Runs the subcommand.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let sweep = Sweep::load(&args.sweep)?;
    let db = args
        .db
        .clone()
        .or_else(|| sweep.db.clone())
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DB));
    let opts = SweepOptions {
        db: db.clone(),
        tables: args.tables.clone(),
        shard: args.shard,
        dry_run: args.dry_run,
        resampling: args.resampling.resampling(),
        wait: table_wait()?,
    };
    p.say(format!(
        "sweep {}: {} points (baseline {}), worker {} of the points, results in {}",
        sweep.name,
        sweep.points.len(),
        sweep.points[sweep.baseline].name,
        args.shard,
        db.display()
    ));
    let summary = sweep::run(&sweep, &opts, &mut |e| match e {
        SweepEvent::Table { path, documents } => p.say(format!(
            "neighbour table {} ({documents} documents, searched once for its points)",
            path.display()
        )),
        SweepEvent::Waiting { path, missing } => p.say(format!(
            "waiting for the other workers' share of {} ({missing} documents missing)",
            path.display()
        )),
        SweepEvent::Skipped { point, run_id } => {
            p.say(format!("{}: finished (run {run_id}), skipped", point.name))
        }
        SweepEvent::Point { point, resume, of } => p.say(format!(
            "{} ({} of this worker's {of}): {}",
            point.name,
            point.index + 1,
            match resume {
                Some(id) => format!("resuming run {id}"),
                None => "running".into(),
            }
        )),
        SweepEvent::Run { point, event } => {
            if let Event::Document {
                doc,
                bpb_before,
                bpb_after,
                ..
            } = event
            {
                p.detail(format!(
                    "  {} doc {} bpb {bpb_before:.4} -> {bpb_after:.4}",
                    point.name, doc.doc_id
                ));
            }
        }
    })?;
    if args.dry_run && !args.json {
        for point in &summary.points {
            let state = match point.before {
                PointState::New => "new".to_string(),
                PointState::Finished(id) => format!("finished (run {id}): skipped"),
                PointState::Unfinished(id) => format!("unfinished (run {id}): resumed"),
            };
            let owner = if point.mine {
                "this worker"
            } else {
                "another worker"
            };
            let table = point
                .table
                .as_ref()
                .map(|t| format!(", neighbours from {}", t.display()))
                .unwrap_or_default();
            p.out(format!(
                "{:>3} {} [{state}; {owner}{table}]",
                point.index, point.name
            ))?;
        }
        for t in &summary.tables {
            p.out(format!(
                "neighbour table {} (k={}): computed once, read by {}",
                t.path.display(),
                t.k,
                t.points.join(", ")
            ))?;
        }
        return Ok(());
    }
    if args.json {
        let mut value =
            serde_json::to_value(&summary).map_err(|e| Error::json("sweep summary", e))?;
        value["comparison"] = match &summary.comparison {
            Some(rows) => rows_as_json(rows)?,
            None => serde_json::Value::Null,
        };
        return p.out(value);
    }
    match &summary.comparison {
        Some(rows) => {
            p.say(format!(
                "each finished point against {}, paired over their documents ({} resamples, seed {})",
                summary.baseline, args.resampling.resamples, args.resampling.seed
            ));
            print_rows(rows, args.format, args.out.as_deref())
        }
        None => {
            p.say("no comparison yet: the baseline and another point must be finished in this database");
            Ok(())
        }
    }
}
