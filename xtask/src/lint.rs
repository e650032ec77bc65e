//! `cargo xtask lint`: every check of the lint bar, in one command. Runs all
//! of them even when one fails, so one run shows every problem.

use anyhow::{Result, bail};

use crate::process::{self, Command};
use crate::workspace::Workspace;

/// The BPF crate, linted for its own target rather than the host.
const BPF_CRATE: &str = "balancer-ebpf";
const BPF_TARGET: &str = "bpfel-unknown-none";

/// Runs rustfmt, clippy for the host, clippy for the BPF target and
/// cargo-deny; fails naming every check that failed.
pub fn run(ws: &Workspace) -> Result<()> {
    let mut failed = Vec::new();
    for mut check in checks(ws)? {
        if let Err(error) = process::run(&mut check) {
            eprintln!("lint: {error:#}");
            failed.push(process::display(&check));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} lint check(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    eprintln!("lint: all checks passed");
    Ok(())
}

fn checks(ws: &Workspace) -> Result<Vec<Command>> {
    let mut fmt = ws.cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);

    // The BPF crate is no_std/no_main and only builds for its own target.
    let mut clippy = ws.cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        BPF_CRATE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);

    // A target directory of its own: a nightly build-std build would
    // otherwise invalidate the stable artifacts of every other command.
    let mut clippy_bpf = ws.cargo_nightly();
    clippy_bpf
        .env("CARGO_TARGET_DIR", ws.target_dir.join("bpf-lint"))
        .args([
            "clippy",
            "--package",
            BPF_CRATE,
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);

    if !process::available("cargo-deny", &["--version"]) {
        bail!("cargo-deny is not installed: run `cargo xtask setup` first");
    }
    let mut deny = ws.cargo();
    deny.args(["deny", "check", "bans", "licenses", "sources"]);

    Ok(vec![fmt, clippy, clippy_bpf, deny])
}
