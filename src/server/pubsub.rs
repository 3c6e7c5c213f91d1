//! Pub/sub: topics whose subscribers live on any shard, and messages framed once for all.
//!
//! A published message becomes one unmasked frame in one [`Bytes`]; every subscriber's send
//! queue gets a reference to it, not a copy. For subscribers that negotiated
//! permessage-deflate without server context takeover, the compressed frame is made once per
//! window size (by whichever shard needs it first) and shared the same way.
//!
//! Each shard keeps its own topic table. A shared [`Directory`] records only which shards
//! have subscribers to a topic (one bit per shard); it is written when a topic appears on or
//! leaves a shard, and read (briefly, under a read lock) once per publish to wake only the
//! shards that need the message. No lock is held while a connection is touched.
//!
//! Order: messages from one publisher (one connection, or one thread calling
//! [`Publisher::publish`]) reach each subscriber in the order they were published. Messages
//! of different publishers may interleave differently at different subscribers. A
//! subscription takes effect for messages published after it returns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::{Bytes, BytesMut};
use indexmap::IndexSet;

use crate::proto::OpCode;
use crate::proto::deflate::Direction;
use crate::proto::frame::write_frame;
use crate::runtime::Remote;

use super::app::Message;
use super::core::SharedCompressors;
use super::transport::ConnId;

/// Messages between shards.
pub enum ShardMessage {
    Publish(Arc<Published>),
}

/// A message on its way to a topic's subscribers.
pub struct Published {
    topic: Arc<str>,
    opcode: OpCode,
    /// The whole frame, uncompressed, as every subscriber without deflate receives it.
    frame: Bytes,
    header_len: usize,
    /// The publishing connection, which does not receive its own message.
    origin: Option<(usize, ConnId)>,
    /// Compressed frames without context takeover, by window bits 8..=15.
    compressed: [OnceLock<Bytes>; 8],
}

