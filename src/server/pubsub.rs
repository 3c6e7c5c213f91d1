//! Pub/sub: topics, their subscribers on each shard, and which shards want which topic.
//!
//! Each shard keeps its own subscribers; no shard ever touches another's connections. A
//! process-wide [`Directory`] records, per topic, which shards have subscribers: it changes
//! only when a shard gains its first or loses its last subscriber to a topic, and a publish
//! reads it to wake only the shards that care.
//!
//! A published message is encoded once as a frame in one shared buffer ([`Published`]); every
//! subscriber's send queue gets a reference to the same bytes.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};

use crate::proto::OpCode;
use crate::proto::frame::write_frame;

/// Which shards have subscribers to which topics. Shards are bits of a `u64`: at most 64.
#[derive(Default)]
pub struct Directory {
    shards_by_topic: RwLock<HashMap<Arc<str>, u64>>,
}

/// The largest shard count the directory's bit sets can name.
pub const MAX_SHARDS: usize = 64;

impl Directory {
    /// The shards with at least one subscriber to `topic`, as a bit set.
    pub fn shards_for(&self, topic: &str) -> u64 {
        // A poisoned lock only means a panic elsewhere mid-update of a plain map; its data
        // is still a valid map, so keep serving from it.
        let map = self.shards_by_topic.read().unwrap_or_else(|e| e.into_inner());
        map.get(topic).copied().unwrap_or(0)
    }

    fn set(&self, topic: &Arc<str>, shard: usize, interested: bool) {
        let mut map = self.shards_by_topic.write().unwrap_or_else(|e| e.into_inner());
        let bit = 1u64 << shard;
        if interested {
            *map.entry(topic.clone()).or_insert(0) |= bit;
        } else if let Some(mask) = map.get_mut(topic) {
            *mask &= !bit;
            if *mask == 0 {
                map.remove(topic);
            }
        }
    }

    /// Topics with a subscriber anywhere.
    pub fn topic_count(&self) -> usize {
        self.shards_by_topic.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One shard's topics and their local subscribers.
pub(crate) struct Topics<C> {
    shard: usize,
    directory: Arc<Directory>,
    subscribers: HashMap<Arc<str>, HashSet<C>>,
}

impl<C: Copy + Eq + Hash> Topics<C> {
    pub fn new(shard: usize, directory: Arc<Directory>) -> Self {
        Self { shard, directory, subscribers: HashMap::new() }
    }

    /// Subscribes `conn`; returns the topic's shared name if this is a new subscription.
    pub fn subscribe(&mut self, topic: &str, conn: C) -> Option<Arc<str>> {
        if let Some((name, _)) = self.subscribers.get_key_value(topic) {
            let name = name.clone();
            let added = self.subscribers.get_mut(topic).is_some_and(|set| set.insert(conn));
            return added.then_some(name);
        }
        let name: Arc<str> = Arc::from(topic);
        self.subscribers.insert(name.clone(), HashSet::from([conn]));
        self.directory.set(&name, self.shard, true);
        Some(name)
    }

    /// Unsubscribes `conn`; a topic left without local subscribers is forgotten.
    pub fn unsubscribe(&mut self, topic: &str, conn: C) -> bool {
        let Some(subscribers) = self.subscribers.get_mut(topic) else { return false };
        let removed = subscribers.remove(&conn);
        if subscribers.is_empty()
            && let Some((name, _)) = self.subscribers.remove_entry(topic)
        {
            self.directory.set(&name, self.shard, false);
        }
        removed
    }

    /// The local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> impl Iterator<Item = C> + '_ {
        self.subscribers.get(topic).into_iter().flat_map(|set| set.iter().copied())
    }

    /// Topics with a subscriber on this shard.
    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.values().map(HashSet::len).sum()
    }
}

/// A message published to a topic, framed once for every receiver.
#[derive(Clone, Debug)]
pub struct Published {
    pub topic: Arc<str>,
    pub opcode: OpCode,
    /// The payload, for receivers that need it compressed.
    pub payload: Bytes,
    /// The uncompressed server frame carrying the payload.
    pub frame: Bytes,
}

impl Published {
    pub fn new(topic: Arc<str>, opcode: OpCode, payload: &[u8]) -> Self {
        let mut frame = BytesMut::with_capacity(payload.len() + 10);
        write_frame(&mut frame, opcode, true, false, payload, None);
        Self { topic, opcode, payload: Bytes::copy_from_slice(payload), frame: frame.freeze() }
    }
}

/// Counters of one shard, written by it alone and summed by readers on any thread.
#[derive(Default, Debug)]
pub struct PubSubCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub subscribers: AtomicU64,
    pub topics: AtomicU64,
}

impl PubSubCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of the pub/sub counters summed over all shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PubSubStats {
    /// Messages published (once per publish, however many receivers).
    pub published: u64,
    /// Messages queued to a subscriber.
    pub delivered: u64,
    /// Messages dropped for subscribers too slow to keep up.
    pub dropped: u64,
    /// Subscriptions, summed over shards.
    pub subscribers: u64,
    /// Topics with a subscriber on some shard.
    pub topics: u64,
}

impl PubSubStats {
    pub fn sum(shards: &[Arc<PubSubCounters>], directory: &Directory) -> Self {
        let mut stats = Self { topics: directory.topic_count() as u64, ..Self::default() };
        for shard in shards {
            stats.published += shard.published.load(Ordering::Relaxed);
            stats.delivered += shard.delivered.load(Ordering::Relaxed);
            stats.dropped += shard.dropped.load(Ordering::Relaxed);
            stats.subscribers += shard.subscribers.load(Ordering::Relaxed);
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_tracks_first_and_last_subscriber_per_shard() {
        let directory = Arc::new(Directory::default());
        let mut shard0 = Topics::new(0, directory.clone());
        let mut shard1 = Topics::new(1, directory.clone());
        assert!(shard0.subscribe("ticks", 1u32).is_some());
        assert!(shard0.subscribe("ticks", 1u32).is_none(), "already subscribed");
        assert!(shard0.subscribe("ticks", 2u32).is_some());
        assert!(shard1.subscribe("ticks", 7u32).is_some());
        assert_eq!(directory.shards_for("ticks"), 0b11);
        assert!(shard0.unsubscribe("ticks", 1));
        assert_eq!(directory.shards_for("ticks"), 0b11, "shard 0 still has a subscriber");
        assert!(shard0.unsubscribe("ticks", 2));
        assert_eq!(directory.shards_for("ticks"), 0b10);
        assert!(!shard0.unsubscribe("ticks", 2));
        assert!(shard1.unsubscribe("ticks", 7));
        assert_eq!(directory.shards_for("ticks"), 0);
        assert_eq!(directory.topic_count(), 0, "nothing left behind");
        assert_eq!(shard0.len() + shard1.len(), 0);
    }

    #[test]
    fn published_frame_is_shared_not_copied() {
        let message = Published::new(Arc::from("t"), OpCode::Text, b"hello");
        assert_eq!(&message.frame[..], b"\x81\x05hello");
        let copy = message.clone();
        assert_eq!(copy.frame.as_ptr(), message.frame.as_ptr());
    }
}
