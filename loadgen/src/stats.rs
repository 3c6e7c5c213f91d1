//! Counters and latency histograms: one set per worker thread, merged exactly at the end
//! (histograms are added, never averaged).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::reconnects::ReconnectLog;
use crate::sequence::Arrival;

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, at 3 significant digits.
const MAX_LATENCY_US: u64 = 600_000_000;

#[derive(Clone, Debug)]
pub struct Stats {
    pub connections_established: u64,
    pub connect_errors: u64,
    /// Connections that ended early: reset, closed by the server, or a protocol error.
    pub connections_dropped: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Received while the run was on, not while draining: what throughput is counted from.
    pub messages_in_window: u64,
    pub messages_corrupted: u64,
    pub messages_duplicated: u64,
    pub messages_reordered: u64,
    /// Messages sent that never arrived, intact or corrupted, by the end of the drain.
    pub messages_lost: u64,
    /// Bytes written to and read from the sockets once upgraded: frames as they cross the
    /// wire, compressed when permessage-deflate is on.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Socket writes and reads that moved those bytes: messages per call show how well
    /// the generator batches.
    pub writes: u64,
    pub reads: u64,
    /// `churn`: connections opened again, after a close, a drop or a refusal.
    pub reconnects: u64,
    /// `churn`: the longest a client took to reconnect after the storm (or its server's
    /// drop).
    pub storm_recovery_us: u64,
    /// `churn`: when clients came back, for the reconnect rate.
    pub reconnect_log: ReconnectLog,
    /// Complete once merged ([`Stats::merge`]) or sent ([`Stats::to_wire`]); before that
    /// the latest run of equal latencies may still be in `latency_run`.
    pub latency_us: Histogram<u64>,
    /// The latest run of equal latencies (value, count), not yet in `latency_us`. The
    /// messages of one completion batch mostly share their latency (sent together, read
    /// together), so a run costs one histogram record instead of one per message.
    pub(crate) latency_run: (u64, u64),
    pub handshake_us: Histogram<u64>,
    /// `wss://`: TLS handshakes, those that resumed a session, and the times from the
    /// connect's start to the TLS handshake's end and from there to the 101.
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    pub tls_handshake_us: Histogram<u64>,
    pub upgrade_us: Histogram<u64>,
    /// What the server agreed to in its upgrade (the first one seen): subprotocol and
    /// Sec-WebSocket-Extensions.
    pub protocol: Option<String>,
    pub extensions: Option<String>,
    /// How often each kind of error happened (at most [`MAX_ERROR_KINDS`] kinds; the rest
    /// count under one "other" entry).
    pub errors: BTreeMap<String, u64>,
}

