//! `/metrics`: a [`Scrape`] in the OpenMetrics text format, encoded by
//! `prometheus-client`. Pure: no clock, no I/O.
//!
//! Every value already lives in the daemon's atomics and the engine, and a
//! snapshot copies them; so each scrape builds a fresh `prometheus-client`
//! registry holding one [`Collector`] over that snapshot and encodes it.
//! The alternative, long-lived `Counter`s kept in step with the atomics,
//! would be a second set of counters to keep in sync (and to drop when a
//! reload removes a backend); per-scrape const metrics cannot go stale, and
//! a scrape costs a few microseconds per backend.

use std::borrow::Cow;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    backend::{HistogramSnapshot, LATENCY_BUCKETS_SECONDS},
    forward::sockmap::QUEUE_WARN_ABOVE,
    stats::{snapshot::BackendSnapshot, source::Scrape},
};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every breaker state label, exported one-hot.
const BREAKER_STATES: [&str; 4] = ["closed", "open", "half_open", "unknown"];

/// The exposition of `scrape`.
///
/// # Errors
/// Only if formatting into the string fails, which `String` never does;
/// kept as a `Result` because `prometheus-client` reports it so.
pub fn encode(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(scrape)));
    let mut out = String::new();
    text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct SnapshotCollector(Scrape);

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

/// `backend` and `scope` (empty when the backend has none).
fn backend_labels(backend: &BackendSnapshot) -> Labels {
    vec![
        (Cow::Borrowed("backend"), Cow::Owned(backend.name.clone())),
        (
            Cow::Borrowed("scope"),
            Cow::Owned(backend.scope.clone().unwrap_or_default()),
        ),
    ]
}

fn with(mut labels: Labels, key: &'static str, value: impl Into<Cow<'static, str>>) -> Labels {
    labels.push((Cow::Borrowed(key), value.into()));
    labels
}

/// A latency histogram as a metric: `prometheus-client`'s own `Histogram`
/// only grows by `observe`, while ours is already bucketed by the backend.
#[derive(Debug)]
struct BucketedHistogram<'a>(&'a HistogramSnapshot);

impl EncodeMetric for BucketedHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // `f64::MAX` is how `prometheus-client` spells the `+Inf` bound.
        let bounds = LATENCY_BUCKETS_SECONDS.iter().copied().chain([f64::MAX]);
        // The encoder wants per-bucket counts and accumulates them itself.
        let mut previous = 0;
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.0.cumulative)
            .map(|(bound, &cumulative)| {
                let own = cumulative.saturating_sub(previous);
                previous = cumulative;
                (bound, own)
            })
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum.as_secs_f64(),
            self.0.count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Counters keyed by one label's value.
fn counts_by<'a>(
    label: &'static str,
    counts: &'a std::collections::BTreeMap<String, u64>,
) -> impl Iterator<Item = (Labels, ConstCounter)> + 'a {
    counts.iter().map(move |(value, &count)| {
        (
            vec![(Cow::Borrowed(label), Cow::Owned(value.clone()))],
            ConstCounter::new(count),
        )
    })
}

