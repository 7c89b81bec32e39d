use clap::Parser;
use tttnn::cli::Cli;

fn main() {
    // Usage errors are bad input (exit 1), not clap's default 2, which means an internal error here.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { 1 } else { 0 };
        let _ = e.print();
        std::process::exit(code);
    });
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
    if let Err(e) = cli.command.run(cli.quiet) {
        let code = e.exit_code();
        eprintln!("error: {:#}", anyhow::Error::new(e));
        std::process::exit(code);
    }
}
