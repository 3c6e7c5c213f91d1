//! The server's counters: each shard writes its own (relaxed atomics, nothing shared on the
//! hot path), and a [`Registry`] sums them on read into a [`Metrics`] snapshot, which renders
//! as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::TlsFailure;

mod histogram;

pub(crate) use histogram::Histogram;
pub use histogram::LatencySnapshot;

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
            pub families: Families,
            /// From publish to the kernel taking the frame, per delivery.
            pub delivery_latency: Histogram,
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
            /// Handshakes by HTTP status (0: any status not listed).
            pub handshakes: Vec<(u16, u64)>,
            /// Closed WebSocket connections by close code (1006: no close frame; 0: any
            /// code not listed).
            pub closes: Vec<(u16, u64)>,
            /// Publish API answers by HTTP status (0: any status not listed).
            pub publish_api: Vec<(u16, u64)>,
            /// Pub/sub delivery latency: from publish to the kernel taking the frame from
            /// the subscriber's queue (deliveries through a per-connection compressor are
            /// not measured).
            pub delivery_latency: LatencySnapshot,
            /// TLS connections that failed (most in their handshake), by why.
            pub tls_failures: Vec<(TlsFailure, u64)>,
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
                let first = &self.shards[0].families;
                let (mut handshakes, mut closes) = (first.handshakes.zeroes(), first.closes.zeroes());
                let mut publish_api = first.publish_api.zeroes();
                let mut delivery_latency = LatencySnapshot::default();
                let mut tls_failures: Vec<(TlsFailure, u64)> =
                    TlsFailure::ALL.iter().map(|&kind| (kind, 0)).collect();
                for counters in self.shards.iter() {
                    counters.families.handshakes.add_into(&mut handshakes);
                    counters.families.closes.add_into(&mut closes);
                    counters.families.publish_api.add_into(&mut publish_api);
                    counters.delivery_latency.add_into(&mut delivery_latency);
                    for (sum, count) in tls_failures.iter_mut().zip(&counters.families.tls_failures) {
                        sum.1 += count.load(Ordering::Relaxed);
                    }
                }
                Metrics {
                    delivery_latency,
                    handshakes,
                    closes,
                    publish_api,
                    tls_failures,
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
    /// Of those, the ones dropped for waiting past `max_delivery_lag` (the rest: past the
    /// queue's byte bound).
    dropped_stale: counter, "pubsub_dropped_stale_total", "Messages dropped for lagging past max-delivery-lag";
    /// Published messages a shard dropped whole, for all its subscribers, because they
    /// waited past `max_delivery_lag` before their fan-out began (the shard is over capacity).
    shed: counter, "pubsub_shed_total", "Published messages a shard behind by more than max-delivery-lag dropped before their fan-out";
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
    /// Bytes received from clients.
    bytes_in: counter, "received_bytes_total", "Bytes received from clients";
    /// Whole messages received from clients.
    messages_in: counter, "received_messages_total", "Messages received from clients";
    /// Messages queued to clients: replies and pub/sub deliveries.
    messages_out: counter, "sent_messages_total", "Messages queued to clients";
    /// Times a connection's send queue passed its bound (paused or closed for it).
    queue_bound_hits: counter, "queue_bound_hits_total", "Times a send queue passed its bound";
    /// Open WebSocket connections (the count `--max-connections` bounds).
    websockets: gauge, "websockets", "Open WebSocket connections";
    /// Upgrades refused with 503 because the server held its maximum of WebSocket connections.
    server_full: counter, "admission_server_full_total", "Upgrades refused with 503 because the server was full";
    /// Upgrades refused with 429 because the client's address held its cap of connections.
    ip_capped: counter, "admission_ip_cap_total", "Upgrades refused with 429 for the address's connection cap";
    /// Upgrades refused with 429 because the client's address passed its handshake rate.
    rate_limited: counter, "admission_rate_limited_total", "Upgrades refused with 429 for the address's handshake rate";
    /// Upgrades refused with 401: no token, or a bad one.
    token_refused: counter, "admission_token_refused_total", "Upgrades refused with 401 for a missing or bad token";
    /// Upgrades refused with 403 because the token does not allow the topic.
    topic_refused: counter, "admission_topic_refused_total", "Upgrades refused with 403 because the token does not allow the topic";
    /// Messages from clients not allowed to publish (each closed with 1008).
    client_publish_refused: counter, "pubsub_client_publish_refused_total", "Messages from clients not allowed to publish";
    /// Messages published through `POST /publish`.
    api_published: counter, "publish_api_messages_total", "Messages published through the publish API";
    /// TLS handshakes completed.
    tls_handshakes: counter, "tls_handshakes_total", "TLS handshakes completed";
    /// TLS handshakes that resumed an earlier session (a ticket) rather than start afresh.
    tls_resumed: counter, "tls_resumed_total", "TLS handshakes that resumed a session";
}

