//! One shard's topic table: which connections subscribe to which topics, both ways round,
//! with the bounds an application relies on. A plain data structure: no sockets, no shards.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use indexmap::IndexMap;

/// Why a subscription was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// A topic needs a name.
    EmptyName,
    /// The topic's name is longer than the configured maximum (in bytes).
    NameTooLong { max: usize },
    /// The connection already holds the configured maximum of topics.
    TooManyTopics { max: usize },
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyName => f.write_str("a topic name must not be empty"),
            Self::NameTooLong { max } => write!(f, "topic name longer than {max} bytes"),
            Self::TooManyTopics { max } => {
                write!(f, "a connection may subscribe to at most {max} topics")
            }
        }
    }
}

impl std::error::Error for SubscribeError {}

/// What a change did to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// The subscription was added or removed (false: it already was, or was not, there).
    pub changed: bool,
    /// The topic gained its first subscriber here, or lost its last.
    pub topic_edge: bool,
}

/// A topic's subscribers, each with the publish sequence number current when it joined:
/// messages published before that are not theirs.
pub(crate) type Subscribers<C> = IndexMap<C, u64>;

/// Topics and subscribers of one shard, keyed by connection `C`.
pub(crate) struct TopicTable<C> {
    topics: HashMap<Arc<str>, Subscribers<C>>,
    by_conn: HashMap<C, Vec<Arc<str>>>,
    max_name_len: usize,
    max_per_conn: usize,
    subscriptions: usize,
}

impl<C: Copy + Eq + Hash> TopicTable<C> {
    pub fn new(max_name_len: usize, max_per_conn: usize) -> Self {
        Self {
            topics: HashMap::new(),
            by_conn: HashMap::new(),
            max_name_len,
            max_per_conn,
            subscriptions: 0,
        }
    }

    /// Checks a topic name against the table's bounds.
    pub fn check_name(&self, topic: &str) -> Result<(), SubscribeError> {
        if topic.is_empty() {
            return Err(SubscribeError::EmptyName);
        }
        if topic.len() > self.max_name_len {
            return Err(SubscribeError::NameTooLong {
                max: self.max_name_len,
            });
        }
        Ok(())
    }

    /// Subscribes `conn` to `topic` for messages numbered `since` and later.
    pub fn subscribe(
        &mut self,
        conn: C,
        topic: &str,
        since: u64,
    ) -> Result<Change, SubscribeError> {
        self.check_name(topic)?;
        let held = self.by_conn.get(&conn).map_or(0, Vec::len);
        if let Some(subscribers) = self.topics.get(topic)
            && subscribers.contains_key(&conn)
        {
            return Ok(Change {
                changed: false,
                topic_edge: false,
            });
        }
        if held >= self.max_per_conn {
            return Err(SubscribeError::TooManyTopics {
                max: self.max_per_conn,
            });
        }
        let topic: Arc<str> = match self.topics.get_key_value(topic) {
            Some((known, _)) => known.clone(),
            None => topic.into(),
        };
        let subscribers = self.topics.entry(topic.clone()).or_default();
        subscribers.insert(conn, since);
        let topic_edge = subscribers.len() == 1;
        self.by_conn.entry(conn).or_default().push(topic);
        self.subscriptions += 1;
        Ok(Change {
            changed: true,
            topic_edge,
        })
    }

    /// Unsubscribes `conn` from `topic`.
    pub fn unsubscribe(&mut self, conn: C, topic: &str) -> Change {
        let unchanged = Change {
            changed: false,
            topic_edge: false,
        };
        let Some(topics) = self.by_conn.get_mut(&conn) else {
            return unchanged;
        };
        let Some(at) = topics.iter().position(|t| &**t == topic) else {
            return unchanged;
        };
        topics.swap_remove(at);
        if topics.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.leave(conn, topic)
    }

    /// Removes `conn` from every topic; calls `emptied` with each topic it left empty.
    pub fn remove(&mut self, conn: C, mut emptied: impl FnMut(&Arc<str>)) -> usize {
        let topics = self.by_conn.remove(&conn).unwrap_or_default();
        for topic in &topics {
            if self.leave(conn, topic).topic_edge {
                emptied(topic);
            }
        }
        topics.len()
    }

