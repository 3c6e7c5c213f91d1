//! Topics shared by many nodes through a broker (NATS, Redis pub/sub, or Redis Cluster's
//! sharded pub/sub), with each node's own fan-out kept: a message crosses the broker once
//! per node, and each node frames it once for all of its subscribers.
//!
//! One broker subscription per topic per node: the node subscribes when a topic gets its
//! first subscriber on any shard and unsubscribes a delay after its last one leaves
//! (`interest`). A publish on a node goes to that node's subscribers directly and, through
//! a bounded queue (`outbox`), to the broker once; a message from the broker goes to the
//! node's subscribers and never back to the broker. Every message carries the node that
//! published it (`wire`), so a node skips its own messages if the broker echoes them.
//!
//! The link (`link`) runs on a thread of its own with its own tokio runtime: shards never
//! wait on it. Shards hand it messages through the outbox; it hands broker messages to the
//! shards through their mailboxes, as a [`Publisher`](super::Publisher) does.
//!
//! Order: one publisher's messages to one topic reach every subscriber on every node in
//! publish order: the shard queues them in order, the link sends them in order on one
//! connection, the broker keeps a connection's order per subscriber, and the receiving
//! link hands them to the shards in order. Messages of different publishers may
//! interleave differently on different nodes. A broker outage loses what the broker did
//! not deliver (both are at-most-once); it never reorders or duplicates.

mod interest;
mod link;
mod naming;
mod nats;
mod outbox;
mod redis;
mod redis_cluster;
mod stats;
mod wire;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::app::Message;
use super::pubsub::{Hub, Publisher};

pub use wire::NodeId;

pub(crate) use interest::Interest;

/// The default of every cluster setting.
pub mod defaults {
    use std::time::Duration;

    pub const PREFIX: &str = "ringws";
    pub const BUFFER: usize = 16 << 20;
    pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(2);
}

/// The broker a cluster shares, from its URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// `nats://` or `tls://`.
    Nats,
    /// `redis://` or `rediss://`: one server (classic pub/sub).
    Redis,
    /// Several `redis://` or `rediss://` URLs: nodes of a Redis Cluster (sharded pub/sub).
    RedisCluster,
}

/// How a node joins a cluster.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The broker's URLs: several NATS servers of one NATS cluster, one Redis server, or
    /// several nodes of one Redis Cluster (then sharded pub/sub is used).
    /// Credentials may ride in the URL (`nats://user:pass@host`, `redis://:pass@host`).
    pub urls: Vec<String>,
    /// The start of every subject (`PREFIX.topic`) or channel (`PREFIX:topic`).
    pub prefix: String,
    /// What may wait for the broker, in bytes; past it the oldest messages are dropped and
    /// counted as publish failures.
    pub buffer: usize,
    /// How long a topic without subscribers keeps its broker subscription, so that churn
    /// does not make it flap.
    pub unsubscribe_delay: Duration,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the broker's TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `/readyz` answers 503 while the link is down.
    pub ready_needs_link: bool,
}

impl ClusterConfig {
    /// A node of the cluster on `urls`, with every other setting at its default.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            prefix: defaults::PREFIX.into(),
            buffer: defaults::BUFFER,
            unsubscribe_delay: defaults::UNSUBSCRIBE_DELAY,
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            ready_needs_link: false,
        }
    }

    /// The broker the URLs name, or why they name none.
    pub fn broker(&self) -> Result<BrokerKind, String> {
        let mut kinds = self.urls.iter().map(|url| {
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            match scheme.to_ascii_lowercase().as_str() {
                "nats" | "tls" => Ok(BrokerKind::Nats),
                "redis" | "rediss" => Ok(BrokerKind::Redis),
                _ => Err(format!(
                    "`{url}`: use nats://, tls://, redis:// or rediss://"
                )),
            }
        });
        let first = kinds.next().ok_or("no broker URL")??;
        for kind in kinds {
            if kind? != first {
                return Err("every URL must name the same broker".into());
            }
        }
        if first == BrokerKind::Redis && self.urls.len() > 1 {
            return Ok(BrokerKind::RedisCluster);
        }
        Ok(first)
    }

    /// Checks the settings as far as can be without connecting.
    pub fn validate(&self) -> Result<(), String> {
        self.broker()?;
        naming::check_prefix(&self.prefix)?;
        if self.buffer == 0 {
            return Err("the buffer must be greater than zero".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("a client certificate needs both its cert and its key".into());
        }
        if self.credentials.is_some() && self.broker()? != BrokerKind::Nats {
            return Err(
                "a credentials file is for NATS; give Redis its password in the URL".into(),
            );
        }
        Ok(())
    }
}

