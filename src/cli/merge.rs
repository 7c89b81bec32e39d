//! `tttnn merge`: shard databases (`tttnn run --shard I/N`, one file each) into one run.
use std::path::PathBuf;

use crate::error::Result;
use crate::records::Db;

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
pub fn run(args: Args, quiet: bool) -> Result<()> {
    let db = Db::open(&args.out)?;
    let id = db.merge_shards(&args.inputs)?;
    if !quiet {
        eprintln!(
            "merged {} shard(s) into run {id} of {}",
            args.inputs.len(),
            args.out.display()
        );
    }
    println!("{id}");
    Ok(())
}
