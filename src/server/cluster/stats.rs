//! The link's counters and its state, for `/metrics` and `/readyz`.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Written by the link thread (and by shards for what they could not queue), read by any
/// shard answering `/metrics`.
pub(crate) struct Stats {
    up: AtomicBool,
    /// When the link last went up or down.
    since: Mutex<Instant>,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub publish_failures: AtomicU64,
    pub subscriptions: AtomicU64,
    pub reconnects: AtomicU64,
    pub own_skipped: AtomicU64,
    pub malformed: AtomicU64,
    pub inbound_dropped: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(false),
            since: Mutex::new(Instant::now()),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            own_skipped: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            inbound_dropped: AtomicU64::new(0),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Stats {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the link going up or down; returns whether it changed.
    pub fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Ordering::Relaxed) != up;
        if changed {
            *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        changed
    }

    /// How long the link has been in its current state.
    pub fn for_how_long(&self) -> Duration {
        self.since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// The Prometheus rows of the link; `buffered` is what waits for the broker.
    pub fn render(&self, buffered: usize, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 10] = [
            (
                "cluster_link_up",
                "gauge",
                "Whether the link to the cluster's broker is up (1) or down (0)",
                u64::from(self.is_up()),
            ),
            (
                "cluster_messages_in_total",
                "counter",
                "Messages from the broker delivered to this node's subscribers",
                load(&self.messages_in),
            ),
            (
                "cluster_messages_out_total",
                "counter",
                "Messages published on this node handed to the broker",
                load(&self.messages_out),
            ),
            (
                "cluster_publish_failures_total",
                "counter",
                "Messages that could not be sent to the broker (buffer full while it was slow or down, or refused)",
                load(&self.publish_failures),
            ),
            (
                "cluster_subscriptions",
                "gauge",
                "Broker subscriptions held by this node (one per topic with local subscribers)",
                load(&self.subscriptions),
            ),
            (
                "cluster_reconnects_total",
                "counter",
                "Times the link came back after losing the broker",
                load(&self.reconnects),
            ),
            (
                "cluster_buffered_bytes",
                "gauge",
                "Bytes of messages waiting to be sent to the broker",
                buffered as u64,
            ),
            (
                "cluster_own_skipped_total",
                "counter",
                "Messages from the broker that this node had published itself, not delivered again",
                load(&self.own_skipped),
            ),
            (
                "cluster_malformed_total",
                "counter",
                "Messages from the broker that could not be read (bad envelope, not UTF-8, too large)",
                load(&self.malformed),
            ),
            (
                "cluster_inbound_dropped_total",
                "counter",
                "Messages from the broker dropped because this node fell behind reading them",
                load(&self.inbound_dropped),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = write!(
                out,
                "# HELP ringws_{name} {help}.\n# TYPE ringws_{name} {kind}\nringws_{name} {value}\n"
            );
        }
    }
}

/// Reconnect delays: doubling from `first` up to `max`, each drawn from its upper half so
/// that nodes that lost the broker together do not come back in the same instant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const DEFAULT: Self = Self {
        first: Duration::from_millis(50),
        max: Duration::from_secs(2),
    };

    /// The delay before attempt `attempt` (0 for the first retry); `jitter` in 0..1.
    pub fn delay(&self, attempt: usize, jitter: f64) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        doubled.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay`] with fresh jitter.
    pub fn next(&self, attempt: usize) -> Duration {
        let mut bytes = [0u8; 4];
        let jitter = match getrandom::fill(&mut bytes) {
            Ok(()) => f64::from(u32::from_ne_bytes(bytes)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        self.delay(attempt, jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter_below_it() {
        let b = Backoff::DEFAULT;
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(50));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(25));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(usize::MAX, 0.0), Duration::from_secs(1));
        assert!(b.next(5) <= b.max);
    }

    #[test]
    fn the_link_renders_with_the_name_the_status_page_reads() {
        let stats = Stats::default();
        assert!(stats.set_up(true));
        assert!(!stats.set_up(true));
        let mut text = String::new();
        stats.render(42, &mut text);
        assert!(text.contains("# TYPE ringws_cluster_link_up gauge\nringws_cluster_link_up 1\n"));
        assert!(text.contains("ringws_cluster_buffered_bytes 42\n"));
    }
}
