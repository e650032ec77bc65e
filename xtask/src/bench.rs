//! `cargo xtask bench`: runs the benchmark binaries of `balancer-tests`,
//! each printing its table and writing its JSON under bench-results/, and
//! the selection micro-benchmark of the `balancer` crate. `compare` runs on
//! both of its topologies (its default `--topology both`): `compare.json`,
//! `.md` and the chart `compare.png` for veth, `compare-loopback.json`,
//! `.md`, `.png` for loopback. Arguments after `--` reach the binaries, e.g.
//! `cargo xtask bench --only compare -- --quick --topology loopback`.

use anyhow::{Context as _, Result, bail};

use crate::process;
use crate::workspace::Workspace;

/// One benchmark and how it is run.
#[derive(Debug)]
struct Bench {
    /// Name for `--only`.
    name: &'static str,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A `[[bin]]` of the balancer-tests crate that writes JSON to `json`
    /// (relative to the workspace root).
    TestsBinary {
        binary: &'static str,
        json: &'static str,
    },
    /// A `harness = false` `[[bench]]` of the balancer crate (prints only).
    CargoBench { bench: &'static str },
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "engine",
        kind: Kind::TestsBinary {
            binary: "bench_engine",
            json: "bench-results/engine.json",
        },
    },
    Bench {
        name: "failover",
        kind: Kind::TestsBinary {
            binary: "bench_failover",
            json: "bench-results/failover.json",
        },
    },
    Bench {
        name: "compare",
        kind: Kind::TestsBinary {
            binary: "bench_compare",
            json: "bench-results/compare.json",
        },
    },
    Bench {
        name: "select",
        kind: Kind::CargoBench { bench: "select" },
    },
];

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only these benchmarks (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Extra arguments for the balancer-tests benchmark binaries (after `--`).
    #[arg(last = true)]
    bench_args: Vec<String>,
}

/// Runs setup, then every selected benchmark in release mode.
pub fn run(ws: &Workspace, args: &Args) -> Result<()> {
    let selected = select(&args.only)?;
    ws.setup()?;
    let results = ws.root.join("bench-results");
    std::fs::create_dir_all(&results)
        .with_context(|| format!("could not create {}", results.display()))?;
    for bench in selected {
        match bench.kind {
            Kind::TestsBinary { binary, json } => {
                eprintln!("bench: {} -> {json}", bench.name);
                process::run(
                    ws.cargo()
                        .args([
                            "run",
                            "--release",
                            "--package",
                            "balancer-tests",
                            "--bin",
                            binary,
                            "--",
                        ])
                        .args(["--json", json])
                        .args(&args.bench_args),
                )?;
            }
            Kind::CargoBench { bench: name } => {
                eprintln!("bench: {}", bench.name);
                process::run(
                    ws.cargo()
                        .args(["bench", "--package", "balancer", "--bench", name]),
                )?;
            }
        }
    }
    Ok(())
}

fn select(only: &[String]) -> Result<Vec<&'static Bench>> {
    if only.is_empty() {
        return Ok(BENCHES.iter().collect());
    }
    only.iter()
        .map(|name| {
            let Some(bench) = BENCHES.iter().find(|bench| bench.name == name) else {
                let known: Vec<_> = BENCHES.iter().map(|bench| bench.name).collect();
                bail!("unknown benchmark `{name}`; known: {}", known.join(", "));
            };
            Ok(bench)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_filter_selects_every_benchmark() {
        let names: Vec<_> = select(&[])
            .expect("select")
            .iter()
            .map(|bench| bench.name)
            .collect();
        assert_eq!(
            names,
            BENCHES.iter().map(|bench| bench.name).collect::<Vec<_>>()
        );
    }

    #[test]
    fn unknown_benchmark_is_an_error_listing_the_known_ones() {
        let error = select(&["nope".to_owned()]).expect_err("an error");
        assert!(
            error
                .to_string()
                .contains("known: engine, failover, compare, select"),
            "{error}"
        );
    }
}
