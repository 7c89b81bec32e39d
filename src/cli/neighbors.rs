//! `tttnn neighbors`: a neighbour table, every selected test document's neighbours retrieved
//! once, for `tttnn run --neighbors-from`.
use tttnn::runner::neighbors::compute;
use tttnn::runner::{NeighborsConfig, NeighborsEvent};
use tttnn::Result;

use super::ui::Printer;

/// Retrieve every selected test document's neighbours once into a neighbour table.
///
/// The documents and the retrieval are `tttnn run`'s (same flags, same defaults); `tttnn run
/// --neighbors-from TABLE` then trains from the table without searching the store. Exact search
/// runs as blocked matrix products for a whole batch of documents (the neighbours `search --exact`
/// finds). Resumable (re-running adds what is missing) and shardable: `--shard I/N` workers split
/// the documents, `--slice J/M` workers the store's rows, all writing one table.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub settings: NeighborsConfig,
}

/// Runs the subcommand.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let cfg = args.settings;
    let mut bar = None;
    let mut count = 0;
    let summary = compute(&cfg, &mut |e| match e {
        NeighborsEvent::Started { total, done } => {
            p.say(format!(
                "neighbors: {total} documents of {} ({done} already in {}), k={}",
                cfg.docs
                    .task
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                cfg.out.display(),
                cfg.search.neighbors
            ));
            count = done;
            bar = p.bar(
                total as u64,
                "{bar:30} {pos}/{len} docs {elapsed} ETA {eta} {msg}",
            );
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        }
        NeighborsEvent::Scanned { read, rows } => {
            if let Some(b) = &bar {
                b.set_message(format!("store rows {read}/{rows} in this pass"));
            }
        }
        NeighborsEvent::Committed { n } => {
            count += n;
            match &bar {
                Some(b) => b.inc(n as u64),
                None => p.detail(format!("neighbors: {count} documents in the table")),
            }
        }
    })?;
    p.finish_bar();
    p.out(serde_json::to_string(&summary).unwrap_or_default())
}
