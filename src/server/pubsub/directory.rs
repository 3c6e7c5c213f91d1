//! Which shards have subscribers to each topic: one bit per shard (at most 64 shards), and
//! how many subscribers the topic has over all shards. The bits are written only when a
//! topic appears on or leaves a shard; the count (an atomic under the read lock) when a
//! subscription starts or ends. Both are read once per publish. When a topic appears on or
//! leaves the whole node, a cluster's link is told.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::super::cluster::Interest;

#[derive(Default)]
pub(crate) struct Directory {
    topics: RwLock<HashMap<Arc<str>, Topic>>,
    /// The cluster link's list of topics to look at, if the node is in a cluster.
    interest: Option<Arc<Interest>>,
}

#[derive(Default)]
struct Topic {
    shards: u64,
    /// A shard adds its subscribers while its bit is set and takes them away before it
    /// clears it, so the count is whole whenever the entry exists.
    subscribers: AtomicU64,
}

impl Directory {
    pub fn new(interest: Option<Arc<Interest>>) -> Self {
        Self {
            topics: RwLock::default(),
            interest,
        }
    }

    /// The shards with subscribers to `topic`, one bit each.
    pub fn shards(&self, topic: &str) -> u64 {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(topic).map_or(0, |t| t.shards)
    }

    /// Subscribers to `topic` over all shards.
    pub fn subscribers(&self, topic: &str) -> u64 {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics
            .get(topic)
            .map_or(0, |t| t.subscribers.load(Ordering::Relaxed))
    }

    pub fn set(&self, topic: &Arc<str>, shard: usize, subscribed: bool) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let bit = 1u64 << shard;
        let mut node_edge = false;
        if subscribed {
            let entry = topics.entry(topic.clone()).or_default();
            node_edge = entry.shards == 0;
            entry.shards |= bit;
        } else if let Some(entry) = topics.get_mut(topic) {
            entry.shards &= !bit;
            if entry.shards == 0 {
                topics.remove(topic);
                node_edge = true;
            }
        }
        // Told under the lock, so the link never reads an edge before the change.
        if let (true, Some(interest)) = (node_edge, &self.interest) {
            interest.touch(topic);
        }
    }

    /// A subscription to `topic` started (`joined`) or ended, on a shard whose bit is set.
    pub fn count(&self, topic: &str, joined: bool) {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = topics.get(topic) {
            let change = |n: u64| Some(if joined { n + 1 } else { n.saturating_sub(1) });
            let _ = entry
                .subscribers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, change);
        }
    }

    /// Topics with subscribers on any shard.
    pub fn len(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_lives_while_any_shard_has_it() {
        let directory = Directory::default();
        let topic: Arc<str> = "news".into();
        directory.set(&topic, 0, true);
        directory.set(&topic, 63, true);
        assert_eq!(directory.shards("news"), 1 | 1 << 63);
        directory.set(&topic, 0, false);
        assert_eq!((directory.shards("news"), directory.len()), (1 << 63, 1));
        directory.set(&topic, 63, false);
        assert_eq!((directory.shards("news"), directory.len()), (0, 0));
    }

    #[test]
    fn subscribers_are_counted_over_shards() {
        let directory = Directory::default();
        let topic: Arc<str> = "news".into();
        directory.set(&topic, 0, true);
        directory.count("news", true);
        directory.count("news", true);
        directory.set(&topic, 1, true);
        directory.count("news", true);
        assert_eq!(directory.subscribers("news"), 3);
        directory.count("news", false);
        assert_eq!(directory.subscribers("news"), 2);
        assert_eq!(directory.subscribers("other"), 0);
    }

    #[test]
    fn the_cluster_hears_when_a_topic_appears_on_or_leaves_the_node() {
        let interest = Arc::new(Interest::default());
        let directory = Directory::new(Some(interest.clone()));
        let topic: Arc<str> = "news".into();
        directory.set(&topic, 0, true);
        assert_eq!(interest.take().len(), 1, "appeared");
        directory.set(&topic, 1, true);
        directory.set(&topic, 0, false);
        assert!(interest.take().is_empty(), "still on shard 1");
        directory.set(&topic, 1, false);
        assert_eq!(interest.take().len(), 1, "left");
    }
}