impl Published {
    fn new(topic: Arc<str>, message: Message<'_>, origin: Option<(usize, ConnId)>) -> Self {
        let (opcode, payload) = match message {
            Message::Text(text) => (OpCode::Text, text.as_bytes()),
            Message::Binary(data) => (OpCode::Binary, data),
        };
        let mut frame = BytesMut::with_capacity(payload.len() + 10);
        write_frame(&mut frame, opcode, true, false, payload, None);
        Self {
            topic,
            opcode,
            header_len: frame.len() - payload.len(),
            frame: frame.freeze(),
            origin,
            compressed: Default::default(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.frame[self.header_len..]
    }

    /// Whether the connection `conn` of shard `shard` published this message.
    pub(crate) fn is_from(&self, shard: usize, conn: ConnId) -> bool {
        self.origin == Some((shard, conn))
    }

    /// The frame for a receiver compressing in `direction` (`None`: no deflate), shared by
    /// every receiver of the same window size. Only for directions without context takeover.
    pub(crate) fn frame_for(
        &self,
        direction: Option<Direction>,
        compressors: &mut SharedCompressors,
        counters: &Counters,
    ) -> Bytes {
        let slot = direction.and_then(|d| {
            let index = usize::from(d.window_bits.checked_sub(8)?);
            Some((d, self.compressed.get(index)?))
        });
        let Some((direction, slot)) = slot else {
            return self.frame.clone();
        };
        slot.get_or_init(|| {
            let payload = self.payload();
            match compressors.get(direction) {
                Some(compressor) if payload.len() >= compressor.min_size() => {
                    Counters::add(&counters.compressed, 1);
                    let mut out = BytesMut::with_capacity(payload.len() / 2 + 16);
                    compressor.write_frame(self.opcode, payload, None, &mut out);
                    out.freeze()
                }
                _ => self.frame.clone(),
            }
        })
        .clone()
    }

    pub(crate) fn opcode(&self) -> OpCode {
        self.opcode
    }
}

/// Which shards have subscribers to each topic: one bit per shard (at most 64 shards).
#[derive(Default)]
struct Directory {
    topics: RwLock<HashMap<Arc<str>, u64>>,
}

impl Directory {
    fn shards(&self, topic: &str) -> u64 {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(topic).copied().unwrap_or(0)
    }

    fn set(&self, topic: &Arc<str>, shard: usize, subscribed: bool) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let bit = 1u64 << shard;
        if subscribed {
            *topics.entry(topic.clone()).or_insert(0) |= bit;
        } else if let Some(mask) = topics.get_mut(topic) {
            *mask &= !bit;
            if *mask == 0 {
                topics.remove(topic);
            }
        }
    }

    fn len(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Counters one shard writes and anyone reads; [`Hub::metrics`] sums them.
#[derive(Default)]
pub(crate) struct Counters {
    connections: AtomicU64,
    subscriptions: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    slow_closed: AtomicU64,
    /// Published messages compressed for a sharing group (once per window size).
    compressed: AtomicU64,
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

    pub fn delivered(&self) {
        Self::add(&self.delivered, 1);
    }

    pub fn dropped(&self, messages: usize) {
        Self::add(&self.dropped, messages as u64);
    }

    pub fn slow_closed(&self) {
        Self::add(&self.slow_closed, 1);
    }
}

/// What every shard and every [`Publisher`] shares: the directory and the counters.
pub(crate) struct Hub {
    directory: Directory,
    /// One per shard, then one for publishers outside the shards.
    counters: Box<[Counters]>,
}

impl Hub {
    pub fn new(shards: usize) -> Self {
        Self {
            directory: Directory::default(),
            counters: (0..=shards).map(|_| Counters::default()).collect(),
        }
    }

    pub fn counters(&self, shard: usize) -> &Counters {
        &self.counters[shard]
    }

    fn outside(&self) -> &Counters {
        &self.counters[self.counters.len() - 1]
    }

    /// Frames `message` and queues it to every shard with subscribers, except `local`, whose
    /// share comes back for the caller to deliver itself. Counts the publish on `counters`.
    fn route(
        &self,
        remotes: &[Remote<ShardMessage>],
        topic: &str,
        message: Message<'_>,
        origin: Option<(usize, ConnId)>,
        local: Option<usize>,
        counters: &Counters,
    ) -> Route {
        let mut shards = self.directory.shards(topic);
        if shards == 0 {
            return Route::default();
        }
        Counters::add(&counters.published, 1);
        let published = Arc::new(Published::new(topic.into(), message, origin));
        let local_bit = local.map_or(0, |shard| 1u64 << shard);
        let here = shards & local_bit != 0;
        shards &= !local_bit;
        while shards != 0 {
            let shard = shards.trailing_zeros() as usize;
            shards &= shards - 1;
            if let Some(remote) = remotes.get(shard) {
                remote.send(ShardMessage::Publish(published.clone()));
            }
        }
        Route {
            reached: true,
            local: here.then_some(published),
        }
    }

    /// Every shard's counters summed, with the directory's topic count.
    pub fn metrics(&self) -> Metrics {
        let sum = |field: fn(&Counters) -> &AtomicU64| {
            self.counters
                .iter()
                .map(|c| field(c).load(Ordering::Relaxed))
                .sum()
        };
        let shards = self.counters.len() - 1;
        let per_shard = self.counters[..shards]
            .iter()
            .map(|c| ShardMetrics {
                connections: c.connections.load(Ordering::Relaxed),
                subscriptions: c.subscriptions.load(Ordering::Relaxed),
            })
            .collect();
        Metrics {
            per_shard,
            connections: sum(|c| &c.connections),
            topics: self.directory.len() as u64,
            subscriptions: sum(|c| &c.subscriptions),
            published: sum(|c| &c.published),
            delivered: sum(|c| &c.delivered),
            dropped: sum(|c| &c.dropped),
            slow_closed: sum(|c| &c.slow_closed),
            compressed: sum(|c| &c.compressed),
        }
    }
}

/// Where [`Hub::route`] sent a message.
#[derive(Default)]
struct Route {
    /// Some shard has subscribers.
    reached: bool,
    /// The calling shard's own share.
    local: Option<Arc<Published>>,
}

/// A snapshot of the server's counters, summed over shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// The gauges of each shard, by shard index.
    pub per_shard: Vec<ShardMetrics>,
    /// Connections held, handshaking and closing ones included.
    pub connections: u64,
    /// Topics with at least one subscriber.
    pub topics: u64,
    /// (connection, topic) pairs.
    pub subscriptions: u64,
    /// Publish calls that found at least one subscribed shard.
    pub published: u64,
    /// Messages queued to subscribers.
    pub delivered: u64,
    /// Messages dropped unsent because their subscriber read too slowly.
    pub dropped: u64,
    /// Subscribers closed with 1008 for reading too slowly.
    pub slow_closed: u64,
    /// Compressions of published messages shared by every subscriber of one window size
    /// (connections with their own compression context are not counted).
    pub compressed: u64,
}

/// One shard's gauges, which show how connections spread over shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardMetrics {
    pub connections: u64,
    pub subscriptions: u64,
}

impl Metrics {
    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, u64); 8] = [
            ("connections", "gauge", "Connections held", self.connections),
            (
                "pubsub_topics",
                "gauge",
                "Topics with subscribers",
                self.topics,
            ),
            (
                "pubsub_subscriptions",
                "gauge",
                "Connection-topic subscriptions",
                self.subscriptions,
            ),
            (
                "pubsub_published_total",
                "counter",
                "Messages published",
                self.published,
            ),
            (
                "pubsub_delivered_total",
                "counter",
                "Messages queued to subscribers",
                self.delivered,
            ),
            (
                "pubsub_dropped_total",
                "counter",
                "Messages dropped for slow subscribers",
                self.dropped,
            ),
            (
                "pubsub_slow_closed_total",
                "counter",
                "Subscribers closed for reading too slowly",
                self.slow_closed,
            ),
            (
                "pubsub_shared_compressions_total",
                "counter",
                "Published messages compressed once for a window size",
                self.compressed,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP ringws_{name} {help}.\n# TYPE ringws_{name} {kind}\nringws_{name} {value}\n"
            ));
        }
        for (name, help, field) in [
            ("shard_connections", "Connections held by each shard", 0),
            ("shard_subscriptions", "Subscriptions on each shard", 1),
        ] {
            out.push_str(&format!(
                "# HELP ringws_{name} {help}.\n# TYPE ringws_{name} gauge\n"
            ));
            for (shard, m) in self.per_shard.iter().enumerate() {
                let value = [m.connections, m.subscriptions][field];
                out.push_str(&format!("ringws_{name}{{shard=\"{shard}\"}} {value}\n"));
            }
        }
        out
    }
}

