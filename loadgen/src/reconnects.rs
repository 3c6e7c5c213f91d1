//! `churn`: when clients came back. A server that drains (or a load balancer that dies)
//! sends its clients somewhere all at once or spread out; what another server then takes is
//! a rate of reconnects over time, so that is what this records: reconnects per 100 ms on
//! the machine's monotonic clock (comparable across threads and processes), the first drop
//! and the last client back, and how long the reconnects' handshakes took.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::report::percentiles;
use crate::stats::{WireError, histogram, histogram_from_json, histogram_to_json};

/// The width of one step of the reconnect series.
pub const SLOT_NS: u64 = 100_000_000;
const SLOTS_PER_SEC: usize = (1_000_000_000 / SLOT_NS) as usize;

#[derive(Clone, Debug)]
pub struct ReconnectLog {
    /// Reconnects per slot: clock nanoseconds / [`SLOT_NS`] → count.
    slots: BTreeMap<u64, u64>,
    /// When a client was first dropped by its server (or the storm), clock nanoseconds.
    first_drop_ns: Option<u64>,
    /// When the last client dropped that way was back.
    last_back_ns: Option<u64>,
    /// Connect to 101 of each reconnect: what the storm cost the server that took it.
    pub handshake_us: Histogram<u64>,
}

impl Default for ReconnectLog {
    fn default() -> Self {
        ReconnectLog {
            slots: BTreeMap::new(),
            first_drop_ns: None,
            last_back_ns: None,
            handshake_us: histogram(),
        }
    }
}

impl ReconnectLog {
    /// A client lost its connection without asking to (the server ended it, or the storm).
    pub fn dropped(&mut self, now_ns: u64) {
        self.first_drop_ns = Some(self.first_drop_ns.map_or(now_ns, |at| at.min(now_ns)));
    }