/// Counters with one label: a fixed set of values, the last one standing for any other.
pub(crate) struct Family<const N: usize> {
    values: [u16; N],
    counts: [AtomicU64; N],
}

impl<const N: usize> Family<N> {
    const fn new(values: [u16; N]) -> Self {
        Self {
            values,
            counts: [const { AtomicU64::new(0) }; N],
        }
    }

    pub fn count(&self, value: u16) {
        let at = self
            .values
            .iter()
            .position(|&v| v == value)
            .unwrap_or(N - 1);
        self.counts[at].fetch_add(1, Ordering::Relaxed);
    }

    fn add_into(&self, sums: &mut [(u16, u64)]) {
        for (sum, count) in sums.iter_mut().zip(&self.counts) {
            sum.1 += count.load(Ordering::Relaxed);
        }
    }

    fn zeroes(&self) -> Vec<(u16, u64)> {
        self.values.iter().map(|&v| (v, 0)).collect()
    }
}

/// HTTP statuses a handshake can end with; 0 stands for any other.
const HANDSHAKE_STATUSES: [u16; 13] = [
    101, 400, 401, 403, 404, 405, 408, 426, 429, 431, 500, 503, 0,
];
/// Close codes a connection can end with (1006: without a close frame); 0 for any other.
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1013, 0,
];

/// HTTP statuses the publish API answers with; 0 stands for any other.
const PUBLISH_API_STATUSES: [u16; 13] = [
    200, 400, 401, 403, 404, 405, 408, 411, 413, 415, 417, 503, 0,
];

/// The labelled counters of one shard.
pub(crate) struct Families {
    pub handshakes: Family<13>,
    pub closes: Family<12>,
    pub publish_api: Family<13>,
    /// By [`TlsFailure::ALL`]'s order.
    tls_failures: [AtomicU64; TlsFailure::ALL.len()],
}

impl Default for Families {
    fn default() -> Self {
        Self {
            handshakes: Family::new(HANDSHAKE_STATUSES),
            closes: Family::new(CLOSE_CODES),
            publish_api: Family::new(PUBLISH_API_STATUSES),
            tls_failures: Default::default(),
        }
    }
}

impl Families {
    pub fn tls_failed(&self, failure: TlsFailure) {
        let at = TlsFailure::ALL
            .iter()
            .position(|&kind| kind == failure)
            .unwrap_or(0);
        self.tls_failures[at].fetch_add(1, Ordering::Relaxed);
    }
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

    pub fn dropped_stale(&self, messages: usize) {
        Self::add(&self.dropped_stale, messages as u64);
    }

