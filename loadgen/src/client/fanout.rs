//! `fanout`: publishers and subscribers on one pub/sub topic (`/pubsub/<topic>` on
//! `ringws serve`).
//!
//! Connections `0..publishers` publish at a fixed rate, each message stamped with its
//! publisher, sequence number and the time it was due; every other connection subscribes
//! and checks that it receives every message of every publisher, in order, intact. Delivery
//! latency runs from the publish time carried in the message to the moment the subscriber
//! reads it. When the run ends the publishers stop; a subscriber waits (at most the drain
//! time) until it has everything that was published, then closes. What it never received
//! counts as lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use ringws::proto::OpCode;

use super::schedule::Schedule;
use super::{Ctx, Due};
use crate::messages::Payloads;
use crate::plan::Phase;
use crate::sequence::Tracker;

/// The fanout scenario's shared state: its settings, and every publisher's count.
#[derive(Debug)]
pub struct Fanout {
    pub publishers: u32,
    /// Messages per second of each publisher.
    pub rate: f64,
    pub payloads: Payloads,
    /// Messages each publisher has sent so far, read by every subscriber at the end. With
    /// worker processes, publishers elsewhere have their counts filled in by the parent.
    published: Box<[AtomicU32]>,
    /// Publishers of this process that have stopped (or never started).
    stopped: AtomicU32,
    /// Publishers of this process; the others run in other worker processes.
    local_publishers: u32,
    /// Set when the counts of publishers in other processes are in.
    remote_counts_in: AtomicBool,
}

impl Fanout {
    pub fn new(publishers: u32, local_publishers: u32, rate: f64, payloads: Payloads) -> Self {
        Self {
            publishers,
            rate,
            payloads,
            published: (0..publishers).map(|_| AtomicU32::new(0)).collect(),
            stopped: AtomicU32::new(0),
            local_publishers,
            remote_counts_in: AtomicBool::new(local_publishers == publishers),
        }
    }

    /// Whether connection `id` publishes.
    pub fn is_publisher(&self, id: u32) -> bool {
        id < self.publishers
    }

    /// A publisher of this process is done publishing (or never got to start).
    pub fn publisher_stopped(&self) {
        self.stopped.fetch_add(1, Ordering::AcqRel);
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

/// A publishing connection.
pub struct Publisher {
    id: u32,
    plan: Arc<Fanout>,
    schedule: Option<Schedule>,
    sent: u32,
    stopped: bool,
}

impl Publisher {
    pub fn new(id: u32, plan: Arc<Fanout>) -> Publisher {
        Publisher {
            id,
            plan,
            schedule: None,
            sent: 0,
            stopped: false,
        }
    }

    pub fn payloads(&self) -> &Payloads {
        &self.plan.payloads
    }

    /// Messages to publish now, at most `max`.
    pub fn due(&mut self, now_ns: u64, max: u64) -> Option<Due> {
        if self.stopped || self.plan.rate <= 0.0 {
            return None;
        }
        let (id, plan) = (self.id, &self.plan);
        // Publishers start spread over one period.
        let schedule = self.schedule.get_or_insert_with(|| {
            let offset = 1e9 / plan.rate * f64::from(id) / f64::from(plan.publishers.max(1));
            Schedule::new(plan.rate, now_ns + offset as u64)
        });
        let (_, count, first_at_ns) = schedule.take_due(now_ns, max)?;
        Some(Due {
            sender: self.id,
            first_sequence: self.sent,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            first_at_ns,
            period_ns: schedule.period_ns(),
        })
    }

    pub fn sent(&mut self, count: u32) {
        self.sent = self.sent.wrapping_add(count);
        self.plan.published[self.id as usize].store(self.sent, Ordering::Release);
    }

    pub fn next_due(&self) -> Option<u64> {
        self.schedule
            .as_ref()
            .filter(|_| !self.stopped)
            .map(Schedule::next_at)
    }

    /// Publishing is over; the count this publisher leaves is final.
    pub fn stop(&mut self) {
        if !std::mem::replace(&mut self.stopped, true) {
            self.plan.publisher_stopped();
        }
    }
}

/// A subscribing connection: one sequence per publisher.
pub struct Subscriber {
    plan: Arc<Fanout>,
    trackers: Vec<Tracker>,
    /// Distinct messages received intact, over all publishers.
    received: u64,
    /// Arrivals that were not a message any publisher sent intact.
    corrupted: u64,
}

impl Subscriber {
    pub fn new(plan: Arc<Fanout>) -> Subscriber {
        Subscriber {
            trackers: (0..plan.publishers).map(|_| Tracker::default()).collect(),
            plan,
            received: 0,
            corrupted: 0,
        }
    }

    /// Counts one arrival once: received, duplicated or corrupted.
    pub fn on_message(&mut self, opcode: OpCode, message: &[u8], ctx: &mut Ctx<'_>) {
        let stamp = self.plan.payloads.read(opcode, message);
        let Some((stamp, tracker)) = stamp
            .ok()
            .and_then(|stamp| Some((stamp, self.trackers.get_mut(stamp.sender as usize)?)))
        else {
            self.corrupted += 1;
            ctx.stats.messages_corrupted += 1;
            return;
        };
        let arrival = tracker.record(stamp.sequence);
        let latency_us = ctx.now_ns.saturating_sub(stamp.sent_at_ns) / 1000;
        if ctx.stats.count_arrival(arrival, latency_us) {
            self.received += 1;
            if ctx.phase == Phase::Running {
                ctx.stats.messages_in_window += 1;
            }
        }
    }

    /// Everything published has arrived (or arrived corrupted).
    pub fn complete(&self) -> bool {
        self.plan.counts_final() && self.received + self.corrupted >= self.plan.sent_total()
    }

    /// Published and never arrived: what each publisher sent beyond what came from it,
    /// less the corrupted arrivals, which stand for messages that did arrive.
    pub fn lost(&self) -> u64 {
        let missing: u64 = self
            .trackers
            .iter()
            .enumerate()
            .map(|(publisher, tracker)| {
                u64::from(
                    self.plan
                        .sent_by(publisher)
                        .saturating_sub(tracker.received()),
                )
            })
            .sum();
        missing.saturating_sub(self.corrupted)
    }
}