    fn leave(&mut self, conn: C, topic: &str) -> Change {
        let Some(subscribers) = self.topics.get_mut(topic) else {
            return Change {
                changed: false,
                topic_edge: false,
            };
        };
        let changed = subscribers.swap_remove(&conn).is_some();
        let topic_edge = changed && subscribers.is_empty();
        if changed {
            self.subscriptions -= 1;
        }
        if topic_edge {
            self.topics.remove(topic);
        }
        Change {
            changed,
            topic_edge,
        }
    }

    /// The shared name of `topic`, if it has subscribers here.
    pub fn name(&self, topic: &str) -> Option<&Arc<str>> {
        self.topics.get_key_value(topic).map(|(name, _)| name)
    }

    /// Topics `conn` subscribes to.
    pub fn topics_of(&self, conn: C) -> impl Iterator<Item = &str> {
        self.by_conn.get(&conn).into_iter().flatten().map(|t| &**t)
    }

    /// Lends out `topic`'s subscribers for a delivery; give them back with
    /// [`TopicTable::give_back`]. Delivering never changes subscriptions.
    pub fn lend(&mut self, topic: &str) -> Option<Subscribers<C>> {
        self.topics.get_mut(topic).map(std::mem::take)
    }

    pub fn give_back(&mut self, topic: &str, subscribers: Subscribers<C>) {
        if let Some(slot) = self.topics.get_mut(topic) {
            *slot = subscribers;
        }
    }

    #[cfg(test)]
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    #[cfg(test)]
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TopicTable<u32> {
        TopicTable::new(8, 2)
    }

    #[test]
    fn subscriptions_are_kept_both_ways_round() {
        let mut t = table();
        let first = t.subscribe(1, "news", 0).expect("subscribed");
        assert_eq!((first.changed, first.topic_edge), (true, true));
        let second = t.subscribe(2, "news", 5).expect("subscribed");
        assert_eq!((second.changed, second.topic_edge), (true, false));
        let again = t.subscribe(1, "news", 9).expect("no error");
        assert!(!again.changed);
        assert_eq!(t.topics_of(1).collect::<Vec<_>>(), ["news"]);
        assert_eq!(t.subscriptions(), 2);
        let subscribers = t.lend("news").expect("a topic");
        assert_eq!(subscribers.get(&2), Some(&5), "joined at sequence 5");
        t.give_back("news", subscribers);
        assert!(!t.unsubscribe(1, "news").topic_edge);
        assert!(!t.unsubscribe(1, "news").changed, "no longer subscribed");
        assert!(t.unsubscribe(2, "news").topic_edge, "the last one left");
        assert_eq!((t.topic_count(), t.subscriptions()), (0, 0));
    }

    #[test]
    fn removing_a_connection_empties_its_topics() {
        let mut t = table();
        t.subscribe(1, "a", 0).expect("subscribed");
        t.subscribe(1, "b", 0).expect("subscribed");
        t.subscribe(2, "b", 0).expect("subscribed");
        let mut emptied = Vec::new();
        assert_eq!(t.remove(1, |topic| emptied.push(topic.to_string())), 2);
        assert_eq!(emptied, ["a"]);
        assert_eq!((t.topic_count(), t.subscriptions()), (1, 1));
        assert_eq!(t.remove(1, |_| panic!("nothing left")), 0);
    }

    #[test]
    fn names_and_counts_are_bounded() {
        let mut t = table();
        assert_eq!(t.subscribe(1, "", 0), Err(SubscribeError::EmptyName));
        assert_eq!(
            t.subscribe(1, "ninechars", 0),
            Err(SubscribeError::NameTooLong { max: 8 })
        );
        t.subscribe(1, "a", 0).expect("subscribed");
        t.subscribe(1, "b", 0).expect("subscribed");
        assert_eq!(
            t.subscribe(1, "c", 0),
            Err(SubscribeError::TooManyTopics { max: 2 })
        );
        assert!(!t.subscribe(1, "a", 0).expect("already held").changed);
        assert_eq!(t.subscriptions(), 2);
    }
}
