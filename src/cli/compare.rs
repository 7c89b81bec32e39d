//! `tttnn compare`: runs against a baseline, paired over the same documents, with intervals.
use std::path::PathBuf;

use tttnn::records::Db;
use tttnn::stats::Resampling;
use tttnn::Result;

use super::sql::{print_rows, Format};
use super::ui::Printer;

/// Compare runs with the first (the baseline), paired over the documents every run completed.
///
/// Per task and for pile_all (the tasks weighted by the Pile's sizes, as table1): the mean
/// per-document change in bits per byte of each run against the baseline at the point its method
/// reports (negative: better), a 95% bootstrap interval (documents resampled with replacement,
/// within each task for pile_all), a two-sided sign-flip permutation p-value, and n. A fixed seed
/// gives the same numbers anywhere (docs/runner.md, "Paired comparisons").
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Results database.
    #[arg(long, env = "TTTNN_DB", default_value = super::DEFAULT_DB)]
    pub db: PathBuf,
    /// The baseline run, then the runs compared with it.
    #[arg(required = true, num_args = 2.., value_name = "RUN")]
    pub runs: Vec<i64>,
    #[command(flatten)]
    pub resampling: ResamplingArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write to this file (replacing it) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let resampling = args.resampling.resampling();
    let db = Db::open_read_only(&args.db)?;
    let rows = db.compare(&args.runs, &resampling)?;
    p.say(format!(
        "runs {:?} against run {}: paired bootstrap over documents ({} resamples, seed {}), \
         sign-flip p-values (seed {})",
        &args.runs[1..],
        args.runs[0],
        resampling.resamples,
        resampling.seed,
        resampling.seed.wrapping_add(1)
    ));
    print_rows(&rows, args.format, args.out.as_deref())
}

/// The bootstrap's settings, as `compare`, `sweep` and `sql table1 --ci` take them.
#[derive(Debug, Clone, clap::Args)]
pub struct ResamplingArgs {
    /// Bootstrap resamples (and sign-flip permutations).
    #[arg(long, default_value_t = Resampling::default().resamples as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub resamples: u32,
    /// The resampling's seed (the permutations use seed + 1).
    #[arg(long, default_value_t = Resampling::default().seed)]
    pub seed: u64,
}

impl ResamplingArgs {
    /// The settings.
    pub fn resampling(&self) -> Resampling {
        Resampling {
            resamples: self.resamples as usize,
            seed: self.seed,
        }
    }
}
