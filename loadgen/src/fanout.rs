//! The `fanout` scenario: publishers and subscribers on one pub/sub topic (`/pubsub/<topic>`
//! on `ringws serve`).
//!
//! Connections `0..publishers` publish at a fixed rate, each message stamped with its
//! publisher, sequence number and the time it was due; every other connection subscribes
//! and checks that it receives every message of every publisher, in order, intact. Delivery
//! latency runs from the publish time carried in the payload to the moment the subscriber
//! reads it. Publishers read (and discard) what other publishers send, so they never stall
//! the server.
//!
//! When the run ends the publishers stop; each subscriber waits (at most the drain time)
//! until it has everything that was published, then closes. What it never received counts
//! as lost.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::echo::give_up_on_close;
use crate::link::Link;
use crate::payload::Stamp;
use crate::run::{Clock, Phase};
use crate::sequence::Tracker;
use crate::stats::Stats;
use crate::wire::{Heard, MaskSource, read_until_close};

/// How the fanout scenario runs.
#[derive(Debug)]
pub struct Fanout {
    pub publishers: u32,
    /// Messages per second of each publisher.
    pub rate: f64,
    pub message_size: usize,
    pub drain: Duration,
    /// Messages each publisher has sent so far, read by every subscriber at the end. With
    /// worker processes, publishers elsewhere have their counts filled in by the parent.
    pub published: Box<[AtomicU32]>,
    /// Publishers of this process that have stopped.
    pub stopped: AtomicU32,
    /// Publishers of this process; the others run in other worker processes.
    pub local_publishers: u32,
    /// Set when the counts of publishers in other processes are in.
    pub remote_counts_in: AtomicBool,
}

impl Fanout {
    pub fn new(
        publishers: u32,
        local_publishers: u32,
        rate: f64,
        message_size: usize,
        drain: Duration,
    ) -> Self {
        Self {
            publishers,
            rate,
            message_size,
            drain,
            published: (0..publishers).map(|_| AtomicU32::new(0)).collect(),
            stopped: AtomicU32::new(0),
            local_publishers,
            remote_counts_in: AtomicBool::new(local_publishers == publishers),
        }
    }

    /// Whether every publisher's final count is known here.
    fn counts_final(&self) -> bool {
        self.stopped.load(Ordering::Acquire) >= self.local_publishers
            && self.remote_counts_in.load(Ordering::Acquire)
    }

    /// Once this process's publishers have stopped: their final counts.
    pub fn local_counts(&self) -> Option<Vec<(u32, u32)>> {
        (self.stopped.load(Ordering::Acquire) >= self.local_publishers).then(|| {
            (0..self.publishers)
                .map(|p| (p, self.sent_by(p as usize)))
                .collect()
        })
    }

    /// Counts from other processes' publishers, as the parent relays them.
    pub fn set_remote_counts(&self, counts: &[(u32, u32)]) {
        for &(publisher, count) in counts {
            if let Some(slot) = self.published.get(publisher as usize) {
                slot.fetch_max(count, Ordering::AcqRel);
            }
        }
        self.remote_counts_in.store(true, Ordering::Release);
    }

    fn sent_by(&self, publisher: usize) -> u32 {
        self.published[publisher].load(Ordering::Acquire)
    }

    fn sent_total(&self) -> u64 {
        (0..self.published.len())
            .map(|p| u64::from(self.sent_by(p)))
            .sum()
    }
}

/// What goes out on a connection, in order, through its one writer.
enum Out {
    /// A binary message, framed and masked by the writer.
    Message(Vec<u8>),
    /// Bytes the session already framed (pongs, the reply to a close).
    Raw(Vec<u8>),
    /// Close with 1000.
    Close,
}

/// What a connection's tasks share.
struct Conn {
    id: u32,
    /// We began the close: the server's close and EOF are expected now.
    closing: Cell<bool>,
    stats: Rc<RefCell<Stats>>,
}

