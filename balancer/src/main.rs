//! The `balancer` binary: parses the command line, starts tracing,
//! dispatches to one `cmd` module per subcommand and turns the result into
//! an exit code (0 ok, 1 runtime failure, 2 usage or invalid config).

use std::{io::Write as _, process::ExitCode};

use balancer::{
    cli::{Cli, Command},
    cmd,
};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (0 for --help/--version).
    let cli = Cli::parse();
    init_tracing();
    let result = match &cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Stats(args) => cmd::stats::run(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Iptables(args) => cmd::iptables::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "balancer: {}", cmd::describe(&error));
            ExitCode::from(cmd::exit_code(&error))
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed write is dropped. By default the subscriber reports it
        // with `eprintln!`, which panics when stderr is a pipe nobody reads
        // any more: the task that logged died, and a daemon whose starter
        // had exited ignored SIGTERM (its signal task died logging it).
        .log_internal_errors(false)
        // Colour only for a person at a terminal: log files, journald and the
        // demo's relay would show the escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
