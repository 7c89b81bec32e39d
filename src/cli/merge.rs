//! `tttnn merge`: shard databases (`tttnn run --shard I/N`, one file each) into one run, or
//! (`--runs`) every run of several databases into one.
use std::path::PathBuf;

use tttnn::records::Db;
use tttnn::runner::RunConfig;
use tttnn::Result;

use super::ui::Printer;

/// Merge the DuckDB files of a sharded run (`--shard I/N`) into one run in OUT.
///
/// Each input must hold one finished shard run; all N shards, same settings. OUT is created if
/// missing and may already hold other runs. With --runs, every finished run of each input is
/// copied into OUT instead (a sweep's workers' databases, `tttnn sweep --shard`), runs whose name
/// OUT holds already left out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database to merge into.
    pub out: PathBuf,
    /// Shard databases (with --runs: any databases).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Copy every run of the inputs, each as it is, instead of joining shards into one run.
    #[arg(long)]
    pub runs: bool,
}

/// Runs the subcommand.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let db = Db::open(&args.out)?;
    if args.runs {
        let ids = db.gather_runs(&args.inputs)?;
        p.say(format!(
            "copied {} run(s) of {} database(s) into {}",
            ids.len(),
            args.inputs.len(),
            args.out.display()
        ));
        return p.out(serde_json::to_string(&ids).unwrap_or_default());
    }
    let id = db.merge_shards(&args.inputs, &RunConfig::recorded_without_shard)?;
    p.say(format!(
        "merged {} shard(s) into run {id} of {}",
        args.inputs.len(),
        args.out.display()
    ));
    p.out(id)
}