impl Conn {
    fn fail(&self, error: String) {
        if !self.closing.get() {
            let mut stats = self.stats.borrow_mut();
            stats.connections_dropped += 1;
            stats.note_error(error);
        }
    }
}

/// A subscriber's view: one sequence per publisher.
struct Subscriber {
    trackers: RefCell<Vec<Tracker>>,
    /// Distinct messages received, over all publishers.
    received: Cell<u64>,
}

pub async fn run(
    stream: Rc<Link>,
    leftover: Vec<u8>,
    id: u32,
    plan: Arc<Fanout>,
    clock: Clock,
    phase: watch::Receiver<Phase>,
    stats: Rc<RefCell<Stats>>,
) {
    let conn = Rc::new(Conn {
        id,
        closing: Cell::new(false),
        stats,
    });
    let (outbox, rx) = mpsc::unbounded_channel();
    let writer = tokio_uring::spawn(write_out(stream.clone(), rx, conn.clone()));
    if id < plan.publishers {
        let reader = tokio_uring::spawn(read_loop(
            stream.clone(),
            leftover,
            conn.clone(),
            None,
            plan.clone(),
            clock,
            phase.clone(),
            outbox.clone(),
        ));
        publish(&conn, &plan, clock, phase, &outbox).await;
        drop(outbox);
        let give_up = tokio_uring::spawn({
            let (stream, stats) = (stream.clone(), conn.stats.clone());
            async move { give_up_on_close(&stream, &stats).await }
        });
        let _ = reader.await;
        give_up.abort();
    } else {
        let subscriber = Rc::new(Subscriber {
            trackers: RefCell::new((0..plan.publishers).map(|_| Tracker::default()).collect()),
            received: Cell::new(0),
        });
        let closer = tokio_uring::spawn(close_when_complete(
            stream.clone(),
            conn.clone(),
            subscriber.clone(),
            plan.clone(),
            phase.clone(),
            outbox.clone(),
        ));
        read_loop(
            stream.clone(),
            leftover,
            conn.clone(),
            Some(subscriber.clone()),
            plan.clone(),
            clock,
            phase,
            outbox,
        )
        .await;
        closer.abort();
        let trackers = subscriber.trackers.borrow();
        let mut stats = conn.stats.borrow_mut();
        for (publisher, tracker) in trackers.iter().enumerate() {
            let missing = plan.sent_by(publisher).saturating_sub(tracker.received());
            stats.messages_lost += u64::from(missing);
        }
    }
    let _ = writer.await;
}

/// Sends stamped messages at the publisher's rate while the run is on, then closes.
async fn publish(
    conn: &Conn,
    plan: &Fanout,
    clock: Clock,
    mut phase: watch::Receiver<Phase>,
    outbox: &mpsc::UnboundedSender<Out>,
) {
    let _ = phase.wait_for(|p| *p != Phase::Connecting).await;
    if plan.rate > 0.0 {
        let period = Duration::from_secs_f64(1.0 / plan.rate);
        let offset = period.mul_f64(f64::from(conn.id) / f64::from(plan.publishers.max(1)));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let counter = &plan.published[conn.id as usize];
        let mut sequence = 0;
        loop {
            tokio::select! {
                at = ticks.tick() => {
                    if *phase.borrow() != Phase::Running {
                        break;
                    }
                    let mut message = Vec::with_capacity(plan.message_size);
                    Stamp {
                        connection: conn.id,
                        sequence,
                        sent_at_ns: clock.ns_at(at.into_std()),
                    }
                    .write(plan.message_size, &mut message);
                    if outbox.send(Out::Message(message)).is_err() {
                        break;
                    }
                    sequence += 1;
                    counter.store(sequence, Ordering::Release);
                    conn.stats.borrow_mut().messages_sent += 1;
                }
                _ = phase.changed() => {
                    if *phase.borrow() != Phase::Running {
                        break;
                    }
                }
            }
        }
    }
    plan.stopped.fetch_add(1, Ordering::AcqRel);
    let _ = phase.wait_for(|p| *p != Phase::Running).await;
    conn.closing.set(true);
    let _ = outbox.send(Out::Close);
}

