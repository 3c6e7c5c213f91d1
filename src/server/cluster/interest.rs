//! Which topics this node needs from the broker: one broker subscription per topic with a
//! subscriber anywhere on the node, made when the first one joins and dropped a delay after
//! the last one leaves, so that churn does not make the subscription flap.
//!
//! The shards report every topic that appears on or leaves the node ([`Interest::touch`],
//! called by the topic directory); the link reads the directory for the truth of each
//! touched topic and feeds it to [`Subscriptions`], a state machine of plain data.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Topics touched since the link last looked, each once however often it changed.
#[derive(Default)]
pub(crate) struct Interest {
    touched: Mutex<HashSet<Arc<str>>>,
    pub wake: Notify,
}

impl Interest {
    /// `topic` appeared on or left the node.
    pub fn touch(&self, topic: &Arc<str>) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.clone());
        self.wake.notify_one();
    }

    pub fn take(&self) -> HashSet<Arc<str>> {
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What the link must do on the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

/// The node's broker subscriptions and the ones waiting out their delay.
pub(crate) struct Subscriptions {
    delay: Duration,
    subscribed: HashSet<Arc<str>>,
    /// Subscribed topics without subscribers, and when they may be dropped.
    leaving: HashMap<Arc<str>, Instant>,
    /// The same, in deadline order (the delay is fixed); entries whose topic came back
    /// are skipped when they come up.
    queue: VecDeque<(Instant, Arc<str>)>,
}

impl Subscriptions {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            subscribed: HashSet::new(),
            leaving: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// `topic` now has (`live`) or has no subscribers on the node.
    pub fn update(&mut self, topic: Arc<str>, live: bool, now: Instant) -> Option<Change> {
        let subscribed = self.subscribed.contains(&topic);
        match (live, subscribed) {
            (true, false) => {
                self.subscribed.insert(topic.clone());
                Some(Change::Subscribe(topic))
            }
            (true, true) => {
                self.leaving.remove(&topic);
                None
            }
            (false, true) if self.delay.is_zero() => {
                self.subscribed.remove(&topic);
                Some(Change::Unsubscribe(topic))
            }
            (false, true) => {
                if !self.leaving.contains_key(&topic) {
                    let at = now + self.delay;
                    self.leaving.insert(topic.clone(), at);
                    self.queue.push_back((at, topic));
                }
                None
            }
            (false, false) => None,
        }
    }

    /// The subscriptions whose delay is over and whose topic is still empty (`live` reads
    /// the truth now).
    pub fn expire(&mut self, now: Instant, live: impl Fn(&str) -> bool) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some((at, _)) = self.queue.front()
            && *at <= now
        {
            let Some((at, topic)) = self.queue.pop_front() else {
                break;
            };
            if self.leaving.get(&topic) != Some(&at) {
                continue;
            }
            self.leaving.remove(&topic);
            if !live(&topic) {
                self.subscribed.remove(&topic);
                changes.push(Change::Unsubscribe(topic));
            }
        }
        changes
    }

    /// When [`Subscriptions::expire`] may next have something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// Topics subscribed on the broker, for resubscribing after a reconnect.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.subscribed.iter()
    }

    pub fn len(&self) -> usize {
        self.subscribed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(2);

    #[test]
    fn the_first_subscriber_subscribes_and_the_last_unsubscribes_after_the_delay() {
        let t0 = Instant::now();
        let mut subs = Subscriptions::new(DELAY);
        let news: Arc<str> = "news".into();
        assert_eq!(
            subs.update(news.clone(), true, t0),
            Some(Change::Subscribe(news.clone()))
        );
        assert_eq!(subs.update(news.clone(), true, t0), None, "already");
        assert_eq!(subs.update(news.clone(), false, t0), None, "waits");
        assert_eq!(subs.next_deadline(), Some(t0 + DELAY));
        assert!(subs.expire(t0 + DELAY / 2, |_| false).is_empty());
        assert_eq!(
            subs.expire(t0 + DELAY, |_| false),
            [Change::Unsubscribe(news.clone())]
        );
        assert_eq!((subs.len(), subs.next_deadline()), (0, None));
    }

    #[test]
    fn churn_within_the_delay_keeps_one_subscription() {
        let t0 = Instant::now();
        let mut subs = Subscriptions::new(DELAY);
        let news: Arc<str> = "news".into();
        subs.update(news.clone(), true, t0);
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 10);
            assert_eq!(subs.update(news.clone(), i % 2 == 1, now), None);
        }
        // Back with subscribers: the pending unsubscribe is void.
        assert!(subs.expire(t0 + DELAY * 10, |_| true).is_empty());
        assert_eq!(subs.len(), 1);
        // Left again: a fresh delay from now.
        let later = t0 + DELAY * 10;
        subs.update(news.clone(), false, later);
        assert!(subs.expire(later + DELAY / 2, |_| false).is_empty());
        assert_eq!(subs.expire(later + DELAY, |_| false).len(), 1);
    }

    #[test]
    fn a_topic_that_came_back_by_the_deadline_stays() {
        let t0 = Instant::now();
        let mut subs = Subscriptions::new(DELAY);
        let news: Arc<str> = "news".into();
        subs.update(news.clone(), true, t0);
        subs.update(news.clone(), false, t0);
        // The touch that says it came back has not been read yet; the directory has.
        assert!(subs.expire(t0 + DELAY, |_| true).is_empty());
        assert_eq!(subs.topics().count(), 1);
    }

    #[test]
    fn without_a_delay_the_last_subscriber_unsubscribes_at_once() {
        let t0 = Instant::now();
        let mut subs = Subscriptions::new(Duration::ZERO);
        let news: Arc<str> = "news".into();
        subs.update(news.clone(), true, t0);
        assert_eq!(
            subs.update(news.clone(), false, t0),
            Some(Change::Unsubscribe(news))
        );
    }

    #[test]
    fn touches_are_kept_once_each() {
        let interest = Interest::default();
        let news: Arc<str> = "news".into();
        interest.touch(&news);
        interest.touch(&news);
        assert_eq!(interest.take().len(), 1);
        assert!(interest.take().is_empty());
    }
}
