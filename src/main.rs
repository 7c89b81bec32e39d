use clap::Parser;
use tttnn::cli::Cli;

fn main() {
    let cli = Cli::parse();
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