/// Publishes from any thread, outside the server's shards. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<Hub>,
    remotes: Vec<Remote<ShardMessage>>,
}

impl Publisher {
    pub(crate) fn new(hub: Arc<Hub>, remotes: Vec<Remote<ShardMessage>>) -> Self {
        Self { hub, remotes }
    }

    /// Sends `message` to every subscriber of `topic`; returns whether there was any.
    pub fn publish(&self, topic: &str, message: Message<'_>) -> bool {
        let hub = &self.hub;
        // Every shard is remote from here, so no share comes back to deliver.
        hub.route(&self.remotes, topic, message, None, None, hub.outside())
            .reached
    }

    /// The server's counters, summed over shards.
    pub fn metrics(&self) -> Metrics {
        self.hub.metrics()
    }
}

/// One shard's topics and subscribers.
pub(crate) struct ShardTopics {
    shard: usize,
    hub: Arc<Hub>,
    remotes: Vec<Remote<ShardMessage>>,
    topics: HashMap<Arc<str>, IndexSet<ConnId>>,
    by_conn: HashMap<ConnId, Vec<Arc<str>>>,
    /// Messages published on this shard, for this shard's subscribers.
    pending: VecDeque<Arc<Published>>,
}

impl ShardTopics {
    pub fn new(shard: usize, hub: Arc<Hub>, remotes: Vec<Remote<ShardMessage>>) -> Self {
        Self {
            shard,
            hub,
            remotes,
            topics: HashMap::new(),
            by_conn: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn counters(&self) -> &Counters {
        self.hub.counters(self.shard)
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Subscribes `conn` to `topic`; returns false when it already was.
    pub fn subscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        let topic: Arc<str> = match self.topics.get_key_value(topic) {
            Some((known, _)) => known.clone(),
            None => topic.into(),
        };
        let subscribers = self.topics.entry(topic.clone()).or_default();
        if !subscribers.insert(conn) {
            return false;
        }
        if subscribers.len() == 1 {
            self.hub.directory.set(&topic, self.shard, true);
        }
        self.by_conn.entry(conn).or_default().push(topic);
        Counters::add(&self.counters().subscriptions, 1);
        true
    }

    /// Unsubscribes `conn` from `topic`; returns false when it was not subscribed.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        let Some(topics) = self.by_conn.get_mut(&conn) else {
            return false;
        };
        let Some(at) = topics.iter().position(|t| &**t == topic) else {
            return false;
        };
        let topic = topics.swap_remove(at);
        if topics.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.leave(conn, &topic);
        true
    }

