//! Where the workspace and its target directory are, and the cargo
//! invocations every command shares.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::process::{self, Command};

/// Variables that `cargo run` or a parent build may set and that would pin
/// a child cargo to the wrong compiler (aya-build clears the same ones).
const TOOLCHAIN_VARIABLES: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
];

/// The checked-out workspace xtask belongs to.
#[derive(Debug)]
pub struct Workspace {
    /// Directory of the root Cargo.toml.
    pub root: PathBuf,
    /// cargo's target directory (honours `CARGO_TARGET_DIR`).
    pub target_dir: PathBuf,
}

impl Workspace {
    /// Finds the root from xtask's own manifest and asks cargo for the
    /// target directory.
    pub fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        let mut metadata = Command::new("cargo");
        metadata.current_dir(&root).args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ]);
        let json = process::output(&mut metadata)?;
        let metadata: serde_json::Value =
            serde_json::from_str(&json).context("cargo metadata printed invalid JSON")?;
        let Some(target_dir) = metadata["target_directory"].as_str() else {
            bail!("cargo metadata has no target_directory");
        };
        Ok(Self {
            root,
            target_dir: PathBuf::from(target_dir),
        })
    }

    /// `cargo` (the toolchain of rust-toolchain.toml) run in the root.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&self.root);
        cmd
    }

    /// `cargo +nightly` run in the root, with nothing inherited that would
    /// pick the stable compiler instead.
    pub fn cargo_nightly(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&self.root).arg("+nightly");
        for variable in TOOLCHAIN_VARIABLES {
            cmd.env_remove(variable);
        }
        cmd
    }

    /// Builds the daemon in release mode and returns the binary's path.
    pub fn build_balancer_release(&self) -> Result<PathBuf> {
        process::run(
            self.cargo()
                .args(["build", "--release", "--package", "balancer"]),
        )?;
        let binary = self.target_dir.join("release").join("balancer");
        if !binary.is_file() {
            bail!(
                "`cargo build --release --package balancer` succeeded but {} does not exist",
                binary.display()
            );
        }
        Ok(binary)
    }

    /// `bash scripts/setup.sh`.
    pub fn setup(&self) -> Result<()> {
        process::run(
            Command::new("bash")
                .current_dir(&self.root)
                .arg(self.root.join("scripts").join("setup.sh")),
        )
    }
}
