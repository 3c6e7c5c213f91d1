//! Which shards have subscribers to each topic: one bit per shard (at most 64 shards). It is
//! written only when a topic appears on or leaves a shard, and read once per publish.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub(crate) struct Directory {
    topics: RwLock<HashMap<Arc<str>, u64>>,
}

impl Directory {
    /// The shards with subscribers to `topic`, one bit each.
    pub fn shards(&self, topic: &str) -> u64 {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(topic).copied().unwrap_or(0)
    }

    pub fn set(&self, topic: &Arc<str>, shard: usize, subscribed: bool) {
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
}