    /// A client is connected again, its handshake having taken `handshake_us`; `after_drop`
    /// when it had been dropped rather than closed at the end of its lifetime.
    pub fn reconnected(&mut self, now_ns: u64, handshake_us: u64, after_drop: bool) {
        *self.slots.entry(now_ns / SLOT_NS).or_insert(0) += 1;
        self.handshake_us.saturating_record(handshake_us.max(1));
        if after_drop {
            self.last_back_ns = Some(self.last_back_ns.map_or(now_ns, |at| at.max(now_ns)));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.first_drop_ns.is_none()
    }

    pub fn merge(&mut self, other: &ReconnectLog) {
        for (slot, count) in &other.slots {
            *self.slots.entry(*slot).or_insert(0) += count;
        }
        self.first_drop_ns = min_some(self.first_drop_ns, other.first_drop_ns);
        self.last_back_ns = self.last_back_ns.max(other.last_back_ns);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.handshake_us.add(&other.handshake_us);
    }

    /// Reconnects per slot from the first drop (or the first reconnect) to the last
    /// reconnect, empty slots included.
    pub fn series(&self) -> Vec<u64> {
        let (Some(&first), Some(&last)) = (self.slots.keys().next(), self.slots.keys().last())
        else {
            return Vec::new();
        };
        let from = self
            .first_drop_ns
            .map_or(first, |at| (at / SLOT_NS).min(first));
        (from..=last)
            .map(|slot| self.slots.get(&slot).copied().unwrap_or(0))
            .collect()
    }

    /// The most reconnects in any one second (a sliding window of whole slots).
    pub fn peak_per_sec(&self) -> u64 {
        let series = self.series();
        if series.len() <= SLOTS_PER_SEC {
            return series.iter().sum();
        }
        series
            .windows(SLOTS_PER_SEC)
            .map(|w| w.iter().sum())
            .max()
            .unwrap_or(0)
    }

    /// The most reconnects in one slot.
    pub fn peak_per_slot(&self) -> u64 {
        self.slots.values().copied().max().unwrap_or(0)
    }

    /// From the first drop to the last dropped client back, in ms.
    pub fn all_back_ms(&self) -> Option<f64> {
        let (drop, back) = (self.first_drop_ns?, self.last_back_ns?);
        Some(back.saturating_sub(drop) as f64 / 1e6)
    }

    /// The report's `reconnect_rate`.
    pub fn to_json(&self) -> Value {
        json!({
            "interval_ms": SLOT_NS / 1_000_000,
            "per_interval": self.series(),
            "peak_per_sec": self.peak_per_sec(),
            "peak_per_interval": self.peak_per_slot(),
            "all_back_ms": self.all_back_ms().map(|ms| (ms * 10.0).round() / 10.0),
            "handshake_latency_us": percentiles(&self.handshake_us),
        })
    }

    /// The table's line, when there were reconnects.
    pub fn print(&self) {
        if self.is_empty() {
            return;
        }
        let all_back = self.all_back_ms().map_or(String::new(), |ms| {
            format!("; all back {ms:.0} ms after the first drop")
        });
        let p99 = match self.handshake_us.is_empty() {
            true => 0,
            false => self.handshake_us.value_at_quantile(0.99),
        };
        println!(
            "reconnect rate  peak {}/s ({} in the busiest {} ms){all_back}; handshake p99 {} µs",
            self.peak_per_sec(),
            self.peak_per_slot(),
            SLOT_NS / 1_000_000,
            p99,
        );
    }

    /// Everything, for a parent process to merge exactly.
    pub fn to_wire(&self) -> Value {
        json!({
            "slots": self.slots.iter().map(|(s, n)| [*s, *n]).collect::<Vec<_>>(),
            "first_drop_ns": self.first_drop_ns,
            "last_back_ns": self.last_back_ns,
            "handshake_us": histogram_to_json(&self.handshake_us),
        })
    }

    pub fn from_wire(value: &Value) -> Result<ReconnectLog, WireError> {
        let mut log = ReconnectLog::default();
        for pair in value["slots"]
            .as_array()
            .ok_or(WireError::Missing("reconnect slots"))?
        {
            let (Some(slot), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                return Err(WireError::Missing("reconnect slots"));
            };
            log.slots.insert(slot, count);
        }
        log.first_drop_ns = value["first_drop_ns"].as_u64();
        log.last_back_ns = value["last_back_ns"].as_u64();
        log.handshake_us = histogram_from_json(&value["handshake_us"], "reconnect handshakes")?;
        Ok(log)
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_storm_and_a_spread_drain_read_differently() {
        // 100 clients dropped at 10 s: all back within 100 ms, or spread over 5 s.
        let mut storm = ReconnectLog::default();
        let mut spread = ReconnectLog::default();
        for i in 0..100u64 {
            storm.dropped(10 * SEC);
            storm.reconnected(10 * SEC + i * 500_000, 300, true);
            spread.dropped(10 * SEC + i * 50_000_000);
            spread.reconnected(10 * SEC + i * 50_000_000 + 1_000_000, 300, true);
        }
        assert_eq!(storm.peak_per_sec(), 100);
        assert_eq!(storm.peak_per_slot(), 100);
        assert_eq!(spread.peak_per_sec(), 20);
        assert_eq!(spread.peak_per_slot(), 2);
        assert_eq!(storm.all_back_ms(), Some(49.5));
        assert_eq!(spread.all_back_ms(), Some(4951.0));
        assert_eq!(spread.series().len(), 50);
    }

    #[test]
    fn merging_and_the_wire_keep_everything() {
        let mut a = ReconnectLog::default();
        a.dropped(5 * SEC);
        a.reconnected(5 * SEC + 10, 100, true);
        let mut b = ReconnectLog::default();
        b.dropped(4 * SEC);
        b.reconnected(6 * SEC, 200, true);
        b.reconnected(7 * SEC, 200, false);
        a.merge(&b);
        assert_eq!(a.all_back_ms(), Some(2000.0));
        assert_eq!(a.series().iter().sum::<u64>(), 3);
        assert_eq!(a.series().len(), 31);
        let back = ReconnectLog::from_wire(&a.to_wire()).expect("round trip");
        assert_eq!(back.series(), a.series());
        assert_eq!(back.all_back_ms(), a.all_back_ms());
        assert_eq!(back.handshake_us.len(), 3);
    }
}
