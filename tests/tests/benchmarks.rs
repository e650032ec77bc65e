//! The benchmarks are deliverables too: each runs here end to end in its
//! smallest form, so that a change cannot break one unnoticed until the next
//! measurement. Nothing here judges speed (the benchmarks measure that, on
//! a quiet machine); what fails is what every benchmark run checks itself
//! (checksums, the redirect rule's diversions, every subject answering), a
//! report missing a row or a figure, and anything of the run left behind:
//! network namespaces, BPF pins, processes, scratch directories.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::{Mutex, MutexGuard, PoisonError},
};

use balancer_tests::{
    bench::subjects::{Engine, Subject},
    require_root,
};
use serde_json::Value;

/// The benchmarks load the machine and pin processes to a CPU: never two at
/// once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What a benchmark run could leave behind, taken before and after it.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    namespaces: BTreeSet<String>,
    bpf_pins: BTreeSet<String>,
    scratch_dirs: BTreeSet<String>,
    bench_processes: BTreeSet<String>,
}

impl Leftovers {
    fn now() -> Self {
        let netns = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let namespaces = String::from_utf8_lossy(&netns.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
        let names = |dir: &Path, prefix: &str| -> BTreeSet<String> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .filter(|name| name.starts_with(prefix))
                        .collect()
                })
                .unwrap_or_default()
        };
        // Every process the comparison starts reads its config from the
        // run's scratch directory.
        let pgrep = Command::new("pgrep")
            .args(["-af", "bench-compare-"])
            .output()
            .expect("pgrep");
        let bench_processes = String::from_utf8_lossy(&pgrep.stdout)
            .lines()
            .filter(|line| !line.contains("pgrep"))
            .map(str::to_owned)
            .collect();
        Self {
            namespaces,
            bpf_pins: names(Path::new("/sys/fs/bpf/balancer"), ""),
            scratch_dirs: names(&std::env::temp_dir(), "bench-compare-"),
            bench_processes,
        }
    }
}

/// Root, and the machine to itself: the benchmarks load it and pin
/// processes to a CPU, so never two at once.
fn exclusive(needed_for: &str) -> MutexGuard<'static, ()> {
    require_root(needed_for);
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a benchmark binary of this package for at most `limit_s` seconds
/// (then SIGINT, on which it removes what it made and exits) and checks
/// that, however it ended, it left nothing behind.
fn run_bench(binary: &str, args: &[&str], limit_s: u32) -> ExitStatus {
    let before = Leftovers::now();
    let status = Command::new("timeout")
        .args(["-s", "INT", &limit_s.to_string(), binary])
        .args(args)
        .status()
        .expect("run timeout");
    assert_eq!(
        Leftovers::now(),
        before,
        "{binary} {args:?} ({status}) left something behind"
    );
    status
}

/// As [`run_bench`], and the run must succeed.
fn run_bench_ok(binary: &str, args: &[&str], limit_s: u32) {
    let status = run_bench(binary, args, limit_s);
    assert!(
        status.success(),
        "{binary} {args:?} failed ({status}; 124 is the {limit_s} s limit): see its output above"
    );
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A scratch directory for the reports, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_engine_benchmark_runs_every_engine_in_its_own_namespace_and_leaves_nothing() {
    let _machine = exclusive("the engine benchmark's network namespace and the sockmap engine");
    let scratch = Scratch::new("benchmarks-test-engine");
    let json = scratch.0.join("engine.json");
    run_bench_ok(
        env!("CARGO_BIN_EXE_bench_engine"),
        &[
            "--runs",
            "1",
            "--mib",
            "64",
            "--buffers",
            "default,16",
            "--json",
            &json.to_string_lossy(),
        ],
        120,
    );

    let report = read_json(&json);
    assert_eq!(report["congestion_control"], "cubic", "{report}");
    let rows = report["rows"].as_array().expect("rows");
    let described: Vec<String> = rows
        .iter()
        .map(|row| format!("{} {}", row["engine"], row["socket_buffer"]))
        .collect();
    assert_eq!(
        described,
        [
            r#""no proxy" "default""#,
            r#""sockmap" "default""#,
            r#""sockmap" "16 MiB""#,
            r#""splice" "default""#,
            r#""splice" "16 MiB""#,
        ],
        "{report}"
    );
    for row in rows {
        assert!(row["error"].is_null(), "{row}");
        // Each run checked the SHA-256 of what arrived; a run that moved
        // nothing would have no rate.
        let rate = row["median_gbytes_per_s"].as_f64().expect("rate");
        assert!(rate > 0.0, "{row}");
    }
}

#[test]
fn an_interrupted_engine_benchmark_deletes_its_namespace() {
    let _machine = exclusive("the engine benchmark's network namespace");
    // 15 GiB in all: far from done when SIGINT comes after 2 s, by which
    // time its namespace exists (it is made before the payload).
    let status = run_bench(
        env!("CARGO_BIN_EXE_bench_engine"),
        &["--runs", "3", "--mib", "1024"],
        2,
    );
    assert_eq!(status.code(), Some(124), "not interrupted: {status}");
}

#[test]
fn the_comparison_runs_every_subject_on_both_topologies_and_leaves_nothing() {
    let _machine = exclusive("network namespaces, iptables, BPF and CPU pinning");
    let scratch = Scratch::new("benchmarks-test-compare");
    let json = scratch.0.join("compare.json");
    // --quick: 1 run, 64 MiB per bulk stream, 2,000 round trips, 500
    // connections; every subject, veth then loopback (68 s here).
    run_bench_ok(
        env!("CARGO_BIN_EXE_bench_compare"),
        &["--quick", "--json", &json.to_string_lossy()],
        600,
    );

    for (path, network) in [
        (json.clone(), "veth"),
        (scratch.0.join("compare-loopback.json"), "loopback"),
    ] {
        let report = read_json(&path);
        assert_eq!(report["network"], network);
        assert_eq!(report["settings"]["congestion_control"], "cubic");
        let subjects = report["subjects"].as_array().expect("subjects");
        let names: Vec<&str> = subjects
            .iter()
            .map(|subject| subject["name"].as_str().expect("name"))
            .collect();
        let expected: Vec<&str> = Subject::ALL.iter().map(|subject| subject.name()).collect();
        assert_eq!(names, expected, "{network}");
        // The sockmap rows, and only they, tell the bytes per skb of each
        // bulk phase, read from the daemon's skb counters.
        for (kind, subject) in Subject::ALL.iter().zip(subjects) {
            let skb = subject["figures"]["skb_bytes_down_1"]["value"]["median"].as_f64();
            if kind.engine() == Some(Engine::Sockmap) {
                assert!(
                    skb.is_some_and(|bytes| bytes >= 1.0),
                    "{network}: {} bytes per skb down: {skb:?}",
                    kind.name()
                );
            } else {
                assert_eq!(skb, None, "{network}: {}", kind.name());
            }
        }
        for subject in subjects {
            for figure in [
                "bulk_up_1_gbps",
                "bulk_down_8_gbps",
                "rtt_p50_us",
                "conn_per_s",
            ] {
                let value = subject["figures"][figure]["value"]["median"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{network}: {} has no {figure}", subject["name"]));
                assert!(
                    value > 0.0,
                    "{network}: {} {figure} = {value}",
                    subject["name"]
                );
            }
        }
        assert!(
            report["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{network}: no target checked"
        );
        for chart in ["compare.png", "compare-loopback.png"] {
            assert!(scratch.0.join(chart).exists(), "{chart} missing");
        }
    }
}