    pub fn shed(&self) {
        Self::add(&self.shed, 1);
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

    pub fn received(&self, bytes: usize) {
        Self::add(&self.bytes_in, bytes as u64);
    }

    pub fn message_in(&self) {
        Self::add(&self.messages_in, 1);
    }

    pub fn message_out(&self) {
        Self::add(&self.messages_out, 1);
    }

    pub fn queue_bound_hit(&self) {
        Self::add(&self.queue_bound_hits, 1);
    }

    pub fn websocket_opened(&self) {
        Self::add(&self.websockets, 1);
    }

    pub fn websocket_closed(&self) {
        Self::sub(&self.websockets, 1);
    }

    pub fn server_full(&self) {
        Self::add(&self.server_full, 1);
    }

    pub fn ip_capped(&self) {
        Self::add(&self.ip_capped, 1);
    }

    pub fn rate_limited(&self) {
        Self::add(&self.rate_limited, 1);
    }

    pub fn token_refused(&self) {
        Self::add(&self.token_refused, 1);
    }

    pub fn topic_refused(&self) {
        Self::add(&self.topic_refused, 1);
    }

    pub fn client_publish_refused(&self) {
        Self::add(&self.client_publish_refused, 1);
    }

    pub fn api_published(&self, messages: usize) {
        Self::add(&self.api_published, messages as u64);
    }

    pub fn tls_handshake(&self, resumed: bool) {
        Self::add(&self.tls_handshakes, 1);
        if resumed {
            Self::add(&self.tls_resumed, 1);
        }
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
        type Labelled<'a> = (&'a str, &'a str, &'a str, &'a [(u16, u64)]);
        let families: [Labelled<'_>; 3] = [
            (
                "handshakes_total",
                "Handshakes by HTTP status (0: other)",
                "status",
                &self.handshakes,
            ),
            (
                "closes_total",
                "Closed WebSocket connections by close code (1006: no close frame; 0: other)",
                "code",
                &self.closes,
            ),
            (
                "publish_api_responses_total",
                "Publish API answers by HTTP status (0: other)",
                "status",
                &self.publish_api,
            ),
        ];
        for (name, help, label, values) in families {
            let _ = write!(
                out,
                "# HELP ringws_{name} {help}.\n# TYPE ringws_{name} counter\n"
            );
            for (value, count) in values {
                let _ = writeln!(out, "ringws_{name}{{{label}=\"{value}\"}} {count}");
            }
        }
        self.delivery_latency.render(
            &mut out,
            "delivery_latency_seconds",
            "Pub/sub delivery latency, from publish to the kernel taking the frame",
        );
        let _ = write!(
            out,
            "# HELP ringws_tls_failures_total TLS connections that failed, by why (most in their handshake).\n\
             # TYPE ringws_tls_failures_total counter\n"
        );
        for (kind, count) in &self.tls_failures {
            let _ = writeln!(out, "ringws_tls_failures_total{{kind=\"{kind}\"}} {count}");
        }
        // Counted by the runtime for the whole process.
        let kernel = crate::runtime::tls::kernel_tls_counts();
        let _ = write!(
            out,
            "# HELP ringws_tls_kernel_offloaded_total TLS connections whose records the kernel took (kernel TLS).\n\
             # TYPE ringws_tls_kernel_offloaded_total counter\n\
             ringws_tls_kernel_offloaded_total {}\n\
             # HELP ringws_tls_kernel_fallbacks_total TLS connections kernel TLS was tried on that stayed in user space (or closed).\n\
             # TYPE ringws_tls_kernel_fallbacks_total counter\n\
             ringws_tls_kernel_fallbacks_total {}\n\
             # HELP ringws_tls_kernel_key_updates_total TLS 1.3 key updates of connections kernel TLS carries: the peer's (received) and ours (sent).\n\
             # TYPE ringws_tls_kernel_key_updates_total counter\n\
             ringws_tls_kernel_key_updates_total{{direction=\"received\"}} {}\n\
             ringws_tls_kernel_key_updates_total{{direction=\"sent\"}} {}\n",
            kernel.offloaded,
            kernel.fallbacks,
            kernel.key_updates_received,
            kernel.key_updates_sent
        );
        let _ = write!(
            out,
            "# HELP ringws_receives_ran_dry_total Receives that found no receive buffer posted and were started again (steady growth: raise --recv-buffers).\n\
             # TYPE ringws_receives_ran_dry_total counter\n\
             ringws_receives_ran_dry_total {}\n",
            crate::runtime::receives_ran_dry()
        );
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
        assert!(text.contains("ringws_tls_failures_total{kind=\"not_tls\"} 0\n"));
    }

    #[test]
    fn latencies_land_in_cumulative_buckets() {
        let registry = Registry::new(2);
        registry.shard(0).delivery_latency.observe_micros(80);
        registry.shard(1).delivery_latency.observe_micros(3_000);
        registry
            .shard(1)
            .delivery_latency
            .observe_micros(20_000_000);
        let metrics = registry.snapshot(0);
        assert_eq!(metrics.delivery_latency.count(), 3);
        let text = metrics.render();
        assert!(text.contains("ringws_delivery_latency_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("ringws_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("ringws_delivery_latency_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("ringws_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("ringws_delivery_latency_seconds_count 3\n"));
        assert!(text.contains("ringws_delivery_latency_seconds_sum 20.00308\n"));
    }
}
