//! The link between this node and the broker: one task on the link's own thread that keeps
//! the broker subscriptions in step with the node's topics, sends what the shards publish,
//! and hands what the broker delivers to the shards, whatever broker is behind [`Broker`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::super::app::Message;
use super::super::pubsub::Publisher;
use super::Shared;
use super::interest::{Change, Subscriptions};
use super::stats::add;
use super::wire::{Inbound, Outbound};

/// Messages handed to the broker at once.
const BATCH: usize = 256;
/// How long a stopping node keeps trying to send what it still holds.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// What a broker connection reports.
pub(crate) enum Event {
    /// Connected (again). Subscriptions the link asks [`Broker::restore`] for are to be
    /// made again if the broker did not keep them.
    Up,
    /// The connection is lost; the broker is reconnecting with backoff.
    Down(String),
    Message(Inbound),
    /// A message that could not be read.
    Malformed(String),
}

/// One broker's client, driven by [`run`]. Subscriptions are per topic; naming and
/// framing are the broker's business.
pub(crate) trait Broker {
    /// The next event; must be cancel-safe (it races the other work of the link).
    async fn next(&mut self) -> Event;
    /// Makes sure every topic in `topics` is subscribed after an [`Event::Up`].
    async fn restore(&mut self, topics: Vec<Arc<str>>) -> Result<(), String>;
    async fn subscribe(&mut self, topic: &Arc<str>) -> Result<(), String>;
    async fn unsubscribe(&mut self, topic: &Arc<str>) -> Result<(), String>;
    /// Sends `batch` in order; on error, how many of it were not sent, and why.
    async fn publish(&mut self, batch: &[Outbound]) -> Result<(), (usize, String)>;
}

/// Where the link delivers and what it reads.
pub(crate) struct Node {
    pub shared: Arc<Shared>,
    pub publisher: Publisher,
    pub max_message_size: usize,
    pub stop: Arc<Notify>,
}

/// Runs the link until `node.stop` is notified.
pub(crate) async fn run<B: Broker>(mut broker: B, node: Node) {
    let shared = node.shared.clone();
    let stats = &shared.stats;
    let mut subscriptions = Subscriptions::new(shared.config.unsubscribe_delay);
    let mut batch = Vec::with_capacity(BATCH);
    let mut was_up = false;
    loop {
        let deadline = subscriptions.next_deadline();
        let up = stats.is_up();
        // Unbiased: a flood from the broker must not starve the outbox, nor the other way.
        tokio::select! {
            _ = node.stop.notified() => break,
            event = broker.next() => match event {
                Event::Up => {
                    if was_up {
                        add(&stats.reconnects, 1);
                    }
                    was_up = true;
                    let topics: Vec<Arc<str>> = subscriptions.topics().cloned().collect();
                    let count = topics.len();
                    match broker.restore(topics).await {
                        Ok(()) => {
                            stats.set_up(true);
                            tracing::info!(topics = count, "cluster link up");
                            send(&mut broker, &shared, &mut batch).await;
                        }
                        Err(err) => tracing::warn!("cluster link: resubscribing failed: {err}"),
                    }
                }
                Event::Down(reason) => {
                    // Said when the link is lost, and when the first attempt fails.
                    if stats.set_up(false) || !was_up {
                        tracing::warn!("cluster link down: {reason}; reconnecting");
                    }
                }
                Event::Message(inbound) => deliver(&node, inbound),
                Event::Malformed(why) => {
                    add(&stats.malformed, 1);
                    tracing::debug!("cluster: a broker message was not delivered: {why}");
                }
            },
            _ = shared.interest.wake.notified() => {
                let now = std::time::Instant::now();
                for topic in shared.interest.take() {
                    let live = shared.is_live(&topic);
                    if let Some(change) = subscriptions.update(topic, live, now) {
                        apply(&mut broker, change).await;
                    }
                }
                count_subscriptions(&shared, &subscriptions);
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                let now = std::time::Instant::now();
                for change in subscriptions.expire(now, |topic| shared.is_live(topic)) {
                    apply(&mut broker, change).await;
                }
                count_subscriptions(&shared, &subscriptions);
            }
            _ = shared.outbox.wake.notified(), if up => send(&mut broker, &shared, &mut batch).await,
        }
    }
    if stats.is_up() {
        let _ = tokio::time::timeout(FINAL_FLUSH, send(&mut broker, &shared, &mut batch)).await;
    }
    stats.set_up(false);
}

fn count_subscriptions(shared: &Shared, subscriptions: &Subscriptions) {
    let count = subscriptions.len() as u64;
    shared.stats.subscriptions.store(count, Ordering::Relaxed);
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn apply<B: Broker>(broker: &mut B, change: Change) {
    let (what, result) = match &change {
        Change::Subscribe(topic) => ("subscribe to", broker.subscribe(topic).await),
        Change::Unsubscribe(topic) => ("unsubscribe from", broker.unsubscribe(topic).await),
    };
    if let Err(err) = result {
        // Down: the subscription is made again (or is gone) when the link comes back.
        tracing::debug!("cluster: cannot {what} {change:?} now: {err}");
    }
}

/// Sends everything queued, in order, while the broker takes it.
async fn send<B: Broker>(broker: &mut B, shared: &Shared, batch: &mut Vec<Outbound>) {
    loop {
        batch.clear();
        shared.outbox.take(BATCH, batch);
        if batch.is_empty() {
            return;
        }
        match broker.publish(batch).await {
            Ok(()) => add(&shared.stats.messages_out, batch.len()),
            Err((failed, err)) => {
                add(&shared.stats.publish_failures, failed);
                add(
                    &shared.stats.messages_out,
                    batch.len() - failed.min(batch.len()),
                );
                tracing::warn!(failed, "cluster: publishing to the broker failed: {err}");
                if !shared.stats.is_up() {
                    return;
                }
            }
        }
    }
}

/// Hands a broker message to the shards with subscribers, unless this node published it.
fn deliver(node: &Node, inbound: Inbound) {
    let stats = &node.shared.stats;
    if inbound.origin == Some(node.shared.node) {
        add(&stats.own_skipped, 1);
        return;
    }
    if inbound.payload.len() > node.max_message_size {
        add(&stats.malformed, 1);
        tracing::debug!(
            topic = inbound.topic,
            bytes = inbound.payload.len(),
            "cluster: a broker message over --max-message-size was not delivered"
        );
        return;
    }
    let message = if inbound.binary {
        Message::Binary(&inbound.payload)
    } else {
        match std::str::from_utf8(&inbound.payload) {
            Ok(text) => Message::Text(text),
            Err(_) => {
                add(&stats.malformed, 1);
                return;
            }
        }
    };
    add(&stats.messages_in, 1);
    // A shard behind refuses its share, counted in ringws_pubsub_backlog_refused_total.
    let _ = node.publisher.publish_inbound(&inbound.topic, message);
}
