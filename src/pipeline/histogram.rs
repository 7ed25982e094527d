//! A latency histogram with fixed buckets, rendered as a Prometheus histogram in seconds.
//!
//! Observations are microseconds in lock-free counters (workers observe concurrently); the
//! bucket bounds are Prometheus's usual spread from 100 µs to 10 s.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in microseconds (the last bucket, `+Inf`, is implicit).
const BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Counts of observations per bucket (not cumulative here; rendering accumulates), their sum,
/// and the largest one. Plain atomics, so that the metrics that hold histograms are not also
/// needed by them.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, latency_us: u64) {
        let bucket = BOUNDS_US.partition_point(|bound| *bound < latency_us);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(latency_us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(latency_us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }

    /// Appends the Prometheus text of this histogram as `name` (a name ending in `_seconds`).
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bucket, bound) in self
            .buckets
            .iter()
            .zip(BOUNDS_US.iter().map(Some).chain([None]))
        {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = bound.map_or_else(|| "+Inf".to_owned(), |us| seconds(*us));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}", seconds(self.sum_us()));
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

/// Microseconds as decimal seconds, exactly (`2500` is `0.0025`).
fn seconds(us: u64) -> String {
    let (whole, fraction) = (us / 1_000_000, us % 1_000_000);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: each observation lands in the first bucket whose bound is at least it, buckets
    /// render cumulatively in seconds, and sum, count and max follow. Method: observations on
    /// and either side of bounds, including beyond the last.
    #[test]
    fn observations_fill_cumulative_buckets_in_seconds() {
        let histogram = Histogram::default();
        for us in [0, 100, 101, 2_500, 10_000_000, 10_000_001] {
            histogram.observe(us);
        }
        let mut text = String::new();
        histogram.render(&mut text, "x_seconds", "help");
        for line in [
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{le=\"0.0001\"} 2\n",
            "x_seconds_bucket{le=\"0.00025\"} 3\n",
            "x_seconds_bucket{le=\"0.001\"} 3\n",
            "x_seconds_bucket{le=\"0.0025\"} 4\n",
            "x_seconds_bucket{le=\"2.5\"} 4\n",
            "x_seconds_bucket{le=\"10\"} 5\n",
            "x_seconds_bucket{le=\"+Inf\"} 6\n",
            "x_seconds_sum 20.002702\n",
            "x_seconds_count 6\n",
        ] {
            assert!(text.contains(line), "`{line}` not in:\n{text}");
        }
        assert_eq!(histogram.max_us(), 10_000_001);
        assert_eq!(text.matches("_bucket").count(), BOUNDS_US.len() + 1);
    }
}
