//! The comparison's output: a Markdown report (one table per workload,
//! every cell `median (min–max) ×backend ×direct` where `backend` is the
//! row's own baseline, then the targets with met / missed, once
//! per backend family) and the JSON document with every run's figures. One
//! report per topology: its ratios are against its own rows of the same run.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::bench::{
    stats::{
        BULK_BUSY, BULK_DOWN_1, BULK_DOWN_8, BULK_UP_1, CONN_BUSY, CONN_CPU_TOTAL, CONN_DAEMON_CPU,
        CONN_DAEMON_USER, CONN_RATE, CONN_SETUP_P99, CPU_SOFTIRQ, CPU_SYSTEM, CPU_TOTAL, CPU_USER,
        DAEMON_SYSTEM, DAEMON_USER, Figure, METRICS, Metric, PSOCK_PER_RTT, PSOCK_RUN_P50,
        PSOCK_SAME_CPU, PSOCK_WAIT_P50, PSOCK_WAIT_P99, RSS_10K, RSS_CONNECTIONS, RSS_IDLE,
        RSS_LOADED, RTT_ONE_CPU_ADDED_P50, RTT_ONE_CPU_P50, RTT_P50, RTT_P99, RTT_P999, SKB_DOWN_1,
        SKB_DOWN_8, SKB_UP_1,
    },
    topology::Kind,
};

/// One subject's figures.
#[derive(Debug, Serialize)]
pub struct SubjectReport {
    pub name: &'static str,
    pub path: &'static str,
    /// `direct`, `microsocks` or `dante`: rows of a group share a baseline.
    pub group: &'static str,
    /// The row the `vs_backend` ratios and `minus_backend` differences of
    /// `figures` are taken against.
    pub baseline: &'static str,
    pub figures: BTreeMap<&'static str, Figure>,
}

/// One target of the issue, checked against the medians.
#[derive(Debug, Serialize, PartialEq)]
pub struct TargetCheck {
    pub target: String,
    /// The backend row the measured figure is relative to, if it is.
    pub against: Option<&'static str>,
    pub measured: f64,
    pub limit: f64,
    pub met: bool,
}

/// Everything written to the JSON file.
#[derive(Debug, Serialize)]
pub struct Report {
    pub runs: usize,
    pub settings: serde_json::Value,
    /// `veth` or `loopback`.
    pub network: &'static str,
    /// What the network looks like.
    pub topology: &'static str,
    pub subjects: Vec<SubjectReport>,
    pub targets: Vec<TargetCheck>,
}

/// Where the JSON of `kind`'s report goes, given `--json OUT.json`: OUT.json
/// itself for veth (the file earlier runs wrote), `OUT-loopback.json` for
/// loopback; the Markdown and the chart take the same stem.
pub fn path_for(json: &Path, kind: Kind) -> PathBuf {
    match kind {
        Kind::Veth => json.to_owned(),
        Kind::Loopback => {
            let stem = json.file_stem().unwrap_or_default().to_string_lossy();
            let mut name = format!("{stem}-{}", kind.name());
            if let Some(extension) = json.extension() {
                name.push('.');
                name.push_str(&extension.to_string_lossy());
            }
            json.with_file_name(name)
        }
    }
}

const GROUPS: &[(&str, &[&str])] = &[
    (
        "Bulk throughput, GB/s (higher is better)",
        &[BULK_UP_1, BULK_DOWN_1, BULK_DOWN_8],
    ),
    (
        "Request/response, 64 B ping-pong round trip, µs (lower is better)",
        &[
            RTT_P50,
            RTT_P99,
            RTT_P999,
            RTT_ONE_CPU_P50,
            RTT_ONE_CPU_ADDED_P50,
        ],
    ),
    (
        "Connection rate: connect + SOCKS5 + 1 KiB echo + close, {concurrency} concurrent",
        &[
            CONN_RATE,
            CONN_SETUP_P99,
            CONN_DAEMON_CPU,
            CONN_DAEMON_USER,
            CONN_CPU_TOTAL,
            CONN_BUSY,
        ],
    ),
    (
        "CPU seconds per GB moved in the bulk phases (lower is better)",
        &[
            CPU_USER,
            CPU_SYSTEM,
            CPU_SOFTIRQ,
            CPU_TOTAL,
            BULK_BUSY,
            DAEMON_USER,
            DAEMON_SYSTEM,
        ],
    ),
    (
        "Daemon memory (VmRSS): idle, then holding idle spliced connections",
        &[RSS_IDLE, RSS_CONNECTIONS, RSS_LOADED, RSS_10K],
    ),
    (
        "Sockmap's hand-off to a kworker per redirected message (64 B ping-pong again, \
         traced with perf's workqueue tracepoints; the trace slows it)",
        &[
            PSOCK_PER_RTT,
            PSOCK_WAIT_P50,
            PSOCK_WAIT_P99,
            PSOCK_RUN_P50,
            PSOCK_SAME_CPU,
        ],
    ),
    (
        "Sockmap: mean bytes per skb the verdict redirected in the bulk phases \
         (the daemon's per-backend skb counters; sockmap pays per skb)",
        &[SKB_UP_1, SKB_DOWN_1, SKB_DOWN_8],
    ),
];

