//! The server's counters: each shard writes its own (relaxed atomics, nothing shared on the
//! hot path), and a [`Registry`] sums them on read into a [`Metrics`] snapshot, which renders
//! as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Declares the counters once: the atomics a shard writes, the snapshot's fields, and the
/// Prometheus rows, so that a counter cannot be added to one and forgotten in another.
macro_rules! counters {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $kind:ident, $name:literal, $help:literal;
    )*) => {
        /// Counters one shard writes and anyone reads.
        #[derive(Default)]
        pub(crate) struct Counters {
            $($field: AtomicU64,)*
        }

        /// A snapshot of the server's counters, summed over shards.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Metrics {
            /// The gauges of each shard, by shard index.
            pub per_shard: Vec<ShardMetrics>,
            /// Topics with at least one subscriber.
            pub topics: u64,
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        impl Metrics {
            fn rows(&self) -> impl Iterator<Item = (&'static str, &'static str, &'static str, u64)> {
                let topics = ("pubsub_topics", "gauge", "Topics with subscribers", self.topics);
                [topics, $((
                    $name,
                    stringify!($kind),
                    $help,
                    self.$field,
                ),)*]
                .into_iter()
            }
        }

        impl Registry {
            /// Every shard's counters summed; `topics` comes from the topic directory.
            pub fn snapshot(&self, topics: u64) -> Metrics {
                let sum = |field: fn(&Counters) -> &AtomicU64| -> u64 {
                    self.shards.iter().map(|c| field(c).load(Ordering::Relaxed)).sum()
                };
                let shards = self.shards.len() - 1;
                Metrics {
                    per_shard: self.shards[..shards]
                        .iter()
                        .map(|c| ShardMetrics {
                            connections: c.connections.load(Ordering::Relaxed),
                            subscriptions: c.subscriptions.load(Ordering::Relaxed),
                        })
                        .collect(),
                    topics,
                    $($field: sum(|c| &c.$field),)*
                }
            }
        }
    };
}

counters! {
    /// Connections held, handshaking and closing ones included.
    connections: gauge, "connections", "Connections held";
    /// (connection, topic) pairs.
    subscriptions: gauge, "pubsub_subscriptions", "Connection-topic subscriptions";
    /// Publish calls that found at least one subscribed shard.
    published: counter, "pubsub_published_total", "Messages published";
    /// Messages queued to subscribers.
    delivered: counter, "pubsub_delivered_total", "Messages queued to subscribers";
    /// Messages dropped unsent because their subscriber read too slowly.
    dropped: counter, "pubsub_dropped_total", "Messages dropped for slow subscribers";
    /// Subscribers closed with 1008 for reading too slowly.
    slow_closed: counter, "pubsub_slow_closed_total", "Subscribers closed for reading too slowly";
    /// Compressions of published messages shared by every subscriber of one window size
    /// (connections with their own compression context are not counted).
    compressed: counter, "pubsub_shared_compressions_total", "Published messages compressed once for a window size";
    /// Publishes a shard could not take because its queue from other shards was full:
    /// that shard's subscribers missed the message.
    backlog_refused: counter, "pubsub_backlog_refused_total", "Messages a shard behind on its queue could not take";
    /// Connections closed with 1009 because the shard's memory for incomplete messages was
    /// spent and they held the most.
    incomplete_closed: counter, "incomplete_budget_closed_total", "Connections closed for holding the most of an exhausted incomplete-message budget";
    /// Connections closed because bytes queued for them made no progress for the idle timeout.
    stalled_closed: counter, "send_stalled_closed_total", "Connections closed because their peer stopped reading";
    /// Connections closed with 1001 because the server's ping got no pong in time.
    ping_timeouts: counter, "ping_timeout_closed_total", "Connections closed for not answering a ping";
}

/// One shard's gauges, which show how connections spread over shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardMetrics {
    pub connections: u64,
    pub subscriptions: u64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        Self::add(&self.connections, 1);
    }

    pub fn connection_closed(&self) {
        Self::sub(&self.connections, 1);
    }

    pub fn subscribed(&self) {
        Self::add(&self.subscriptions, 1);
    }

    pub fn unsubscribed(&self) {
        Self::sub(&self.subscriptions, 1);
    }

    pub fn published(&self) {
        Self::add(&self.published, 1);
    }

    pub fn delivered(&self) {
        Self::add(&self.delivered, 1);
    }

    pub fn dropped(&self, messages: usize) {
        Self::add(&self.dropped, messages as u64);
    }

    pub fn slow_closed(&self) {
        Self::add(&self.slow_closed, 1);
    }

    pub fn shared_compression(&self) {
        Self::add(&self.compressed, 1);
    }

    pub fn backlog_refused(&self) {
        Self::add(&self.backlog_refused, 1);
    }

    pub fn incomplete_closed(&self) {
        Self::add(&self.incomplete_closed, 1);
    }

    pub fn stalled_closed(&self) {
        Self::add(&self.stalled_closed, 1);
    }

    pub fn ping_timeout(&self) {
        Self::add(&self.ping_timeouts, 1);
    }
}

/// Every shard's counters, and one set for publishers outside the shards.
pub(crate) struct Registry {
    shards: Box<[Counters]>,
}

impl Registry {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..=shards).map(|_| Counters::default()).collect(),
        }
    }

    pub fn shard(&self, shard: usize) -> &Counters {
        &self.shards[shard]
    }

    /// The counters of publishers outside the shards.
    pub fn outside(&self) -> &Counters {
        &self.shards[self.shards.len() - 1]
    }
}

impl Metrics {
    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in self.rows() {
            let _ = write!(
                out,
                "# HELP ringws_{name} {help}.\n# TYPE ringws_{name} {kind}\nringws_{name} {value}\n"
            );
        }
        type Gauge = fn(&ShardMetrics) -> u64;
        let per_shard: [(&str, &str, Gauge); 2] = [
            ("shard_connections", "Connections held by each shard", |m| {
                m.connections
            }),
            ("shard_subscriptions", "Subscriptions on each shard", |m| {
                m.subscriptions
            }),
        ];
        for (name, help, value) in per_shard {
            let _ = write!(
                out,
                "# HELP ringws_{name} {help}.\n# TYPE ringws_{name} gauge\n"
            );
            for (shard, m) in self.per_shard.iter().enumerate() {
                let _ = writeln!(out, "ringws_{name}{{shard=\"{shard}\"}} {}", value(m));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_render_as_prometheus_text() {
        let registry = Registry::new(2);
        registry.shard(0).connection_opened();
        registry.shard(1).connection_opened();
        registry.shard(1).subscribed();
        registry.outside().published();
        let metrics = registry.snapshot(1);
        assert_eq!(metrics.connections, 2);
        assert_eq!(metrics.published, 1);
        assert_eq!(metrics.per_shard.len(), 2);
        let text = metrics.render();
        assert!(text.contains("# TYPE ringws_connections gauge\nringws_connections 2\n"));
        assert!(text.contains("ringws_pubsub_topics 1\n"));
        assert!(text.contains("ringws_shard_subscriptions{shard=\"1\"} 1\n"));
        assert!(text.contains("# TYPE ringws_pubsub_published_total counter\n"));
    }
}
