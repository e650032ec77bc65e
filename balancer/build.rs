//! Builds the BPF object from `balancer-ebpf` (aya-build runs the nightly
//! toolchain with `-Z build-std=core` for `bpfel-unknown-none`) and leaves it
//! in OUT_DIR, where `bpf::OBJECT` embeds it.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // Read at run time, not with `env!`: cargo reuses a compiled build
    // script across checkouts that share a target directory, and a path
    // baked in at compile time then names the other checkout (whose
    // sources would decide when this one's BPF object is rebuilt).
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = format!("{manifest_dir}/../balancer-ebpf");
    println!("cargo:rerun-if-changed={root}/../balancer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "balancer-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
