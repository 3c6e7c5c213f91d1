//! Routing a publish: number it, frame it once, and queue it to every shard with
//! subscribers; [`Publisher`] does the same from any thread.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::{ConnId, Remote};

use super::super::app::Message;
use super::super::cluster;
use super::super::metrics::{Counters, Registry};
use super::directory::Directory;
use super::published::Published;

/// Messages between shards.
pub enum ShardMessage {
    Publish(Arc<Published>),
}

impl ShardMessage {
    /// What the message holds in memory while it waits in a shard's queue.
    fn cost(&self) -> usize {
        match self {
            Self::Publish(published) => published.cost(),
        }
    }
}

/// Some shards could not take a published message: their queues from other shards are full
/// because they are behind. Their subscribers miss the message; the others received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishError {
    /// Shards that did not take the message.
    pub shards_behind: u32,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} shard(s) are behind and could not take the message: their subscribers miss it",
            self.shards_behind
        )
    }
}

impl std::error::Error for PublishError {}

/// What every shard and every [`Publisher`] shares.
#[derive(Default)]
pub(crate) struct Hub {
    pub directory: Directory,
    /// The number the next publish gets. A subscriber remembers the number current when it
    /// joined, and is not given messages published before.
    sequence: AtomicU64,
    /// The cluster this node belongs to, if any: every publish made here goes to it too.
    cluster: Option<Arc<cluster::Shared>>,
}

/// Where [`Hub::route`] sent a message.
pub(crate) struct Route {
    /// Some shard has subscribers.
    pub reached: bool,
    /// Shards that refused the message for being behind.
    pub shards_behind: u32,
    /// The calling shard's own share, for it to deliver itself.
    pub local: Option<Arc<Published>>,
}

impl Route {
    pub fn result(&self) -> Result<bool, PublishError> {
        match self.shards_behind {
            0 => Ok(self.reached),
            shards_behind => Err(PublishError { shards_behind }),
        }
    }
}

impl Hub {
    pub fn new(cluster: Option<Arc<cluster::Shared>>) -> Self {
        Self {
            directory: Directory::new(cluster.as_ref().map(|c| c.interest.clone())),
            sequence: AtomicU64::new(0),
            cluster,
        }
    }

    pub fn cluster(&self) -> Option<&cluster::Shared> {
        self.cluster.as_deref()
    }

    /// The sequence number a subscription made now starts from. Read after the
    /// subscription is visible in the directory, so every message numbered from here on
    /// finds it.
    pub fn current_sequence(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    /// Sends a message published on this node to the cluster, if any, then to this node's
    /// subscribers as [`Hub::fan_out`] does.
    pub fn route(
        &self,
        remotes: &[Remote<ShardMessage>],
        topic: &str,
        message: Message<'_>,
        origin: Option<(usize, ConnId)>,
        local: Option<usize>,
        counters: &Counters,
    ) -> Route {
        if let Some(cluster) = &self.cluster {
            cluster.forward(topic, message);
        }
        self.fan_out(remotes, topic, message, origin, local, counters)
    }

    /// Numbers and frames `message`, then queues it to every shard with subscribers except
    /// `local`, whose share comes back in the [`Route`].
    pub fn fan_out(
        &self,
        remotes: &[Remote<ShardMessage>],
        topic: &str,
        message: Message<'_>,
        origin: Option<(usize, ConnId)>,
        local: Option<usize>,
        counters: &Counters,
    ) -> Route {
        // Numbered before the directory is read: a subscriber that joined after the number
        // was taken is visible in the directory and skips the message by its number.
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst);
        let mut shards = self.directory.shards(topic);
        let mut route = Route {
            reached: shards != 0,
            shards_behind: 0,
            local: None,
        };
        if shards == 0 {
            return route;
        }
        counters.published();
        let published = Arc::new(Published::new(topic, sequence, message, origin));
        let local_bit = local.map_or(0, |shard| 1u64 << shard);
        if shards & local_bit != 0 {
            route.local = Some(published.clone());
        }
        shards &= !local_bit;
        while shards != 0 {
            let shard = shards.trailing_zeros() as usize;
            shards &= shards - 1;
            let Some(remote) = remotes.get(shard) else {
                continue;
            };
            if offer(remote, ShardMessage::Publish(published.clone())).is_err() {
                counters.backlog_refused();
                route.shards_behind += 1;
            }
        }
        route
    }
}

/// Queues `message` on a shard unless its queue is over its bound.
fn offer(remote: &Remote<ShardMessage>, message: ShardMessage) -> Result<(), ShardMessage> {
    let cost = message.cost();
    remote.try_send(message, cost)
}

/// Publishes from any thread, outside the server's shards. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<Hub>,
    registry: Arc<Registry>,
    remotes: Vec<Remote<ShardMessage>>,
}

impl Publisher {
    pub(crate) fn new(
        hub: Arc<Hub>,
        registry: Arc<Registry>,
        remotes: Vec<Remote<ShardMessage>>,
    ) -> Self {
        Self {
            hub,
            registry,
            remotes,
        }
    }

    /// Sends `message` to every subscriber of `topic`; returns whether there was any. Fails
    /// when a shard is too far behind to take it (see [`PublishError`]): the caller should
    /// slow down instead of piling up memory.
    pub fn publish(&self, topic: &str, message: Message<'_>) -> Result<bool, PublishError> {
        let counters = self.registry.outside();
        // Every shard is remote from here, so no share comes back to deliver.
        self.hub
            .route(&self.remotes, topic, message, None, None, counters)
            .result()
    }

    /// Delivers a message that came from the cluster's broker to this node's subscribers,
    /// without sending it back.
    pub(crate) fn publish_inbound(
        &self,
        topic: &str,
        message: Message<'_>,
    ) -> Result<bool, PublishError> {
        let counters = self.registry.outside();
        self.hub
            .fan_out(&self.remotes, topic, message, None, None, counters)
            .result()
    }
}
