//! One shard's side of pub/sub: its topic table, kept in step with the shared directory,
//! and the messages its own connections published for its own subscribers.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::runtime::{ConnId, Remote};

use super::super::app::Message;
use super::super::metrics::{Counters, Registry};
use super::published::Published;
use super::router::{Hub, PublishError, ShardMessage};
use super::topics::{SubscribeError, Subscribers, TopicTable};

pub(crate) struct ShardTopics {
    shard: usize,
    hub: Arc<Hub>,
    registry: Arc<Registry>,
    remotes: Vec<Remote<ShardMessage>>,
    table: TopicTable<ConnId>,
    /// Messages published on this shard, for this shard's subscribers.
    pending: VecDeque<Arc<Published>>,
}

impl ShardTopics {
    pub fn new(
        shard: usize,
        hub: Arc<Hub>,
        registry: Arc<Registry>,
        remotes: Vec<Remote<ShardMessage>>,
        table: TopicTable<ConnId>,
    ) -> Self {
        Self {
            shard,
            hub,
            registry,
            remotes,
            table,
            pending: VecDeque::new(),
        }
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn counters(&self) -> &Counters {
        self.registry.shard(self.shard)
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Subscribes `conn` to `topic`; `Ok(false)` when it already was. The subscription
    /// applies to messages published after this returns.
    pub fn subscribe(&mut self, conn: ConnId, topic: &str) -> Result<bool, SubscribeError> {
        // Visible in the directory first, numbered after: every message numbered from
        // `since` on finds this shard in the directory.
        self.table.check_name(topic)?;
        let announced = match self.table.name(topic) {
            Some(_) => None,
            None => Some(Arc::<str>::from(topic)),
        };
        if let Some(name) = &announced {
            self.hub.directory.set(name, self.shard, true);
        }
        let since = self.hub.current_sequence();
        let result = self.table.subscribe(conn, topic, since);
        match (&result, &announced) {
            (Ok(change), _) if change.changed => {
                self.hub.directory.count(topic, true);
                self.counters().subscribed();
            }
            // Refused: the topic was announced for nothing.
            (Err(_), Some(name)) => self.hub.directory.set(name, self.shard, false),
            _ => {}
        }
        result.map(|change| change.changed)
    }

    /// Unsubscribes `conn` from `topic`; returns false when it was not subscribed.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        let name = self.table.name(topic).cloned();
        let change = self.table.unsubscribe(conn, topic);
        if change.changed {
            self.hub.directory.count(topic, false);
            self.counters().unsubscribed();
        }
        if let (true, Some(name)) = (change.topic_edge, name) {
            self.hub.directory.set(&name, self.shard, false);
        }
        change.changed
    }

    /// Removes a closed connection from every topic it subscribed to.
    pub fn remove(&mut self, conn: ConnId) {
        // Counted out while this shard's bit is still set.
        for topic in self.table.topics_of(conn) {
            self.hub.directory.count(topic, false);
        }
        let (hub, shard) = (&self.hub, self.shard);
        let left = self
            .table
            .remove(conn, |topic| hub.directory.set(topic, shard, false));
        for _ in 0..left {
            self.registry.shard(self.shard).unsubscribed();
        }
    }

    /// Topics `conn` subscribes to.
    pub fn topics_of(&self, conn: ConnId) -> impl Iterator<Item = &str> {
        self.table.topics_of(conn)
    }

    /// Publishes from a connection of this shard: other shards get the message through
    /// their queues now, this shard's subscribers when the current callback returns.
    pub fn publish(
        &mut self,
        topic: &str,
        message: Message<'_>,
        origin: Option<ConnId>,
    ) -> Result<bool, PublishError> {
        let origin = origin.map(|conn| (self.shard, conn));
        let counters = self.registry.shard(self.shard);
        let route = self.hub.route(
            &self.remotes,
            topic,
            message,
            origin,
            Some(self.shard),
            counters,
        );
        let result = route.result();
        self.pending.extend(route.local);
        result
    }

    /// Subscribers to `topic` on every shard of this server.
    pub fn subscribers(&self, topic: &str) -> u64 {
        self.hub.directory.subscribers(topic)
    }

    /// The next message published on this shard and not yet delivered here.
    pub fn next_pending(&mut self) -> Option<Arc<Published>> {
        self.pending.pop_front()
    }

    /// Whether messages published here wait for their fan-out.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes waiting in other shards' queues, the most of any one shard.
    pub fn largest_backlog(&self) -> usize {
        self.remotes.iter().map(Remote::backlog).max().unwrap_or(0)
    }

    /// Lends out `topic`'s subscribers for a delivery; give them back with
    /// [`ShardTopics::give_back`]. Delivering never changes subscriptions.
    pub fn lend(&mut self, topic: &str) -> Option<Subscribers<ConnId>> {
        self.table.lend(topic)
    }

    pub fn give_back(&mut self, topic: &str, subscribers: Subscribers<ConnId>) {
        self.table.give_back(topic, subscribers);
    }
}
