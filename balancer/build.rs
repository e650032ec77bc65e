//! Builds the BPF object from `balancer-ebpf` (aya-build runs the nightly
//! toolchain with `-Z build-std=core` for `bpfel-unknown-none`) and leaves it
//! in OUT_DIR, where `bpf::OBJECT` embeds it.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../balancer-ebpf");
    println!("cargo:rerun-if-changed={root}/../balancer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "balancer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
