//! The `tttnn` command line: one file per subcommand, doc comments as help text. Each subcommand
//! parses its flags, calls one library entry point and prints; [`ui::Printer`] does the talking.
mod compare;
mod doctor;
mod eval;
mod index;
mod ingest;
mod merge;
mod neighbors;
mod report;
mod run;
mod search;
mod smoke;
mod sql;
mod sweep;
pub mod ui;

use clap::{ArgMatches, Parser, Subcommand};

/// tttnn: test-time training on nearest neighbours (Hardt & Sun 2023).
///
/// Data goes to stdout; messages and progress to stderr. Exit codes: 0 ok, 1 bad input,
/// 2 internal error.
#[derive(Debug, Parser)]
#[command(name = "tttnn", version, propagate_version = true)]
pub struct Cli {
    /// Print only errors on stderr.
    #[arg(long, short, global = true, env = "TTTNN_QUIET")]
    pub quiet: bool,
    /// Print a line per step (per neighbour in `run`).
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// tttnn's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check libtorch, CUDA, ONNX Runtime, libduckdb and protoc, and say what is missing.
    Doctor(doctor::Args),
    /// Run the whole stack on the bundled tiny fixtures: embed, store, retrieve, train, evaluate, record.
    Smoke(smoke::Args),
    /// Ingest Pile JSONL(.zst) into the LanceDB corpus store with encoder embeddings; resumable.
    Ingest(ingest::Args),
    /// Build the store's vector index (IVF-RQ by default), or drop it for exact search (flat).
    Index(index::Args),
    /// Nearest neighbours of a text or a stored document.
    Search(search::Args),
    /// Retrieve every selected test document's neighbours once into a table `run` can read.
    Neighbors(Box<neighbors::Args>),
    /// Bits per byte, byte and word perplexity of text files under an LM (lm-eval's protocol).
    Eval(eval::Args),
    /// Run TTT-NN on a task's test documents and record every number in DuckDB; resumable.
    Run(Box<run::Args>),
    /// Run SQL (or a bundled query: table1, table1_runs, bpb_vs_k, cost, compare_runs, leakage, utility, retrieval_quality) against a results database.
    Sql(sql::Args),
    /// Run a grid of settings from one file, each point a named run, and compare them.
    Sweep(sweep::Args),
    /// Compare runs with a baseline, paired over the same documents: change, interval, p, n.
    Compare(compare::Args),
    /// Plot bits per byte against k per task, and before/after bars (PNG and SVG).
    Report(report::Args),
    /// Merge the databases of a sharded run into one run.
    Merge(merge::Args),
}

impl Command {
    /// Runs the subcommand; `matches` are its own (to tell given flags from defaults).
    pub fn run(self, p: &ui::Printer, matches: &ArgMatches) -> tttnn::Result<()> {
        match self {
            Command::Doctor(a) => doctor::run(a, p),
            Command::Smoke(a) => smoke::run(a, p),
            Command::Ingest(a) => ingest::run(a, p),
            Command::Index(a) => index::run(a, p),
            Command::Search(a) => search::run(a, p),
            Command::Neighbors(a) => neighbors::run(*a, p),
            Command::Eval(a) => eval::run(a, p),
            Command::Run(a) => run::run(*a, p, matches),
            Command::Sql(a) => sql::run(a, p),
            Command::Sweep(a) => sweep::run(a, p),
            Command::Compare(a) => compare::run(a, p),
            Command::Report(a) => report::run(a, p),
            Command::Merge(a) => merge::run(a, p),
        }
    }
}

/// The default results database of `run`, `sql`, `report` and `smoke`.
pub const DEFAULT_DB: &str = "results.duckdb";
