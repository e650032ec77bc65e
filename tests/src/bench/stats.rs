//! Figures over runs: median and min–max of each metric per subject, and
//! the same for its ratio to `backend` and to `direct` taken run by run (both
//! sides measured minutes apart on the same machine). Pure: no I/O.

use std::collections::BTreeMap;

use serde::Serialize;

/// One metric: its JSON key, how it reads, and which way is better.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub decimals: usize,
}

const fn metric(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    decimals: usize,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        higher_is_better,
        decimals,
    }
}

pub const BULK_UP_1: &str = "bulk_up_1_gbps";
pub const BULK_DOWN_1: &str = "bulk_down_1_gbps";
pub const BULK_DOWN_8: &str = "bulk_down_8_gbps";
pub const RTT_P50: &str = "rtt_p50_us";
pub const RTT_P99: &str = "rtt_p99_us";
pub const RTT_P999: &str = "rtt_p999_us";
/// RTT p50 with the client and every process of the run on one CPU (see
/// [`crate::bench::one_cpu`]): the path's work without cross-CPU wake-ups.
pub const RTT_ONE_CPU_P50: &str = "rtt_one_cpu_p50_us";
/// That p50 minus the one of a connection through the row's backend alone
/// taking turns with the row's own in the same phase (see
/// [`crate::bench::workloads::ping_pong`]): what the proxy adds. Proxy rows
/// only.
pub const RTT_ONE_CPU_ADDED_P50: &str = "rtt_one_cpu_added_p50_us";
pub const CONN_RATE: &str = "conn_per_s";
pub const CONN_SETUP_P99: &str = "conn_setup_p99_us";
/// CPU (user + kernel) of the proxy's own processes per connection of the
/// connection-rate phase: what the proxy costs, apart from the backends and
/// the client it shares the cores with.
pub const CONN_DAEMON_CPU: &str = "conn_daemon_cpu_us";
/// Its user-space part: what the proxy's own code and runtime cost.
pub const CONN_DAEMON_USER: &str = "conn_daemon_user_us";
/// CPU of the whole machine per connection (client, backends, proxy,
/// softirq): with the cores busy, the connection rate is the cores over it.
pub const CONN_CPU_TOTAL: &str = "conn_cpu_total_us";
/// Share of the machine's CPU in use during the connection-rate phase.
pub const CONN_BUSY: &str = "conn_cpu_busy_share";
pub const CPU_USER: &str = "cpu_user_s_per_gb";
pub const CPU_SYSTEM: &str = "cpu_system_s_per_gb";
pub const CPU_SOFTIRQ: &str = "cpu_softirq_s_per_gb";
pub const CPU_TOTAL: &str = "cpu_total_s_per_gb";
/// Share of the machine's CPU in use during the bulk phases.
pub const BULK_BUSY: &str = "bulk_cpu_busy_share";
pub const DAEMON_USER: &str = "daemon_user_s_per_gb";
pub const DAEMON_SYSTEM: &str = "daemon_system_s_per_gb";
pub const RSS_IDLE: &str = "rss_idle_mib";
pub const RSS_LOADED: &str = "rss_loaded_mib";
pub const RSS_CONNECTIONS: &str = "rss_connections";
pub const RSS_10K: &str = "rss_10k_extrapolated_mib";
/// Sockmap rows only, from a second ping-pong traced with perf (see
/// [`crate::bench::psock_trace`]).
pub const PSOCK_PER_RTT: &str = "psock_items_per_rtt";
pub const PSOCK_WAIT_P50: &str = "psock_wait_p50_us";
pub const PSOCK_WAIT_P99: &str = "psock_wait_p99_us";
pub const PSOCK_RUN_P50: &str = "psock_run_p50_us";
pub const PSOCK_SAME_CPU: &str = "psock_same_cpu_share";

/// Sockmap rows only: mean bytes per skb the verdict redirected in each
/// bulk phase (from the daemon's per-backend skb counters): sockmap's cost
/// goes by skbs, so this says how the backend (down) or the client (up)
/// writes.
pub const SKB_UP_1: &str = "skb_bytes_up_1";
pub const SKB_DOWN_1: &str = "skb_bytes_down_1";
pub const SKB_DOWN_8: &str = "skb_bytes_down_8";

