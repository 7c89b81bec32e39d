//! `tttnn merge`: shard databases (`tttnn run --shard I/N`, one file each) into one run.
use std::path::PathBuf;

use tttnn::records::Db;
use tttnn::runner::RunConfig;
use tttnn::Result;

use super::ui::Printer;

/// Merge the DuckDB files of a sharded run (`--shard I/N`) into one run in OUT.
///
/// Each input must hold one finished shard run; all N shards, same settings. OUT is created if
/// missing and may already hold other runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Database to merge into.
    pub out: PathBuf,
    /// Shard databases.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let db = Db::open(&args.out)?;
    let id = db.merge_shards(&args.inputs, &RunConfig::recorded_without_shard)?;
    p.say(format!(
        "merged {} shard(s) into run {id} of {}",
        args.inputs.len(),
        args.out.display()
    ));
    p.out(id)
}