/// One labelled metric family.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Scrape { snapshot, latency } = &self.0;
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;

        // Daemon-wide. `balancer_info` is a gauge of 1, not OpenMetrics' `info` type: the classic text
        // format (which `promtool check metrics` and older scrapers read)
        // has no `info`, and this idiom parses the same in both.
        family(
            &mut encoder,
            "balancer_info",
            "The running daemon: instance and forwarding engine (always 1)",
            None,
            gauge,
            [(
                vec![
                    (
                        Cow::Borrowed("instance"),
                        Cow::Owned(snapshot.instance.clone()),
                    ),
                    (Cow::Borrowed("engine"), Cow::Owned(snapshot.engine.clone())),
                ],
                ConstGauge::new(1u64),
            )],
        )?;
        single(
            &mut encoder,
            "balancer_connections_accepted",
            "Client connections accepted on every listener",
            None,
            &ConstCounter::new(snapshot.counters.accepted),
        )?;
        single(
            &mut encoder,
            "balancer_connections_exhausted",
            "Client connections for which every backend attempt failed",
            None,
            &ConstCounter::new(snapshot.counters.exhausted),
        )?;
        single(
            &mut encoder,
            "balancer_retries",
            "Backend attempts that were failovers from another backend",
            None,
            &ConstCounter::new(snapshot.counters.retries),
        )?;
        family(
            &mut encoder,
            "balancer_handshake_failures",
            "Client SOCKS5 handshakes that failed, by reason",
            None,
            counter,
            counts_by("reason", &snapshot.counters.handshake_failures),
        )?;
        family(
            &mut encoder,
            "balancer_pairs_finished",
            "Forwarded connections that ended, by what carried them to the end: relay (the user-space copy alone, within forwarding.offload_after_*), sockmap or splice",
            None,
            counter,
            counts_by("carrier", &snapshot.counters.pairs_finished),
        )?;
        let queue = snapshot.counters.kernel_queue;
        single(
            &mut encoder,
            "balancer_kernel_queue_checks",
            "Looks at the kernel's queue on a spliced socket's psock, one per 16 MiB the sockmap verdict redirects",
            None,
            &ConstCounter::new(queue.checks),
        )?;
        single(
            &mut encoder,
            "balancer_kernel_queue_largest",
            "Largest queue of redirected bytes a look found waiting for a socket's send buffer (the kernel sets no limit)",
            Some(&Unit::Bytes),
            &ConstGauge::new(queue.largest_bytes),
        )?;
        single(
            &mut encoder,
            "balancer_kernel_queue_warnings",
            &format!(
                "Connection directions whose kernel queue passed {} MiB (logged)",
                QUEUE_WARN_ABOVE >> 20
            ),
            None,
            &ConstCounter::new(queue.warnings),
        )?;
        single(
            &mut encoder,
            "balancer_kernel_queue_resets",
            "Connections reset because a kernel queue passed forwarding.kernel_queue_limit",
            None,
            &ConstCounter::new(queue.resets),
        )?;
        single(
            &mut encoder,
            "balancer_uptime",
            "Time since the daemon started",
            Some(&Unit::Seconds),
            &ConstGauge::new(snapshot.uptime_secs),
        )?;

        // Per backend: every backend of the pool, and draining ones only
        // while they still carry connections.
        let exported: Vec<(&BackendSnapshot, &HistogramSnapshot)> = snapshot
            .backends
            .iter()
            .zip(latency)
            .filter(|(backend, _)| !backend.draining || backend.active > 0)
            .collect();
        let per_backend = |value: fn(&BackendSnapshot) -> u64| {
            exported
                .iter()
                .map(move |(b, _)| (backend_labels(b), ConstCounter::new(value(b))))
        };
        // An `up` and a `down` sample per backend; none for a backend whose
        // `counts` are `None`.
        let per_direction = |counts: fn(&BackendSnapshot) -> Option<[u64; 2]>| {
            exported.iter().flat_map(move |(b, _)| {
                counts(b).into_iter().flat_map(|counts| {
                    ["up", "down"]
                        .into_iter()
                        .zip(counts)
                        .map(|(direction, count)| {
                            (
                                with(backend_labels(b), "direction", direction),
                                ConstCounter::new(count),
                            )
                        })
                })
            })
        };
        family(
            &mut encoder,
            "balancer_backend_connections",
            "Connection attempts through the backend (client traffic, not probes)",
            None,
            counter,
            per_backend(|b| b.attempts),
        )?;
        family(
            &mut encoder,
            "balancer_backend_successes",
            "Attempts that reached a forwarded connection",
            None,
            counter,
            per_backend(|b| b.successes),
        )?;
        family(
            &mut encoder,
            "balancer_backend_failures",
            "Failed attempts, by failure category",
            None,
            counter,
            exported.iter().flat_map(|(b, _)| {
                b.failures.iter().map(|(category, &count)| {
                    (
                        with(backend_labels(b), "category", category.clone()),
                        ConstCounter::new(count),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "balancer_backend_retries",
            "Attempts that were failovers from another backend",
            None,
            counter,
            per_backend(|b| b.retries),
        )?;
        family(
            &mut encoder,
            "balancer_backend_probes",
            "Active health probes, by result",
            None,
            counter,
            exported.iter().flat_map(|(b, _)| {
                [("ok", b.probes_ok), ("failed", b.probes_failed)].map(|(result, count)| {
                    (
                        with(backend_labels(b), "result", result),
                        ConstCounter::new(count),
                    )
                })
            }),
        )?;
        // The encoder appends the unit: `balancer_backend_bytes_total`.
        family(
            &mut encoder,
            "balancer_backend",
            "Bytes forwarded: up is client to backend, down is backend to client",
            Some(&Unit::Bytes),
            counter,
            per_direction(|b| Some([b.bytes_up, b.bytes_down])),
        )?;
        // Only under sockmap: splice sees no skbs. The encoder appends the
        // unit: `balancer_backend_sockmap_bytes_total`. The bytes are the
        // verdict's share of `balancer_backend_bytes_total` (the relay
        // carries each connection's first bytes), so that bytes per skb is
        // the ratio of the two families' rates.
        family(
            &mut encoder,
            "balancer_backend_sockmap",
            "Bytes the sockmap verdict redirected (the kernel's share of balancer_backend_bytes_total), by direction",
            Some(&Unit::Bytes),
            counter,
            per_direction(|b| b.sockmap.map(|share| [share.bytes_up, share.bytes_down])),
        )?;
        family(
            &mut encoder,
            "balancer_backend_sockmap_skbs",
            "skbs the sockmap verdict redirected, by direction: sockmap's cost goes by skbs, so bytes per skb says how well it suits a backend",
            None,
            counter,
            per_direction(|b| b.sockmap.map(|share| [share.skbs_up, share.skbs_down])),
        )?;
        family(
            &mut encoder,
            "balancer_backend_splice_advised",
            "1 when the backend's downloads come through the sockmap verdict in skbs so small that engine: splice would move more (the daemon logs it once too); only under sockmap",
            None,
            gauge,
            exported
                .iter()
                .filter(|(b, _)| b.sockmap.is_some())
                .map(|(b, _)| {
                    (
                        backend_labels(b),
                        ConstGauge::new(u64::from(b.splice_advised)),
                    )
                }),
        )?;
        family(
            &mut encoder,
            "balancer_backend_active_connections",
            "Connections open through the backend now",
            None,
            gauge,
            exported
                .iter()
                .map(|(b, _)| (backend_labels(b), ConstGauge::new(b.active))),
        )?;
        family(
            &mut encoder,
            "balancer_backend_breaker_state",
            "Circuit breaker state, one-hot over closed, open, half_open and unknown",
            None,
            gauge,
            exported.iter().flat_map(|(b, _)| {
                BREAKER_STATES.map(|state| {
                    (
                        with(backend_labels(b), "state", state),
                        ConstGauge::new(u64::from(b.state == state)),
                    )
                })
            }),
        )?;
        // Unknown (an empty window) is neither 0 nor 1: no sample at all.
        family(
            &mut encoder,
            "balancer_backend_success_rate",
            "Share of successes in the outcome window, 0-1; absent while unknown",
            None,
            gauge,
            exported.iter().filter_map(|(b, _)| {
                b.success_rate
                    .map(|rate| (backend_labels(b), ConstGauge::new(rate)))
            }),
        )?;
        family(
            &mut encoder,
            "balancer_backend_latency",
            "Connect and SOCKS5 handshake latency of successful attempts",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            exported
                .iter()
                .map(|(b, histogram)| (backend_labels(b), BucketedHistogram(histogram))),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::stats::snapshot::{
        DaemonCounters, FORMAT_VERSION, KernelQueue, Snapshot, SockmapShare,
    };

    fn backend(name: &str, scope: Option<&str>, state: &str) -> BackendSnapshot {
        BackendSnapshot {
            name: name.to_owned(),
            address: "10.0.0.1:1080".to_owned(),
            scope: scope.map(str::to_owned),
            state: state.to_owned(),
            draining: false,
            disabled: false,
            admin: "enabled".to_owned(),
            active: 2,
            attempts: 7,
            successes: 5,
            failures: BTreeMap::from([("refused".to_owned(), 2), ("timeout".to_owned(), 0)]),
            retries: 1,
            probes_ok: 4,
            probes_failed: 3,
            success_rate: Some(0.75),
            latency_ema_ms: Some(2.0),
            bytes_up: 1_000,
            bytes_down: 9_000,
            sockmap: None,
            engine: crate::forward::BackendEngine::Auto,
            splice_advised: false,
            last_success_unix_ms: None,
            last_failure_unix_ms: None,
        }
    }

    fn histogram(samples: &[u64]) -> HistogramSnapshot {
        // Cumulative counts from per-bucket sample counts.
        let mut running = 0;
        let cumulative: Vec<u64> = samples
            .iter()
            .map(|n| {
                running += n;
                running
            })
            .collect();
        HistogramSnapshot {
            count: running,
            cumulative,
            sum: Duration::from_millis(6 * running),
        }
    }

    fn scrape() -> Scrape {
        let mut alpha = backend("alpha", Some("eu"), "half_open");
        alpha.sockmap = Some(SockmapShare {
            bytes_up: 800,
            bytes_down: 8_192,
            skbs_up: 2,
            skbs_down: 8,
        });
        // What the daemon judged (forward::advice), passed through as is.
        alpha.splice_advised = true;
        let mut unknown = backend("beta", None, "unknown");
        unknown.success_rate = None;
        let mut gone = backend("gone", None, "closed");
        gone.draining = true;
        gone.active = 0;
        let mut counters = DaemonCounters {
            accepted: 12,
            retries: 1,
            exhausted: 2,
            handshake_failures: BTreeMap::new(),
            pairs_finished: BTreeMap::from([("relay".to_owned(), 7), ("sockmap".to_owned(), 4)]),
            kernel_queue: KernelQueue {
                checks: 300,
                largest_bytes: 70 << 20,
                warnings: 1,
                resets: 2,
            },
        };
        counters.handshake_failures.insert("timeout".to_owned(), 3);
        counters
            .handshake_failures
            .insert("malformed".to_owned(), 0);
        let mut buckets = [0u64; LATENCY_BUCKETS_SECONDS.len() + 1];
        buckets[2] = 4;
        buckets[LATENCY_BUCKETS_SECONDS.len()] = 1;
        Scrape {
            snapshot: Snapshot {
                version: FORMAT_VERSION,
                instance: "default".to_owned(),
                pid: 1,
                engine: "sockmap".to_owned(),
                started_unix_ms: 0,
                written_unix_ms: 0,
                uptime_secs: 5.0,
                counters,
                backends: vec![alpha, unknown, gone],
            },
            latency: vec![
                histogram(&buckets),
                histogram(&[0; LATENCY_BUCKETS_SECONDS.len() + 1]),
                histogram(&[0; LATENCY_BUCKETS_SECONDS.len() + 1]),
            ],
        }
    }

    fn text() -> String {
        encode(scrape()).expect("encodes")
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line `{line}` in:\n{text}"
        );
    }

    #[test]
    fn daemon_wide_counters_and_info_are_exported() {
        let text = text();
        has(&text, "# TYPE balancer_connections_accepted counter");
        has(&text, "balancer_connections_accepted_total 12");
        has(&text, "balancer_connections_exhausted_total 2");
        has(
            &text,
            "balancer_handshake_failures_total{reason=\"timeout\"} 3",
        );
        has(
            &text,
            "balancer_handshake_failures_total{reason=\"malformed\"} 0",
        );
        has(
            &text,
            "balancer_info{instance=\"default\",engine=\"sockmap\"} 1",
        );
        has(&text, "balancer_pairs_finished_total{carrier=\"relay\"} 7");
        has(
            &text,
            "balancer_pairs_finished_total{carrier=\"sockmap\"} 4",
        );
        has(&text, "balancer_kernel_queue_checks_total 300");
        has(&text, "balancer_kernel_queue_largest_bytes 73400320");
        has(&text, "balancer_kernel_queue_warnings_total 1");
        has(&text, "balancer_kernel_queue_resets_total 2");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn backend_counters_carry_backend_and_scope_labels_and_total() {
        let text = text();
        has(
            &text,
            "balancer_backend_connections_total{backend=\"alpha\",scope=\"eu\"} 7",
        );
        has(
            &text,
            "balancer_backend_connections_total{backend=\"beta\",scope=\"\"} 7",
        );
        has(
            &text,
            "balancer_backend_successes_total{backend=\"alpha\",scope=\"eu\"} 5",
        );
        has(
            &text,
            "balancer_backend_failures_total{backend=\"alpha\",scope=\"eu\",category=\"refused\"} 2",
        );
        has(
            &text,
            "balancer_backend_retries_total{backend=\"alpha\",scope=\"eu\"} 1",
        );
        has(
            &text,
            "balancer_backend_probes_total{backend=\"alpha\",scope=\"eu\",result=\"failed\"} 3",
        );
        has(&text, "# TYPE balancer_backend_bytes counter");
        has(&text, "# UNIT balancer_backend_bytes bytes");
        has(
            &text,
            "balancer_backend_bytes_total{backend=\"alpha\",scope=\"eu\",direction=\"up\"} 1000",
        );
        has(
            &text,
            "balancer_backend_bytes_total{backend=\"alpha\",scope=\"eu\",direction=\"down\"} 9000",
        );
        has(
            &text,
            "balancer_backend_active_connections{backend=\"alpha\",scope=\"eu\"} 2",
        );
    }

    #[test]
    fn the_sockmap_share_and_its_skbs_are_exported_only_where_the_verdict_counted() {
        let text = text();
        has(&text, "# TYPE balancer_backend_sockmap_bytes counter");
        has(&text, "# UNIT balancer_backend_sockmap_bytes bytes");
        has(
            &text,
            "balancer_backend_sockmap_bytes_total{backend=\"alpha\",scope=\"eu\",direction=\"up\"} 800",
        );
        has(
            &text,
            "balancer_backend_sockmap_bytes_total{backend=\"alpha\",scope=\"eu\",direction=\"down\"} 8192",
        );
        has(&text, "# TYPE balancer_backend_sockmap_skbs counter");
        has(
            &text,
            "balancer_backend_sockmap_skbs_total{backend=\"alpha\",scope=\"eu\",direction=\"up\"} 2",
        );
        has(
            &text,
            "balancer_backend_sockmap_skbs_total{backend=\"alpha\",scope=\"eu\",direction=\"down\"} 8",
        );
        has(&text, "# TYPE balancer_backend_splice_advised gauge");
        has(
            &text,
            "balancer_backend_splice_advised{backend=\"alpha\",scope=\"eu\"} 1",
        );
        // beta has no share (splice): no sample rather than a made-up zero.
        assert!(
            !text
                .lines()
                .any(|l| (l.starts_with("balancer_backend_sockmap")
                    || l.starts_with("balancer_backend_splice_advised"))
                    && l.contains("\"beta\"")),
            "{text}"
        );
    }

    #[test]
    fn breaker_state_is_one_hot() {
        let text = text();
        for (state, value) in [("closed", 0), ("open", 0), ("half_open", 1), ("unknown", 0)] {
            has(
                &text,
                &format!(
                    "balancer_backend_breaker_state{{backend=\"alpha\",scope=\"eu\",state=\"{state}\"}} {value}"
                ),
            );
        }
        let ones = text
            .lines()
            .filter(|l| l.starts_with("balancer_backend_breaker_state{backend=\"beta\""))
            .filter(|l| l.ends_with(" 1"))
            .count();
        assert_eq!(ones, 1, "{text}");
    }

    #[test]
    fn success_rate_is_absent_while_unknown() {
        let text = text();
        has(
            &text,
            "balancer_backend_success_rate{backend=\"alpha\",scope=\"eu\"} 0.75",
        );
        assert!(
            !text.contains("balancer_backend_success_rate{backend=\"beta\""),
            "{text}"
        );
    }

    #[test]
    fn latency_is_a_histogram_with_every_bucket() {
        let text = text();
        has(&text, "# TYPE balancer_backend_latency_seconds histogram");
        has(
            &text,
            "balancer_backend_latency_seconds_count{backend=\"alpha\",scope=\"eu\"} 5",
        );
        has(
            &text,
            "balancer_backend_latency_seconds_sum{backend=\"alpha\",scope=\"eu\"} 0.03",
        );
        has(
            &text,
            "balancer_backend_latency_seconds_bucket{le=\"0.0025\",backend=\"alpha\",scope=\"eu\"} 0",
        );
        has(
            &text,
            "balancer_backend_latency_seconds_bucket{le=\"0.005\",backend=\"alpha\",scope=\"eu\"} 4",
        );
        has(
            &text,
            "balancer_backend_latency_seconds_bucket{le=\"5.0\",backend=\"alpha\",scope=\"eu\"} 4",
        );
        has(
            &text,
            "balancer_backend_latency_seconds_bucket{le=\"+Inf\",backend=\"alpha\",scope=\"eu\"} 5",
        );
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("balancer_backend_latency_seconds_bucket{"))
            .filter(|l| l.contains("backend=\"beta\""))
            .count();
        assert_eq!(buckets, LATENCY_BUCKETS_SECONDS.len() + 1, "{text}");
    }

    #[test]
    fn draining_backends_without_connections_are_left_out() {
        let text = text();
        assert!(!text.contains("backend=\"gone\""), "{text}");
        let mut scrape = scrape();
        scrape.snapshot.backends[2].active = 1;
        let text = encode(scrape).expect("encodes");
        assert!(text.contains("backend=\"gone\""), "{text}");
    }
}
