//! Connect+handshake latency of one backend: an exponential moving average
//! for selection and a fixed-bucket histogram for Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest sample in the EMA. 0.2 forgets a slow period in
/// about ten samples (0.8^10 = 0.11) while a single outlier moves the
/// average by only a fifth of its excess.
pub const DEFAULT_EMA_ALPHA: f64 = 0.2;

/// Upper bounds of the histogram buckets in seconds (an implicit `+Inf`
/// bucket follows); `/metrics` exports exactly these as `le` labels.
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The EMA word before the first sample (the maps' "unknown").
pub const NO_SAMPLE: u64 = balancer_common::UNKNOWN;

/// Exponential moving average of latency, lock-free.
#[derive(Debug)]
pub struct LatencyEma {
    alpha: f64,
    // f64 bits of the average in seconds, or NO_SAMPLE.
    bits: AtomicU64,
}

impl LatencyEma {
    /// An empty average; `alpha` is clamped to (0, 1].
    #[must_use]
    pub fn new(alpha: f64) -> Self {
        let alpha = if alpha > 0.0 && alpha <= 1.0 {
            alpha
        } else {
            DEFAULT_EMA_ALPHA
        };
        Self {
            alpha,
            bits: AtomicU64::new(NO_SAMPLE),
        }
    }

    /// Folds one sample in; the first sample becomes the average.
    pub fn record(&self, sample: Duration) {
        self.record_in(&self.bits, sample);
    }

    /// Folds one sample into an average kept in `bits` (the `f64` bits of
    /// seconds, or [`NO_SAMPLE`]), e.g. a word of a shared map.
    pub fn record_in(&self, bits: &AtomicU64, sample: Duration) {
        let sample = sample.as_secs_f64();
        let _ = bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let next = if bits == NO_SAMPLE {
                sample
            } else {
                let old = f64::from_bits(bits);
                old + self.alpha * (sample - old)
            };
            Some(next.to_bits())
        });
    }

    /// The average, `None` before the first sample.
    #[must_use]
    pub fn get(&self) -> Option<Duration> {
        Self::read(self.bits.load(Ordering::Relaxed))
    }

    /// The average an EMA word holds, `None` for [`NO_SAMPLE`].
    #[must_use]
    pub fn read(bits: u64) -> Option<Duration> {
        (bits != NO_SAMPLE).then(|| Duration::from_secs_f64(f64::from_bits(bits).max(0.0)))
    }
}

/// The bucket of [`LATENCY_BUCKETS_SECONDS`] (or `+Inf`, the last) a sample
/// falls in.
#[must_use]
pub fn bucket_index(sample: Duration) -> usize {
    let seconds = sample.as_secs_f64();
    LATENCY_BUCKETS_SECONDS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(LATENCY_BUCKETS_SECONDS.len())
}

/// Latency histogram over [`LATENCY_BUCKETS_SECONDS`].
#[derive(Debug)]
pub struct LatencyHistogram {
    // One per bound plus +Inf; not cumulative (the snapshot makes it so).
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_micros: AtomicU64,
}

/// A cumulative copy of a histogram, shaped for Prometheus.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative count per bound of [`LATENCY_BUCKETS_SECONDS`], then `+Inf`.
    pub cumulative: Vec<u64>,
    /// Sum of all samples.
    pub sum: Duration,
    /// Number of samples (equals the `+Inf` bucket).
    pub count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Counts one sample.
    pub fn record(&self, sample: Duration) {
        self.buckets[bucket_index(sample)].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// A cumulative snapshot.
    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot::from_buckets(&self.buckets, &self.sum_micros)
    }
}

impl HistogramSnapshot {
    /// A cumulative copy of per-bucket counts (the last is `+Inf`) and a
    /// sum in microseconds, e.g. words of a shared map.
    #[must_use]
    pub fn from_buckets(buckets: &[AtomicU64], sum_micros: &AtomicU64) -> Self {
        let mut running = 0;
        let cumulative: Vec<u64> = buckets
            .iter()
            .map(|bucket| {
                running += bucket.load(Ordering::Relaxed);
                running
            })
            .collect();
        Self {
            count: running,
            cumulative,
            sum: Duration::from_micros(sum_micros.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_average_is_unknown() {
        assert_eq!(LatencyEma::new(DEFAULT_EMA_ALPHA).get(), None);
    }

    #[test]
    fn first_sample_becomes_the_average_and_later_ones_move_it_by_alpha() {
        let ema = LatencyEma::new(0.5);
        ema.record(Duration::from_millis(100));
        assert_eq!(ema.get(), Some(Duration::from_millis(100)));
        ema.record(Duration::from_millis(200));
        let got = ema.get().expect("has samples").as_secs_f64();
        assert!((got - 0.150).abs() < 1e-9, "{got}");
    }

    #[test]
    fn histogram_is_cumulative_and_counts_every_sample() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_micros(500));
        histogram.record(Duration::from_millis(30));
        histogram.record(Duration::from_secs(9));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.cumulative[0], 1);
        assert_eq!(snapshot.cumulative[5], 2); // le 0.05
        assert_eq!(snapshot.cumulative[11], 2); // le 5.0
        assert_eq!(snapshot.cumulative[12], 3); // +Inf
        assert_eq!(snapshot.sum, Duration::from_micros(9_030_500));
    }
}
