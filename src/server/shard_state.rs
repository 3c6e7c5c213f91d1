//! What every connection of a shard shares: settings, the clock, outgoing frames, the
//! shard's pub/sub topics and its budget for incomplete messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::runtime::{ConnId, Health};

use super::admission::Admission;
use super::config::ServerConfig;
use super::connection::Clock;
use super::frames::{Arena, SharedCompressors};
use super::metrics::Counters;
use super::pubsub::ShardTopics;
use super::transport::Transport;

/// Where the server is in its life, shared by every shard and the server handle.
#[derive(Default)]
pub(crate) struct Lifecycle {
    /// Draining: `/readyz` answers 503 so load balancers stop sending new clients.
    pub draining: AtomicBool,
}

impl Lifecycle {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

pub(crate) struct ShardState {
    pub config: Arc<ServerConfig>,
    pub lifecycle: Arc<Lifecycle>,
    /// Who is let in, shared by every shard.
    pub admission: Arc<Admission>,
    /// When every shard last turned.
    pub health: Health,
    pub clock: Clock,
    pub arena: Arena,
    /// The message being delivered, when the reader assembled it in its own memory: a
    /// send of it shares it instead of copying it into the arena.
    pub delivered: Option<Bytes>,
    pub compressors: SharedCompressors,
    pub topics: ShardTopics,
    /// Bytes held by messages still arriving, over all of the shard's connections.
    pub incomplete_bytes: usize,
}

impl ShardState {
    pub fn new(
        config: Arc<ServerConfig>,
        lifecycle: Arc<Lifecycle>,
        admission: Arc<Admission>,
        health: Health,
        clock: Clock,
        topics: ShardTopics,
    ) -> Self {
        Self {
            lifecycle,
            admission,
            health,
            compressors: SharedCompressors::new(config.deflate),
            config,
            clock,
            arena: Arena::default(),
            delivered: None,
            topics,
            incomplete_bytes: 0,
        }
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.topics.shard()
    }

    pub fn counters(&self) -> &Counters {
        self.topics.counters()
    }

    /// Queues whatever was written into the arena since the last flush for `conn`.
    pub fn flush(&mut self, io: &mut dyn Transport, conn: ConnId) {
        if let Some(bytes) = self.arena.take() {
            io.send(conn, bytes);
        }
    }

    /// Whether the incomplete messages of the shard's connections hold more than allowed.
    pub fn over_incomplete_budget(&self) -> bool {
        self.incomplete_bytes > self.config.max_incomplete_bytes
    }
}
