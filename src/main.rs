//! The `tttnn` binary: parses the command line, sets up logging, runs one subcommand and maps its
//! result to an exit code (0 ok, 1 bad input, 2 internal error; a closed stdout pipe is ok).
mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use cli::ui::{Printer, Verbosity};
use cli::Cli;

fn main() -> ExitCode {
    // Before libtorch or Lance first runs, single-threaded; a user's own setting wins.
    tttnn::set_library_env();
    // Usage errors are bad input (exit 1), not clap's default 2, which means an internal error here.
    let usage = |e: clap::Error| {
        let code = if e.use_stderr() { 1 } else { 0 };
        let _ = e.print();
        ExitCode::from(code)
    };
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    // Lance logs every read and commit at info: only its warnings are worth a user's screen.
    let level = if cli.quiet {
        "error"
    } else {
        "warn,tttnn=info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TTTNN_LOG")
                .unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let printer = Printer::new(match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    });
    let sub = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    match cli.command.run(&printer, &sub) {
        Ok(()) => ExitCode::SUCCESS,
        // `tttnn sql ... | head`: the reader has what it wanted.
        Err(tttnn::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code() as u8;
            eprintln!("error: {}", tttnn::error::chain_text(&e));
            ExitCode::from(code)
        }
    }
}