const MAX_ERROR_KINDS: usize = 32;
const OTHER_ERRORS: &str = "other errors";

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            connections_established: 0,
            connect_errors: 0,
            connections_dropped: 0,
            messages_sent: 0,
            messages_received: 0,
            messages_in_window: 0,
            messages_corrupted: 0,
            messages_duplicated: 0,
            messages_reordered: 0,
            messages_lost: 0,
            bytes_sent: 0,
            bytes_received: 0,
            writes: 0,
            reads: 0,
            reconnects: 0,
            storm_recovery_us: 0,
            reconnect_log: ReconnectLog::default(),
            latency_us: histogram(),
            latency_run: (0, 0),
            handshake_us: histogram(),
            tls_handshakes: 0,
            tls_resumed: 0,
            tls_handshake_us: histogram(),
            upgrade_us: histogram(),
            protocol: None,
            extensions: None,
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    pub fn record_latency(&mut self, micros: u64) {
        let micros = micros.max(1);
        if self.latency_run.0 == micros {
            self.latency_run.1 += 1;
        } else {
            self.flush_latency_run();
            self.latency_run = (micros, 1);
        }
    }

    /// Records the pending run of equal latencies in `latency_us`.
    fn flush_latency_run(&mut self) {
        let (micros, count) = std::mem::take(&mut self.latency_run);
        if count > 0 {
            self.latency_us.saturating_record_n(micros, count);
        }
    }

    /// Counts a message with an intact stamp; returns whether it was new (not a duplicate).
    pub fn count_arrival(&mut self, arrival: Arrival, latency_us: u64) -> bool {
        match arrival {
            Arrival::Duplicate => {
                self.messages_duplicated += 1;
                return false;
            }
            Arrival::Late => self.messages_reordered += 1,
            Arrival::InOrder => {}
        }
        self.messages_received += 1;
        self.record_latency(latency_us);
        true
    }

    pub fn record_handshake(&mut self, micros: u64) {
        self.handshake_us.saturating_record(micros.max(1));
    }

    pub fn record_tls(&mut self, tls: &crate::open::TlsOpened) {
        self.tls_handshakes += 1;
        self.tls_resumed += u64::from(tls.resumed);
        let micros = |d: std::time::Duration| (d.as_micros() as u64).max(1);
        self.tls_handshake_us
            .saturating_record(micros(tls.handshake));
        self.upgrade_us.saturating_record(micros(tls.upgrade));
    }

    /// Counts one error under its message.
    pub fn note_error(&mut self, error: &dyn std::fmt::Display) {
        self.note_errors(error.to_string(), 1);
    }

    fn note_errors(&mut self, error: String, count: u64) {
        let key = if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&error) {
            error
        } else {
            OTHER_ERRORS.to_owned()
        };
        *self.errors.entry(key).or_insert(0) += count;
    }

    pub fn merge(&mut self, other: &Stats) {
        self.connections_established += other.connections_established;
        self.connect_errors += other.connect_errors;
        self.connections_dropped += other.connections_dropped;
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.messages_in_window += other.messages_in_window;
        self.messages_corrupted += other.messages_corrupted;
        self.messages_duplicated += other.messages_duplicated;
        self.messages_reordered += other.messages_reordered;
        self.messages_lost += other.messages_lost;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.writes += other.writes;
        self.reads += other.reads;
        self.reconnects += other.reconnects;
        self.storm_recovery_us = self.storm_recovery_us.max(other.storm_recovery_us);
        self.reconnect_log.merge(&other.reconnect_log);
        // Same bounds on both sides: adding cannot fail.
        self.flush_latency_run();
        let _ = self.latency_us.add(&other.latency_us);
        let (micros, count) = other.latency_run;
        if count > 0 {
            self.latency_us.saturating_record_n(micros, count);
        }
        let _ = self.handshake_us.add(&other.handshake_us);
        self.tls_handshakes += other.tls_handshakes;
        self.tls_resumed += other.tls_resumed;
        let _ = self.tls_handshake_us.add(&other.tls_handshake_us);
        let _ = self.upgrade_us.add(&other.upgrade_us);
        for (error, count) in &other.errors {
            self.note_errors(error.clone(), *count);
        }
        if self.protocol.is_none() {
            self.protocol.clone_from(&other.protocol);
        }
        if self.extensions.is_none() {
            self.extensions.clone_from(&other.extensions);
        }
    }
}

/// A histogram as (value, count) pairs: exact to rebuild, since every value names its bucket.
pub(crate) fn histogram_to_json(histogram: &Histogram<u64>) -> Value {
    histogram
        .iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

/// Why a worker process's statistics could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("a worker's statistics have no `{0}`")]
    Missing(&'static str),
    #[error("a worker's statistics have {found} counters, not {expected}")]
    Counters { found: usize, expected: usize },
    #[error("a worker's histogram entry `{0}` is not a (value, count) pair")]
    HistogramEntry(Value),
    #[error("a worker's histogram value {value} is out of range: {source}")]
    HistogramValue {
        value: u64,
        source: hdrhistogram::RecordError,
    },
}

pub(crate) fn histogram_from_json(
    value: &Value,
    field: &'static str,
) -> Result<Histogram<u64>, WireError> {
    let mut histogram = histogram();
    for pair in value.as_array().ok_or(WireError::Missing(field))? {
        let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
            return Err(WireError::HistogramEntry(pair.clone()));
        };
        histogram
            .record_n(value, count)
            .map_err(|source| WireError::HistogramValue { value, source })?;
    }
    Ok(histogram)
}

/// The counters a worker process hands to its parent, in the order of [`Stats::to_wire`]
/// (the names document the order).
const WIRE_COUNTERS: [&str; 18] = [
    "connections_established",
    "connect_errors",
    "connections_dropped",
    "messages_sent",
    "messages_received",
    "messages_in_window",
    "messages_corrupted",
    "messages_duplicated",
    "messages_reordered",
    "messages_lost",
    "bytes_sent",
    "bytes_received",
    "writes",
    "reads",
    "reconnects",
    "storm_recovery_us",
    "tls_handshakes",
    "tls_resumed",
];

