//! `tttnn run`: TTT-NN on a task, recorded in DuckDB. Settings: flag > `TTTNN_*` env > `--config`
//! TOML > default (one struct, `runner::RunConfig`); `--resume RUN_ID` continues a killed run with
//! the settings it was started with.
use std::path::PathBuf;
use std::time::Instant;

use clap::parser::ValueSource;
use clap::ArgMatches;
use tttnn::records::{Db, Query, RunStatus};
use tttnn::runner::{self, Event, RunConfig, SettingsFile};
use tttnn::{Error, Result};

use super::sql::{print_query, print_table1_runs, Format};
use super::ui::Printer;

/// Run TTT-NN on a task's test documents and record every number in DuckDB.
///
/// Per document: retrieve its nearest training documents, evaluate it (k = 0), train on each
/// neighbour nearest first (one AdamW step per max-length chunk), evaluate after each, reset.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML file with any of the settings below (snake_case keys) and `db`; flags and env vars win.
    #[arg(long, env = "TTTNN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Results database (created if missing) [default: results.duckdb].
    #[arg(long, env = "TTTNN_DB")]
    pub db: Option<PathBuf>,
    /// Continue run RUN_ID of --db with its recorded settings: recorded documents are kept.
    #[arg(long, value_name = "RUN_ID")]
    pub resume: Option<i64>,
    #[command(flatten)]
    pub settings: RunConfig,
}

/// Whether `id` was given on the command line or by its env var (not a default).
fn explicit(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Runs the subcommand.
pub fn run(args: Args, p: &Printer, matches: &ArgMatches) -> Result<()> {
    let file = args.config.as_deref().map(SettingsFile::load).transpose()?;
    let db_path = args
        .db
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.db.clone()))
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DB));
    let (cfg, resume) = match args.resume {
        Some(id) => {
            // Closed again before the run starts: the run opens it for each write.
            let row = Db::open(&db_path)?
                .run(id)?
                .ok_or_else(|| Error::bad_file(&db_path, format!("has no run {id} to resume")))?;
            if row.status == RunStatus::Finished {
                p.say(format!(
                    "run {id} in {} is already finished",
                    db_path.display()
                ));
                return Ok(());
            }
            let cfg = RunConfig::from_recorded(&row.config).map_err(|e| {
                Error::bad_file(
                    &db_path,
                    format!("run {id} has a config this tttnn cannot read: {e}"),
                )
            })?;
            (cfg, Some(id))
        }
        None => {
            let cfg = match &file {
                Some(f) => args.settings.with_file(f, |id| explicit(matches, id))?,
                None => args.settings,
            };
            // Settings are checked before the database is created.
            let cfg = cfg.normalized()?;
            (cfg, None)
        }
    };
    let start = Instant::now();
    let mut progress = Progress::default();
    let mut on_event = |e: Event| match e {
        Event::Started {
            run_id,
            total,
            done,
        } => {
            p.say(format!(
                "run {run_id}: {} on {total} documents of {} ({done} already recorded), k={}, results in {}",
                cfg.docs.task.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                cfg.store.as_deref().unwrap_or(std::path::Path::new("")).display(),
                cfg.search.neighbors,
                db_path.display()
            ));
            if let Some(b) = p.bar(
                total as u64,
                "{bar:30} {pos}/{len} docs {elapsed} ETA {eta} {msg}",
            ) {
                b.set_position(done as u64);
                b.reset_eta();
                progress.bar = Some(b);
            }
        }
        Event::Planned { plan } => p.say(format!("memory plan: {plan}")),
        Event::Neighbor {
            doc,
            record,
            bits_per_byte,
        } => p.detail(format!(
            "  {} k={}{} {} d={:.4} tokens={} chunks={} loss={:.4} train {:.2}s{}",
            doc.doc_id,
            record.k,
            // Under the paper's schedule the k-th neighbour trained is rank k, in pass 1.
            if (record.rank, record.pass) == (record.k, 1) {
                String::new()
            } else {
                format!(" (rank {}, pass {})", record.rank, record.pass)
            },
            record.neighbor_id,
            record.distance,
            record.tokens,
            record.chunks,
            record.train_loss.unwrap_or(f64::NAN),
            record.train_s,
            bits_per_byte
                .map(|b| format!(" bpb {b:.4}"))
                .unwrap_or_default()
        )),
        Event::Document {
            doc,
            record,
            bpb_before,
            bpb_after,
        } => {
            let mean = progress.add(record, bpb_before, bpb_after);
            match &progress.bar {
                Some(b) => {
                    b.inc(1);
                    b.set_message(mean);
                }
                None => p.say(format!(
                    "doc {} ({} #{}) {}: bpb {bpb_before:.4} -> {bpb_after:.4} with {} neighbours{} [{:.1}s elapsed] {mean}",
                    doc.seq + 1,
                    doc.task,
                    doc.position,
                    doc.doc_id,
                    record.neighbors_used,
                    if record.complete { "" } else { " (incomplete: excluded)" },
                    start.elapsed().as_secs_f64(),
                )),
            }
        }
    };
    let run_id = runner::run(&cfg, &db_path, resume, &mut on_event)?;
    p.finish_bar();
    p.say(format!(
        "run {run_id} finished: {} documents in {:.1}s; tables: tttnn sql table1 --db {} --run {run_id}",
        progress.docs,
        start.elapsed().as_secs_f64(),
        db_path.display()
    ));
    let db = Db::open_read_only(&db_path)?;
    print_query(&db, Query::Table1.sql(), &[run_id], Format::Table, None)?;
    print_table1_runs(&db.query(Query::Table1Runs.sql(), &[run_id])?)
}

/// The running byte-weighted mean before and after, over complete documents.
#[derive(Default)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    before: f64,
    after: f64,
    bytes: u64,
    docs: usize,
}

impl Progress {
    /// Adds a document; returns the mean so far, as text.
    fn add(&mut self, record: &tttnn::records::DocRecord, before: f64, after: f64) -> String {
        if record.complete {
            self.before += before * record.bytes as f64;
            self.after += after * record.bytes as f64;
            self.bytes += record.bytes;
        }
        self.docs += 1;
        if self.bytes == 0 {
            return String::new();
        }
        format!(
            "mean bpb {:.4} -> {:.4}",
            self.before / self.bytes as f64,
            self.after / self.bytes as f64
        )
    }
}
