//! `cargo xtask bench`: runs the benchmark binaries of `balancer-tests`,
//! each printing its table and writing its JSON under bench-results/.

use anyhow::{Context as _, Result, bail};

use crate::process;
use crate::workspace::Workspace;

/// One benchmark binary and where its JSON goes.
#[derive(Debug)]
struct Bench {
    /// Name for `--only`.
    name: &'static str,
    /// `[[bin]]` of the balancer-tests crate.
    binary: &'static str,
    /// Path of its JSON result, relative to the workspace root.
    json: &'static str,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "engine",
        binary: "bench_engine",
        json: "bench-results/engine.json",
    },
    Bench {
        name: "failover",
        binary: "bench_failover",
        json: "bench-results/failover.json",
    },
];

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only these benchmarks (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Extra arguments passed to every benchmark binary (after `--`).
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
        eprintln!("bench: {} -> {}", bench.name, bench.json);
        process::run(
            ws.cargo()
                .args([
                    "run",
                    "--release",
                    "--package",
                    "balancer-tests",
                    "--bin",
                    bench.binary,
                    "--",
                ])
                .args(["--json", bench.json])
                .args(&args.bench_args),
        )?;
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
            error.to_string().contains("known: engine, failover"),
            "{error}"
        );
    }
}
