//! `cargo xtask test`: the README's one test command. Setup, lint, then the
//! whole test suite optimized (the `release-tests` profile: release without
//! LTO), so the gigabyte transfers of the integration tests take seconds;
//! the daemon binary the e2e tests run is the shipped `release` build.

use anyhow::{Result, bail};

use crate::process;
use crate::workspace::Workspace;

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the lint step (setup still runs).
    #[arg(long)]
    quick: bool,
    /// Extra arguments for `cargo test` (a test name filter, `--nocapture`
    /// after another `--`, ...).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

/// Runs setup and (unless `--quick`) lint, then cargo test,
/// whose own summary lines end the output.
pub fn run(ws: &Workspace, args: &Args) -> Result<()> {
    ws.setup()?;
    if !args.quick {
        crate::lint::run(ws)?;
    }
    // The BPF crate is no_std and has no host tests; its behaviour is tested
    // through the daemon's integration tests.
    process::run(
        ws.cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "balancer-ebpf",
                "--profile",
                "release-tests",
            ])
            .args(&args.cargo_args),
    )
}

/// Fails unless xtask runs as root; checked before anything else runs.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "cargo xtask test must run as root: the integration tests load BPF programs \
             (CAP_BPF) and create network namespaces and iptables rules (CAP_NET_ADMIN). \
             Run it as root, for example `sudo -E cargo xtask test`."
        );
    }
    Ok(())
}
