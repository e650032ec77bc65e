//! `cargo xtask`: the project's developer entry points (setup, lint, test,
//! demo, run, bench). Only wires the command line to one module per command;
//! every step shells out with `std::process::Command` so xtask never links
//! the crates it builds.

mod bench;
mod children;
mod demo;
mod lint;
mod process;
mod test;
mod workspace;

use anyhow::Result;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, check, run and benchmark balancer.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install everything balancer needs (scripts/setup.sh; idempotent).
    Setup,
    /// rustfmt check, clippy (host and BPF target) and cargo-deny.
    Lint,
    /// The one test command: setup, lint, then every test, optimized (needs root).
    Test(test::Args),
    /// Start three microsocks backends, an HTTP target and balancer in front of them.
    Demo(demo::Args),
    /// Build balancer in release mode and run it with the given arguments.
    Run {
        /// Arguments for `balancer` (put them after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks and write their JSON to bench-results/.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line per cause, without the backtrace anyhow would print
            // under RUST_BACKTRACE: the failing command is the useful part.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if matches!(cli.command, Command::Test(_)) {
        test::require_root()?;
    }
    let ws = workspace::Workspace::locate()?;
    match cli.command {
        Command::Setup => ws.setup(),
        Command::Lint => lint::run(&ws),
        Command::Test(args) => test::run(&ws, &args),
        Command::Demo(args) => demo::run(&ws, &args),
        Command::Run { args } => {
            let binary = ws.build_balancer_release()?;
            let code = process::run_exit_code(process::Command::new(&binary).args(&args))?;
            std::process::exit(code);
        }
        Command::Bench(args) => bench::run(&ws, &args),
    }
}
