//! `echo`: every message comes back, and is checked.
//!
//! Closed loop: the connection keeps `pipeline` messages in flight, each answer earning the
//! next send. Open loop: messages leave on a schedule, `rate` a second, each stamped with
//! the time it was due.

use std::sync::Arc;

use ringws::proto::OpCode;

use super::schedule::Schedule;
use super::{Ctx, Due};
use crate::messages::Payloads;
use crate::payload::Corrupt;
use crate::plan::Phase;
use crate::sequence::Tracker;

/// How each echo connection sends.
#[derive(Debug)]
pub struct Load {
    /// Messages kept in flight (closed loop).
    pub pipeline: u32,
    /// Messages per second per connection (open loop).
    pub rate: Option<f64>,
    pub payloads: Payloads,
}

pub struct Echo {
    id: u32,
    load: Arc<Load>,
    /// Messages sent: the next sequence number.
    sent: u32,
    /// The answers that came back intact.
    echoes: Tracker,
    /// Answers that came back changed: they answer some message, but none we can name.
    corrupted: u32,
    schedule: Option<Schedule>,
}

impl Echo {
    pub fn new(id: u32, load: Arc<Load>) -> Echo {
        Echo {
            id,
            load,
            sent: 0,
            echoes: Tracker::default(),
            corrupted: 0,
            schedule: None,
        }
    }

    pub fn payloads(&self) -> &Payloads {
        &self.load.payloads
    }

    /// Sent and not answered, intact or not.
    pub fn in_flight(&self) -> u32 {
        self.sent
            .saturating_sub(self.echoes.received())
            .saturating_sub(self.corrupted)
    }

    /// Each arrival is counted once: received (the first intact copy), duplicated (another
    /// copy) or corrupted (an answer whose message cannot be named, which is therefore not
    /// also lost).
    pub fn on_message(&mut self, opcode: OpCode, message: &[u8], ctx: &mut Ctx<'_>) {
        let stamp = self.load.payloads.read(opcode, message).and_then(|stamp| {
            match stamp.sender == self.id && stamp.sequence < self.sent {
                true => Ok(stamp),
                false => Err(Corrupt::Sender),
            }
        });
        let Ok(stamp) = stamp else {
            self.corrupted += 1;
            ctx.stats.messages_corrupted += 1;
            return;
        };
        let arrival = self.echoes.record(stamp.sequence);
        let latency_us = ctx.now_ns.saturating_sub(stamp.sent_at_ns) / 1000;
        if ctx.stats.count_arrival(arrival, latency_us) && ctx.phase == Phase::Running {
            ctx.stats.messages_in_window += 1;
        }
    }

    /// Messages to send now, at most `max`.
    pub fn due(&mut self, now_ns: u64, max: u64) -> Option<Due> {
        let (count, first_at_ns, period_ns) = match self.load.rate {
            None => {
                let room = self.load.pipeline.saturating_sub(self.in_flight());
                (u64::from(room).min(max), now_ns, 0)
            }
            Some(rate) => {
                // Connections start spread over one period, so they do not send in step.
                let id = self.id;
                let schedule = self.schedule.get_or_insert_with(|| {
                    let period_ns = 1e9 / rate;
                    let offset = period_ns * f64::from(id % 997) / 997.0;
                    Schedule::new(rate, now_ns + offset as u64)
                });
                let (_, count, first_at_ns) = schedule.take_due(now_ns, max)?;
                (count, first_at_ns, schedule.period_ns())
            }
        };
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        (count > 0).then_some(Due {
            sender: self.id,
            first_sequence: self.sent,
            count,
            first_at_ns,
            period_ns,
        })
    }

    pub fn sent(&mut self, count: u32) {
        self.sent = self.sent.wrapping_add(count);
    }

    pub fn next_due(&self) -> Option<u64> {
        self.schedule.as_ref().map(Schedule::next_at)
    }

    /// Sent, and never answered.
    pub fn lost(&self) -> u64 {
        u64::from(self.in_flight())
    }
}
