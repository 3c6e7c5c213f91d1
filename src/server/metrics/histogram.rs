//! A latency histogram with fixed bounds, counted with atomics by one shard and summed
//! over shards for Prometheus.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A latency histogram with Prometheus' cumulative buckets, in seconds.
pub(crate) struct Histogram {
    /// Counts per bucket (not cumulative), the last for anything above every bound.
    counts: [AtomicU64; LATENCY_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// Upper bounds of the delivery-latency buckets, in microseconds: 100 µs to 10 s.
const LATENCY_BOUNDS_MICROS: [u32; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; LATENCY_BOUNDS_MICROS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe_micros(&self, micros: u32) {
        let at = LATENCY_BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(u64::from(micros), Ordering::Relaxed);
    }

    pub(super) fn add_into(&self, snapshot: &mut LatencySnapshot) {
        for (sum, count) in snapshot.counts.iter_mut().zip(&self.counts) {
            *sum += count.load(Ordering::Relaxed);
        }
        snapshot.sum_micros += self.sum_micros.load(Ordering::Relaxed);
    }
}

/// A histogram's counts summed over shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Count per bucket, not cumulative; the last is above every bound.
    pub counts: [u64; LATENCY_BOUNDS_MICROS.len() + 1],
    pub sum_micros: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = write!(
            out,
            "# HELP ringws_{name} {help}.\n# TYPE ringws_{name} histogram\n"
        );
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BOUNDS_MICROS.iter().zip(&self.counts) {
            cumulative += count;
            let seconds = f64::from(*bound) / 1e6;
            let _ = writeln!(out, "ringws_{name}_bucket{{le=\"{seconds}\"}} {cumulative}");
        }
        let _ = writeln!(out, "ringws_{name}_bucket{{le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(out, "ringws_{name}_sum {}", self.sum_micros as f64 / 1e6);
        let _ = writeln!(out, "ringws_{name}_count {}", self.count());
    }
}