/// Once the run is over, closes as soon as every published message is in, or after the
/// drain time.
async fn close_when_complete(
    link: Rc<Link>,
    conn: Rc<Conn>,
    subscriber: Rc<Subscriber>,
    plan: Arc<Fanout>,
    mut phase: watch::Receiver<Phase>,
    outbox: mpsc::UnboundedSender<Out>,
) {
    let _ = phase.wait_for(|p| *p == Phase::Draining).await;
    let give_up = tokio::time::Instant::now() + plan.drain;
    while !(plan.counts_final() && subscriber.received.get() >= plan.sent_total())
        && tokio::time::Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    conn.closing.set(true);
    let _ = outbox.send(Out::Close);
    give_up_on_close(&link, &conn.stats).await;
}

/// Reads until the close: a subscriber accounts for every message, a publisher discards
/// them; both answer pings.
#[allow(clippy::too_many_arguments)]
async fn read_loop(
    stream: Rc<Link>,
    pending: Vec<u8>,
    conn: Rc<Conn>,
    subscriber: Option<Rc<Subscriber>>,
    plan: Arc<Fanout>,
    clock: Clock,
    phase: watch::Receiver<Phase>,
    outbox: mpsc::UnboundedSender<Out>,
) {
    let ended = read_until_close(
        &stream,
        pending,
        clock,
        &conn.closing,
        |heard| match heard {
            Heard::Binary(message, now_ns) => {
                if let Some(subscriber) = &subscriber {
                    let running = *phase.borrow() == Phase::Running;
                    deliver(&conn, subscriber, &plan, message, now_ns, running);
                }
            }
            Heard::Text => conn.stats.borrow_mut().messages_corrupted += 1,
            Heard::Done { replies } | Heard::Closed { replies } => {
                if !replies.is_empty() {
                    let _ = outbox.send(Out::Raw(replies));
                }
            }
        },
    )
    .await;
    if let Err(error) = ended {
        conn.fail(error);
    }
}

/// Accounts for one message a subscriber received.
fn deliver(
    conn: &Conn,
    subscriber: &Subscriber,
    plan: &Fanout,
    message: &[u8],
    now_ns: u64,
    running: bool,
) {
    let mut stats = conn.stats.borrow_mut();
    let stamp = match Stamp::read_any(message, plan.message_size) {
        Ok(stamp) if stamp.connection < plan.publishers => stamp,
        _ => {
            stats.messages_corrupted += 1;
            return;
        }
    };
    let arrival =
        subscriber.trackers.borrow_mut()[stamp.connection as usize].record(stamp.sequence);
    let latency_us = now_ns.saturating_sub(stamp.sent_at_ns) / 1000;
    if stats.count_arrival(arrival, latency_us) {
        subscriber.received.set(subscriber.received.get() + 1);
        if running {
            stats.messages_in_window += 1;
        }
    }
}

/// The connection's only writer: frames leave in the order they were queued, batched into
/// one write when several are waiting.
async fn write_out(stream: Rc<Link>, mut rx: mpsc::UnboundedReceiver<Out>, conn: Rc<Conn>) {
    let mut out = Vec::with_capacity(4096);
    let mut mask = MaskSource::new(conn.id);
    let mut closed = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take().or_else(|| rx.try_recv().ok()) {
            match item {
                Out::Raw(bytes) => out.extend_from_slice(&bytes),
                Out::Message(_) | Out::Close if closed => {}
                Out::Message(message) => mask.binary(&message, &mut out),
                Out::Close => {
                    mask.close(&mut out);
                    closed = true;
                }
            }
        }
        if out.is_empty() {
            continue;
        }
        let (result, written) = stream.write_all(out).await;
        out = written;
        out.clear();
        if let Err(error) = result {
            conn.fail(format!("write: {error}"));
            return;
        }
    }
}
