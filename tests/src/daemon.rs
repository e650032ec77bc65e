//! Finding the `balancer` binary the tests and benchmarks run.
//! `env!("CARGO_BIN_EXE_balancer")` only exists for the crate that owns
//! the binary, so this takes `$BALANCER_BIN`, else builds the daemon with
//! cargo into the target directory of the running executable and returns
//! its path. Cargo makes the build a no-op when the binary is fresh; a stale
//! binary would test old code.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};

/// The daemon as it ships: the `release` build (whole-program LTO), unless
/// the running executable is a debug build, which gets the debug daemon.
/// The test suite itself builds in `release-tests` (release without LTO,
/// see the workspace `Cargo.toml`) and still runs the shipped daemon.
pub fn balancer_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BALANCER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // Tests live in <target>/<profile>/deps, benchmark binaries in
    // <target>/<profile>.
    let mut dir = exe.parent().context("executable has a directory")?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().context("deps has a parent")?;
    }
    let target = dir.parent().context("the profile directory has a parent")?;
    let debug = dir.file_name().is_some_and(|name| name == "debug");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .args(["build", "-p", "balancer"])
        .env("CARGO_TARGET_DIR", target);
    if !debug {
        build.arg("--release");
    }
    let status = build.status().context("run cargo build -p balancer")?;
    ensure!(status.success(), "cargo build -p balancer failed");
    let bin = target
        .join(if debug { "debug" } else { "release" })
        .join("balancer");
    ensure!(bin.exists(), "{} missing after build", bin.display());
    Ok(bin)
}
