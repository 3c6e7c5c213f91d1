//! The bounded queue from the shards to the broker. Shards never wait on it: a publish is
//! queued and the link takes it from there. Toward a slow or absent broker it behaves like
//! a slow subscriber's queue: past its bound the oldest messages go, counted.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::wire::Outbound;

pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    max_bytes: usize,
    /// Woken on every push; the link waits on it while the broker is up.
    pub wake: Notify,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queue: Mutex::default(),
            max_bytes,
            wake: Notify::new(),
        }
    }

    /// Queues `message`; returns how many older messages were dropped to make room. An
    /// empty queue takes any one message, so a message larger than the bound still goes.
    pub fn push(&self, message: Outbound) -> usize {
        let cost = message.cost();
        let dropped = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let mut dropped = 0;
            while queue.bytes + cost > self.max_bytes {
                let Some(oldest) = queue.items.pop_front() else {
                    break;
                };
                queue.bytes -= oldest.cost();
                dropped += 1;
            }
            queue.bytes += cost;
            queue.items.push_back(message);
            dropped
        };
        self.wake.notify_one();
        dropped
    }

    /// Moves up to `max` messages, oldest first, into `into`.
    pub fn take(&self, max: usize, into: &mut Vec<Outbound>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Queue { items, bytes } = &mut *queue;
        let n = max.min(items.len());
        for message in items.drain(..n) {
            *bytes -= message.cost();
            into.push(message);
        }
    }

    /// What the queued messages hold.
    pub fn bytes(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(n: u8) -> Outbound {
        Outbound {
            topic: "t".into(),
            binary: true,
            payload: Bytes::from(vec![n; 100]),
        }
    }

    #[test]
    fn past_the_bound_the_oldest_go_and_are_counted() {
        let cost = message(0).cost();
        let outbox = Outbox::new(cost * 3);
        assert_eq!(outbox.push(message(0)), 0);
        assert_eq!(outbox.push(message(1)), 0);
        assert_eq!(outbox.push(message(2)), 0);
        assert_eq!(outbox.push(message(3)), 1, "room for three");
        assert_eq!(outbox.bytes(), cost * 3);
        let mut taken = Vec::new();
        outbox.take(2, &mut taken);
        assert_eq!(
            taken.iter().map(|m| m.payload[0]).collect::<Vec<_>>(),
            [1, 2],
            "oldest first, the first one gone"
        );
        outbox.take(10, &mut taken);
        assert_eq!((taken.len(), outbox.bytes()), (3, 0));
    }

    #[test]
    fn an_empty_queue_takes_one_message_over_the_bound() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(message(0)), 0);
        assert_eq!(outbox.push(message(1)), 1);
        let mut taken = Vec::new();
        outbox.take(10, &mut taken);
        assert_eq!(taken[0].payload[0], 1);
    }
}
