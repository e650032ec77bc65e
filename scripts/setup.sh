#!/usr/bin/env bash
# Installs everything balancer needs to build, run, test and benchmark on a
# fresh Debian 12 machine: apt packages, the nightly rust-src used to build
# the BPF crate, and bpf-linker built against Debian's LLVM 22.
# Idempotent: every step checks before it acts, so a second run is fast.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  # bpf-linker against LLVM 22 (see DESIGN.md, "Toolchain")
  llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
  # real peers for tests, the demo and benchmarks
  microsocks dante-server curl proxychains4 iptables iproute2 nginx-light
  # what users run today instead of us (comparison benchmarks), load tools
  haproxy redsocks iperf3 wrk gnuplot-nox fonts-dejavu-core
  # the comparison traces the sockmap engine's kworker hand-off
  linux-perf
  # `promtool check metrics` validates our Prometheus exposition
  prometheus
  # the demo's HTTP target; benchmarks: CPU accounting, charts
  python3
  # the dashboard's end-to-end test drives a headless browser
  chromium chromium-driver
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt: all packages present"
fi

# Debian starts these services on install; the project starts its own copies.
for svc in danted nginx haproxy redsocks prometheus prometheus-node-exporter iperf3; do
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
done

if ! rustup toolchain list | grep -q '^nightly'; then
  log "rustup: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup: adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi
# `cargo xtask lint` runs clippy on the BPF crate with the nightly toolchain.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^clippy'; then
  log "rustup: adding clippy to nightly"
  rustup component add clippy --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  log "cargo: building bpf-linker 0.13 against LLVM 22 (takes a few minutes, once)"
  # llvm-sys reads LLVM_SYS_221_PREFIX; bpf-linker's own build.rs reads LLVM_PREFIX
  # (without it, it links against /usr/lib64 and fails with "unable to find -lLLVM").
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 LLVM_PREFIX=/usr/lib/llvm-22 cargo +stable install --locked bpf-linker \
    --version '~0.13' --no-default-features --features llvm-22
else
  log "bpf-linker present"
fi

# cargo-deny for `cargo xtask lint` (bans, licenses, sources). 0.20.2 declares
# rust-version 1.88, so it builds with the pinned stable 1.95; the advisory
# database is unreachable here, so `advisories` is never checked.
CARGO_DENY_VERSION=0.20.2
if ! cargo-deny --version 2>/dev/null | grep -q " ${CARGO_DENY_VERSION}\$"; then
  log "cargo: building cargo-deny ${CARGO_DENY_VERSION} (a few minutes, once)"
  cargo +stable install --locked cargo-deny --version "=${CARGO_DENY_VERSION}"
else
  log "cargo-deny ${CARGO_DENY_VERSION} present"
fi

# bpffs for pinned maps (the daemon pins its counters there for `balancer stats`)
if [ -d /sys/fs/bpf ] && ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  $SUDO mount -t bpf bpf /sys/fs/bpf || log "could not mount bpffs (not root?)"
fi

log "done"