fn metric(key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|metric| metric.key == key)
}

fn cell(figure: Option<&Figure>, decimals: usize) -> String {
    let Some(figure) = figure else {
        return "–".to_owned();
    };
    let v = &figure.value;
    let mut out = format!(
        "{:.decimals$} ({:.decimals$}–{:.decimals$})",
        v.median, v.min, v.max
    );
    if let Some(ratio) = &figure.vs_backend {
        let _ = write!(out, " ×{:.2}b", ratio.median);
    }
    if let Some(ratio) = &figure.vs_direct {
        let _ = write!(out, " ×{:.2}d", ratio.median);
    }
    out
}

/// The Markdown report.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Comparison on the {} topology\n", report.network);
    let _ = writeln!(
        out,
        "Each cell: median over {} runs (min–max), then the median of the per-run \
         ratio to the row's backend (b, the `against` column below: `backend` = one \
         microsocks, `backend-dante` = one dante-server) and to `direct` (d). \
         microsocks copies in 1 KiB chunks and caps every path through it, so the \
         proxies are measured twice: in front of microsocks (small writes) and in \
         front of dante (large writes; `(dante)` rows).\n\nTopology: {}; TCP congestion control `{}` in every namespace\n",
        report.runs,
        report.topology,
        report.settings["congestion_control"]
            .as_str()
            .unwrap_or("as the host's")
    );
    let _ = writeln!(
        out,
        "| subject | group | path | against (b) |\n| --- | --- | --- | --- |"
    );
    for subject in &report.subjects {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            subject.name, subject.group, subject.path, subject.baseline
        );
    }
    let concurrency = report.settings["concurrency"].to_string();
    for (title, keys) in GROUPS {
        let title = title.replace("{concurrency}", &concurrency);
        let _ = writeln!(out, "\n**{title}**\n");
        let metrics: Vec<&Metric> = keys.iter().filter_map(|key| metric(key)).collect();
        let mut header = "| subject |".to_owned();
        let mut rule = "| --- |".to_owned();
        for metric in &metrics {
            let _ = write!(header, " {} ({}) |", metric.label, metric.unit);
            rule.push_str(" ---: |");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for subject in &report.subjects {
            if !metrics
                .iter()
                .any(|metric| subject.figures.contains_key(metric.key))
            {
                continue;
            }
            let _ = write!(out, "| {} |", subject.name);
            for metric in &metrics {
                let _ = write!(
                    out,
                    " {} |",
                    cell(subject.figures.get(metric.key), metric.decimals)
                );
            }
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "\n**Targets of issue 6** (medians of this run; a benchmark, not a test)\n"
    );
    let _ = writeln!(
        out,
        "| target | against | measured | limit | met |\n| --- | --- | ---: | ---: | --- |"
    );
    for check in &report.targets {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {} |",
            check.target,
            check.against.unwrap_or("–"),
            check.measured,
            check.limit,
            if check.met { "yes" } else { "**no**" }
        );
    }
    out
}

/// The proxy rows of one backend family the targets compare:
/// `(balancer-sockmap, balancer-splice, haproxy, redsocks)`.
const FAMILIES: [(&str, &str, &str, Option<&str>); 2] = [
    (
        "balancer-sockmap",
        "balancer-splice",
        "haproxy",
        Some("redsocks"),
    ),
    (
        "balancer-sockmap (dante)",
        "balancer-splice (dante)",
        "haproxy (dante)",
        None,
    ),
];