/// Every metric, in report order.
pub const METRICS: &[Metric] = &[
    metric(BULK_UP_1, "bulk 1 stream up", "GB/s", true, 2),
    metric(BULK_DOWN_1, "bulk 1 stream down", "GB/s", true, 2),
    metric(BULK_DOWN_8, "bulk 8 streams down", "GB/s", true, 2),
    metric(RTT_P50, "64 B RTT p50", "µs", false, 1),
    metric(RTT_P99, "64 B RTT p99", "µs", false, 1),
    metric(RTT_P999, "64 B RTT p99.9", "µs", false, 1),
    metric(RTT_ONE_CPU_P50, "64 B RTT p50, one CPU", "µs", false, 1),
    metric(
        RTT_ONE_CPU_ADDED_P50,
        "added to the backend's, one CPU",
        "µs",
        false,
        1,
    ),
    metric(CONN_RATE, "connections", "conn/s", true, 0),
    metric(CONN_SETUP_P99, "setup p99", "µs", false, 0),
    metric(CONN_DAEMON_CPU, "proxy CPU per connection", "µs", false, 0),
    metric(CONN_DAEMON_USER, "of it user space", "µs", false, 0),
    metric(CONN_CPU_TOTAL, "machine CPU per connection", "µs", false, 0),
    metric(CONN_BUSY, "CPU busy", "share", false, 2),
    metric(CPU_USER, "system user", "CPU s/GB", false, 3),
    metric(CPU_SYSTEM, "system kernel", "CPU s/GB", false, 3),
    metric(CPU_SOFTIRQ, "system softirq", "CPU s/GB", false, 3),
    metric(CPU_TOTAL, "system total", "CPU s/GB", false, 3),
    metric(BULK_BUSY, "CPU busy", "share", false, 2),
    metric(DAEMON_USER, "daemon user", "CPU s/GB", false, 4),
    metric(DAEMON_SYSTEM, "daemon kernel", "CPU s/GB", false, 3),
    metric(RSS_IDLE, "daemon RSS idle", "MiB", false, 1),
    metric(RSS_CONNECTIONS, "idle connections held", "count", true, 0),
    metric(RSS_LOADED, "daemon RSS with them", "MiB", false, 1),
    metric(RSS_10K, "linear to 10,000", "MiB", false, 1),
    metric(
        PSOCK_PER_RTT,
        "psock work items per round trip",
        "count",
        false,
        2,
    ),
    metric(
        PSOCK_WAIT_P50,
        "queued -> kworker runs it, p50",
        "µs",
        false,
        1,
    ),
    metric(
        PSOCK_WAIT_P99,
        "queued -> kworker runs it, p99",
        "µs",
        false,
        1,
    ),
    metric(PSOCK_RUN_P50, "its run (the send), p50", "µs", false, 1),
    metric(PSOCK_SAME_CPU, "run on the queueing CPU", "share", true, 3),
    metric(SKB_UP_1, "bulk 1 stream up", "B/skb", true, 0),
    metric(SKB_DOWN_1, "bulk 1 stream down", "B/skb", true, 0),
    metric(SKB_DOWN_8, "bulk 8 streams down", "B/skb", true, 0),
];

/// Metric key -> value of one subject in one run.
pub type Sample = BTreeMap<&'static str, f64>;

/// Median and spread of one series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Summary {
    /// `None` for an empty series (the metric does not apply).
    pub fn of(values: Vec<f64>) -> Option<Self> {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        Some(Self {
            median: median(&finite),
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs: values,
        })
    }
}

/// A metric of one subject over all runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    pub value: Summary,
    /// value / backend's value of the same run.
    pub vs_backend: Option<Summary>,
    /// value / direct's value of the same run.
    pub vs_direct: Option<Summary>,
    /// value - backend's value of the same run (added latency, for example).
    pub minus_backend: Option<Summary>,
}

/// Median of a non-empty slice (mean of the middle two for even lengths).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.is_empty() {
        f64::NAN
    } else if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Nearest-rank percentile (`p` in 0..=1) of a non-empty slice.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `samples[run]` of one subject against the baselines' samples of the same
/// runs; metrics absent from a run are skipped.
pub fn figures(
    samples: &[Sample],
    backend: &[Sample],
    direct: &[Sample],
) -> BTreeMap<&'static str, Figure> {
    let mut out = BTreeMap::new();
    for metric in METRICS {
        let values: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.get(metric.key).copied())
            .collect();
        let Some(value) = Summary::of(values) else {
            continue;
        };
        let paired = |baseline: &[Sample], op: fn(f64, f64) -> f64| {
            Summary::of(
                samples
                    .iter()
                    .zip(baseline)
                    .filter_map(|(s, b)| Some(op(*s.get(metric.key)?, *b.get(metric.key)?)))
                    .collect(),
            )
        };
        let ratio = |a: f64, b: f64| if b == 0.0 { f64::NAN } else { a / b };
        out.insert(
            metric.key,
            Figure {
                value,
                vs_backend: paired(backend, ratio),
                vs_direct: paired(direct, ratio),
                minus_backend: paired(backend, |a, b| a - b),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pairs: &[(&'static str, f64)]) -> Sample {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_median_of_an_even_series_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 500.0);
        assert_eq!(percentile(&values, 0.99), 990.0);
        assert_eq!(percentile(&values, 0.999), 999.0);
    }

    #[test]
    fn ratios_pair_each_run_with_the_baseline_of_the_same_run() {
        let subject = [sample(&[(CONN_RATE, 200.0)]), sample(&[(CONN_RATE, 300.0)])];
        let backend = [sample(&[(CONN_RATE, 100.0)]), sample(&[(CONN_RATE, 300.0)])];
        let figures = figures(&subject, &backend, &backend);
        let rate = &figures[CONN_RATE];
        let ratio = rate.vs_backend.as_ref().expect("ratio");
        assert_eq!(ratio.runs, vec![2.0, 1.0]);
        assert_eq!((ratio.min, ratio.max, ratio.median), (1.0, 2.0, 1.5));
        let added = rate.minus_backend.as_ref().expect("difference");
        assert_eq!(added.runs, vec![100.0, 0.0]);
    }

    #[test]
    fn a_metric_no_run_measured_is_left_out() {
        let subject = [sample(&[(CONN_RATE, 1.0)])];
        assert!(!figures(&subject, &subject, &subject).contains_key(RSS_LOADED));
    }
}