    /// Removes a closed connection from every topic it subscribed to.
    pub fn remove(&mut self, conn: ConnId) {
        for topic in self.by_conn.remove(&conn).unwrap_or_default() {
            self.leave(conn, &topic);
        }
    }

    fn leave(&mut self, conn: ConnId, topic: &Arc<str>) {
        let Some(subscribers) = self.topics.get_mut(topic) else {
            return;
        };
        if !subscribers.swap_remove(&conn) {
            return;
        }
        let now_empty = subscribers.is_empty();
        Counters::sub(&self.counters().subscriptions, 1);
        if now_empty {
            self.topics.remove(topic);
            self.hub.directory.set(topic, self.shard, false);
        }
    }

    /// Topics `conn` subscribes to.
    pub fn topics_of(&self, conn: ConnId) -> impl Iterator<Item = &str> {
        self.by_conn.get(&conn).into_iter().flatten().map(|t| &**t)
    }

    /// Publishes from a connection of this shard: other shards get the message through
    /// their mailboxes now, this shard's subscribers when the current callback returns.
    pub fn publish(&mut self, topic: &str, message: Message<'_>, origin: Option<ConnId>) -> bool {
        let origin = origin.map(|conn| (self.shard, conn));
        let hub = &self.hub;
        let counters = hub.counters(self.shard);
        let route = hub.route(
            &self.remotes,
            topic,
            message,
            origin,
            Some(self.shard),
            counters,
        );
        self.pending.extend(route.local);
        route.reached
    }

    /// The next message published on this shard and not yet delivered here.
    pub fn next_pending(&mut self) -> Option<Arc<Published>> {
        self.pending.pop_front()
    }

    /// Lends out `topic`'s subscribers for a delivery; give them back with
    /// [`ShardTopics::return_subscribers`]. Delivering never changes subscriptions.
    pub fn take_subscribers(&mut self, topic: &str) -> Option<IndexSet<ConnId>> {
        self.topics.get_mut(topic).map(std::mem::take)
    }

    pub fn return_subscribers(&mut self, topic: &str, subscribers: IndexSet<ConnId>) {
        if let Some(slot) = self.topics.get_mut(topic) {
            *slot = subscribers;
        }
    }
}