/// What the shards, the pages and the link share.
pub(crate) struct Shared {
    pub node: NodeId,
    pub config: ClusterConfig,
    pub outbox: outbox::Outbox,
    pub interest: Arc<Interest>,
    pub stats: stats::Stats,
    /// Reads which topics have subscribers on the node; set once the hub exists.
    hub: std::sync::OnceLock<std::sync::Weak<Hub>>,
}

impl Shared {
    pub fn new(config: ClusterConfig) -> Self {
        Self {
            node: NodeId::random(),
            outbox: outbox::Outbox::new(config.buffer),
            config,
            interest: Arc::new(Interest::default()),
            stats: stats::Stats::default(),
            hub: std::sync::OnceLock::new(),
        }
    }

    /// Queues a message published on this node for the broker.
    pub fn forward(&self, topic: &str, message: Message<'_>) {
        let (binary, payload) = match message {
            Message::Text(text) => (false, text.as_bytes()),
            Message::Binary(data) => (true, data),
        };
        let dropped = self.outbox.push(wire::Outbound {
            topic: topic.into(),
            binary,
            payload: bytes::Bytes::copy_from_slice(payload),
        });
        if dropped > 0 {
            stats::add(&self.stats.publish_failures, dropped);
        }
    }

    /// Whether `topic` has subscribers anywhere on the node.
    fn is_live(&self, topic: &str) -> bool {
        self.hub
            .get()
            .and_then(std::sync::Weak::upgrade)
            .is_some_and(|hub| hub.directory.shards(topic) != 0)
    }

    /// The link's rows of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        self.stats.render(self.outbox.bytes(), out);
    }

    /// The link's line of `/readyz`, and whether it keeps the node from being ready.
    pub fn readiness(&self) -> (String, bool) {
        let held = self.stats.for_how_long().as_secs_f64();
        if self.stats.is_up() {
            (format!("cluster link up for {held:.0}s\n"), false)
        } else {
            (
                format!("cluster link down for {held:.1}s: reconnecting\n"),
                self.config.ready_needs_link,
            )
        }
    }
}

/// The running link: its thread, stopped and joined by [`Link::stop`].
pub(crate) struct Link {
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Link {
    /// Starts the link's thread; fails when its broker client cannot be set up (a bad URL
    /// or credentials file). An unreachable broker is not a failure: the link keeps trying.
    pub fn start(
        shared: Arc<Shared>,
        hub: &Arc<Hub>,
        publisher: Publisher,
        max_message_size: usize,
    ) -> io::Result<Self> {
        let _ = shared.hub.set(Arc::downgrade(hub));
        let stop = Arc::new(Notify::new());
        let node = link::Node {
            shared: shared.clone(),
            publisher,
            max_message_size,
            stop: stop.clone(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("ringws-cluster")
            .build()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let kind = shared
            .config
            .broker()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let thread = std::thread::Builder::new()
            .name("ringws-cluster".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match kind {
                        BrokerKind::Nats => match nats::Nats::connect(&shared).await {
                            Ok(broker) => {
                                let _ = ready_tx.send(Ok(()));
                                link::run(broker, node).await;
                            }
                            Err(err) => {
                                let _ = ready_tx.send(Err(err));
                            }
                        },
                        BrokerKind::Redis => match redis::Redis::new(&shared) {
                            Ok(broker) => {
                                let _ = ready_tx.send(Ok(()));
                                link::run(broker, node).await;
                            }
                            Err(err) => {
                                let _ = ready_tx.send(Err(err));
                            }
                        },
                        BrokerKind::RedisCluster => {
                            match redis_cluster::RedisCluster::new(&shared) {
                                Ok(broker) => {
                                    let _ = ready_tx.send(Ok(()));
                                    link::run(broker, node).await;
                                }
                                Err(err) => {
                                    let _ = ready_tx.send(Err(err));
                                }
                            }
                        }
                    }
                });
            })?;
        let mut link = Self {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(link),
            Ok(Err(err)) => {
                link.stop();
                Err(io::Error::other(format!("cluster: {err}")))
            }
            Err(_) => {
                link.stop();
                Err(io::Error::other("cluster: the link's thread ended"))
            }
        }
    }

    /// Sends what is still queued (for at most a second) and ends the link.
    pub fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop();
    }
}