/// The targets against the medians, once per backend family (each
/// against that family's backend row); a target whose inputs were not
/// measured is left out.
pub fn targets(subjects: &[SubjectReport]) -> Vec<TargetCheck> {
    let find = |name: &str| subjects.iter().find(|s| s.name == name);
    let get = |name: &str, key: &str| find(name).and_then(|s| s.figures.get(key));
    let value = |name: &str, key: &str| get(name, key).map(|f| f.value.median);
    let added = |name: &str, key: &str| {
        get(name, key)
            .and_then(|f| f.minus_backend.as_ref())
            .map(|s| s.median)
    };
    let vs_backend = |name: &str, key: &str| {
        get(name, key)
            .and_then(|f| f.vs_backend.as_ref())
            .map(|s| s.median)
    };
    let mut checks = Vec::new();
    let mut push = |target: String,
                    against: Option<&'static str>,
                    measured: Option<f64>,
                    limit: Option<f64>,
                    at_most: bool| {
        if let (Some(measured), Some(limit)) = (measured, limit) {
            let met = if at_most {
                measured <= limit
            } else {
                measured >= limit
            };
            checks.push(TargetCheck {
                target,
                against,
                measured,
                limit,
                met,
            });
        }
    };
    for (lb, splice, haproxy, redsocks) in FAMILIES {
        let Some(against) = find(lb).map(|s| s.baseline) else {
            continue;
        };
        let backend = Some(against);
        push(
            format!("{lb}: added p50 RTT vs {against}, µs <= 10"),
            backend,
            added(lb, RTT_P50),
            Some(10.0),
            true,
        );
        push(
            format!("{lb}: added p50 RTT vs {against}, µs <= half of {haproxy}'s"),
            backend,
            added(lb, RTT_P50),
            added(haproxy, RTT_P50).map(|h| h / 2.0),
            true,
        );
        push(
            format!("{lb}: added p50 RTT on one CPU vs {against}, µs <= 10"),
            backend,
            value(lb, RTT_ONE_CPU_ADDED_P50),
            Some(10.0),
            true,
        );
        push(
            format!("{lb}: added p50 RTT on one CPU vs {against}, µs <= half of {haproxy}'s"),
            backend,
            value(lb, RTT_ONE_CPU_ADDED_P50),
            value(haproxy, RTT_ONE_CPU_ADDED_P50).map(|h| h / 2.0),
            true,
        );
        for key in [BULK_UP_1, BULK_DOWN_1, BULK_DOWN_8] {
            push(
                format!("{lb}: {key}: ratio to {against} >= 0.90"),
                backend,
                vs_backend(lb, key),
                Some(0.9),
                false,
            );
            push(
                format!("{lb}: {key}: GB/s >= {haproxy}"),
                backend,
                value(lb, key),
                value(haproxy, key),
                false,
            );
        }
        push(
            format!("{lb}: connections/s >= {haproxy}"),
            backend,
            value(lb, CONN_RATE),
            value(haproxy, CONN_RATE),
            false,
        );
        if let Some(redsocks) = redsocks {
            push(
                format!("{lb}: connections/s >= 3 x {redsocks}"),
                backend,
                value(lb, CONN_RATE),
                value(redsocks, CONN_RATE).map(|r| 3.0 * r),
                false,
            );
        }
        push(
            format!("{lb}: daemon user CPU s/GB < 5% of {splice}'s"),
            backend,
            value(lb, DAEMON_USER),
            value(splice, DAEMON_USER).map(|s| 0.05 * s),
            true,
        );
    }
    for name in ["balancer-sockmap", "balancer-splice"] {
        // 64 MB = 61.04 MiB.
        push(
            format!(
                "{name}: RSS MiB with 10,000 idle connections < 64 MB (linear from those held)"
            ),
            None,
            value(name, RSS_10K),
            Some(64e6 / 1_048_576.0),
            true,
        );
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{Sample, figures};

    fn subject(name: &'static str, pairs: &[(&'static str, f64)]) -> SubjectReport {
        against(name, "backend", 50.0, pairs)
    }

    /// A row whose baseline `baseline` had a p50 RTT of `baseline_rtt`.
    fn against(
        name: &'static str,
        baseline: &'static str,
        baseline_rtt: f64,
        pairs: &[(&'static str, f64)],
    ) -> SubjectReport {
        let sample: Sample = pairs.iter().copied().collect();
        let backend: Sample = [(RTT_P50, baseline_rtt), (CONN_RATE, 1000.0)]
            .into_iter()
            .collect();
        SubjectReport {
            name,
            path: "",
            group: "",
            baseline,
            figures: figures(
                &[sample],
                std::slice::from_ref(&backend),
                std::slice::from_ref(&backend),
            ),
        }
    }

    /// The one target check of `subjects` whose text holds `needle`.
    fn the_check(subjects: &[SubjectReport], needle: &str) -> TargetCheck {
        targets(subjects)
            .into_iter()
            .find(|c| c.target.contains(needle))
            .unwrap_or_else(|| panic!("no target check mentions {needle:?}"))
    }

    #[test]
    fn the_veth_report_keeps_the_given_path_and_loopback_gets_a_suffixed_one() {
        let json = Path::new("bench-results/compare.json");
        assert_eq!(path_for(json, Kind::Veth), json);
        assert_eq!(
            path_for(json, Kind::Loopback),
            Path::new("bench-results/compare-loopback.json")
        );
        assert_eq!(
            path_for(json, Kind::Loopback).with_extension("md"),
            Path::new("bench-results/compare-loopback.md")
        );
    }

    #[test]
    fn added_latency_is_judged_against_ten_microseconds_and_half_of_haproxy() {
        let subjects = [
            subject("balancer-sockmap", &[(RTT_P50, 58.0)]),
            subject("haproxy", &[(RTT_P50, 70.0)]),
        ];
        let checks = targets(&subjects);
        assert_eq!(checks[0].measured, 8.0);
        assert!(checks[0].met);
        assert_eq!(checks[1].limit, 10.0);
        assert!(checks[1].met);
    }

    #[test]
    fn on_one_cpu_the_added_latency_is_the_same_phase_difference() {
        // 30 µs above the backend's own phase, 4 µs above the backend
        // measured alongside: the drift between phases is not the proxy's.
        let subjects = [
            subject(
                "balancer-sockmap",
                &[(RTT_ONE_CPU_P50, 80.0), (RTT_ONE_CPU_ADDED_P50, 4.0)],
            ),
            subject(
                "haproxy",
                &[(RTT_ONE_CPU_P50, 60.0), (RTT_ONE_CPU_ADDED_P50, 9.0)],
            ),
        ];
        let checks = targets(&subjects);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(checks.iter().all(|c| c.target.contains("on one CPU")));
        assert_eq!(checks[0].measured, 4.0);
        assert!(checks[0].met);
        assert_eq!(checks[1].limit, 4.5);
        assert!(checks[1].met);
    }

    #[test]
    fn on_one_cpu_more_than_half_of_haproxys_addition_misses() {
        let subjects = [
            subject("balancer-sockmap", &[(RTT_ONE_CPU_ADDED_P50, 4.6)]),
            subject("haproxy", &[(RTT_ONE_CPU_ADDED_P50, 8.7)]),
        ];
        let half = the_check(&subjects, "half");
        assert_eq!(half.limit, 4.35);
        assert!(!half.met);
    }

    #[test]
    fn connection_rate_must_beat_three_times_redsocks() {
        let subjects = [
            subject("balancer-sockmap", &[(CONN_RATE, 2000.0)]),
            subject("redsocks", &[(CONN_RATE, 1000.0)]),
        ];
        let check = the_check(&subjects, "redsocks");
        assert_eq!(check.limit, 3000.0);
        assert!(!check.met);
    }

    #[test]
    fn the_dante_rows_are_judged_against_dante_alone_and_haproxy_in_front_of_dante() {
        let subjects = [
            subject("balancer-sockmap", &[(RTT_P50, 58.0)]),
            subject("haproxy", &[(RTT_P50, 70.0)]),
            against(
                "balancer-sockmap (dante)",
                "backend-dante",
                80.0,
                &[(RTT_P50, 95.0)],
            ),
            against(
                "haproxy (dante)",
                "backend-dante",
                80.0,
                &[(RTT_P50, 100.0)],
            ),
        ];
        let checks = targets(&subjects);
        let dante: Vec<&TargetCheck> = checks
            .iter()
            .filter(|c| c.target.starts_with("balancer-sockmap (dante)"))
            .collect();
        assert_eq!(dante.len(), 2, "{checks:?}");
        assert!(dante.iter().all(|c| c.against == Some("backend-dante")));
        assert_eq!(dante[0].measured, 15.0);
        assert!(!dante[0].met, "15 µs added is more than 10");
        assert_eq!(dante[1].limit, 10.0, "half of haproxy's 20 µs");
        let microsocks = checks
            .iter()
            .find(|c| c.target.starts_with("balancer-sockmap:"))
            .expect("microsocks family check");
        assert_eq!(microsocks.against, Some("backend"));
        assert_eq!(microsocks.measured, 8.0);
    }
}