impl Stats {
    fn counters_mut(&mut self) -> [&mut u64; 18] {
        [
            &mut self.connections_established,
            &mut self.connect_errors,
            &mut self.connections_dropped,
            &mut self.messages_sent,
            &mut self.messages_received,
            &mut self.messages_in_window,
            &mut self.messages_corrupted,
            &mut self.messages_duplicated,
            &mut self.messages_reordered,
            &mut self.messages_lost,
            &mut self.bytes_sent,
            &mut self.bytes_received,
            &mut self.writes,
            &mut self.reads,
            &mut self.reconnects,
            &mut self.storm_recovery_us,
            &mut self.tls_handshakes,
            &mut self.tls_resumed,
        ]
    }

    /// Everything, histograms included, for a parent process to merge exactly.
    pub fn to_wire(&self) -> Value {
        let mut copy = self.clone();
        copy.flush_latency_run();
        let counters: Vec<u64> = copy.counters_mut().iter().map(|c| **c).collect();
        json!({
            "counters": counters,
            "latency_us": histogram_to_json(&copy.latency_us),
            "handshake_us": histogram_to_json(&self.handshake_us),
            "tls_handshake_us": histogram_to_json(&self.tls_handshake_us),
            "upgrade_us": histogram_to_json(&self.upgrade_us),
            "errors": self.errors,
            "protocol": self.protocol,
            "extensions": self.extensions,
            "reconnect_log": self.reconnect_log.to_wire(),
        })
    }

    pub fn from_wire(value: &Value) -> Result<Stats, WireError> {
        let mut stats = Stats::default();
        let counters = value["counters"]
            .as_array()
            .ok_or(WireError::Missing("counters"))?;
        if counters.len() != WIRE_COUNTERS.len() {
            return Err(WireError::Counters {
                found: counters.len(),
                expected: WIRE_COUNTERS.len(),
            });
        }
        for (slot, counter) in stats.counters_mut().into_iter().zip(counters) {
            *slot = counter.as_u64().ok_or(WireError::Missing("counters"))?;
        }
        stats.latency_us = histogram_from_json(&value["latency_us"], "latency_us")?;
        stats.handshake_us = histogram_from_json(&value["handshake_us"], "handshake_us")?;
        stats.tls_handshake_us =
            histogram_from_json(&value["tls_handshake_us"], "tls_handshake_us")?;
        stats.upgrade_us = histogram_from_json(&value["upgrade_us"], "upgrade_us")?;
        for (error, count) in value["errors"].as_object().into_iter().flatten() {
            stats.note_errors(error.clone(), count.as_u64().unwrap_or(1));
        }
        stats.protocol = value["protocol"].as_str().map(str::to_owned);
        stats.extensions = value["extensions"].as_str().map(str::to_owned);
        stats.reconnect_log = ReconnectLog::from_wire(&value["reconnect_log"])?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Latencies with runs of equal values, as completion batches give them.
    const LATENCIES: [u64; 12] = [0, 1, 1, 5, 5, 5, 900, 5, 5, 70_000, 70_000, 1];

    fn recorded_one_by_one() -> Histogram<u64> {
        let mut expected = histogram();
        for micros in LATENCIES {
            expected.saturating_record(micros.max(1));
        }
        expected
    }

    #[test]
    fn runs_of_equal_latencies_all_reach_the_merged_histogram() {
        let mut thread = Stats::default();
        for micros in LATENCIES {
            thread.record_latency(micros);
        }
        let mut merged = Stats::default();
        merged.merge(&thread);
        let expected = recorded_one_by_one();
        assert_eq!(merged.latency_us, expected);
        assert_eq!(merged.latency_us.len(), LATENCIES.len() as u64);
        // Merging into a total that has a run of its own keeps both.
        merged.record_latency(5);
        let mut total = Stats::default();
        total.merge(&merged);
        assert_eq!(total.latency_us.len(), LATENCIES.len() as u64 + 1);
        assert_eq!(total.latency_us.count_at(5), expected.count_at(5) + 1);
    }

    #[test]
    fn the_wire_carries_the_pending_run() {
        let mut thread = Stats::default();
        for micros in LATENCIES {
            thread.record_latency(micros);
        }
        let back = Stats::from_wire(&thread.to_wire()).expect("own wire format reads back");
        assert_eq!(back.latency_us, recorded_one_by_one());
    }
}
