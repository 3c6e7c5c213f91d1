//! Counters and latency histograms: one set per worker thread, merged exactly at the end
//! (histograms are added, never averaged).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

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
    /// Messages sent and never answered by the end of the drain.
    pub messages_lost: u64,
    /// `churn`: connections closed to be opened again.
    pub reconnects: u64,
    /// `churn`: the longest a client took to reconnect after the storm.
    pub storm_recovery_us: u64,
    pub latency_us: Histogram<u64>,
    pub handshake_us: Histogram<u64>,
    /// How often each kind of error happened (at most [`MAX_ERROR_KINDS`] kinds; the rest
    /// count under one "other" entry).
    pub errors: BTreeMap<String, u64>,
}

const MAX_ERROR_KINDS: usize = 32;
const OTHER_ERRORS: &str = "other errors";

fn histogram() -> Histogram<u64> {
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
            reconnects: 0,
            storm_recovery_us: 0,
            latency_us: histogram(),
            handshake_us: histogram(),
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    pub fn record_latency(&mut self, micros: u64) {
        self.latency_us.saturating_record(micros.max(1));
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

    pub fn note_error(&mut self, error: String) {
        self.note_errors(error, 1);
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
        self.reconnects += other.reconnects;
        self.storm_recovery_us = self.storm_recovery_us.max(other.storm_recovery_us);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.handshake_us.add(&other.handshake_us);
        for (error, count) in &other.errors {
            self.note_errors(error.clone(), *count);
        }
    }
}

/// A histogram as (value, count) pairs: exact to rebuild, since every value names its bucket.
fn histogram_to_json(histogram: &Histogram<u64>) -> Value {
    histogram
        .iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

fn histogram_from_json(value: &Value) -> Result<Histogram<u64>, String> {
    let mut histogram = histogram();
    for pair in value.as_array().ok_or("a histogram is not a list")? {
        let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
            return Err(format!("bad histogram entry {pair}"));
        };
        histogram
            .record_n(value, count)
            .map_err(|e| format!("histogram entry {value}: {e}"))?;
    }
    Ok(histogram)
}

/// The counters a worker process hands to its parent, in the order of [`Stats::to_wire`].
const WIRE_COUNTERS: [&str; 12] = [
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
    "reconnects",
    "storm_recovery_us",
];

impl Stats {
    fn counters_mut(&mut self) -> [&mut u64; 12] {
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
            &mut self.reconnects,
            &mut self.storm_recovery_us,
        ]
    }

    /// Everything, histograms included, for a parent process to merge exactly.
    pub fn to_wire(&self) -> Value {
        let mut copy = self.clone();
        let counters: Vec<u64> = copy.counters_mut().iter().map(|c| **c).collect();
        json!({
            "counters": counters,
            "latency_us": histogram_to_json(&self.latency_us),
            "handshake_us": histogram_to_json(&self.handshake_us),
            "errors": self.errors,
        })
    }

    pub fn from_wire(value: &Value) -> Result<Stats, String> {
        let mut stats = Stats::default();
        let counters = value["counters"].as_array().ok_or("no counters")?;
        if counters.len() != WIRE_COUNTERS.len() {
            return Err(format!("expected {} counters", WIRE_COUNTERS.len()));
        }
        for (slot, counter) in stats.counters_mut().into_iter().zip(counters) {
            *slot = counter.as_u64().ok_or("a counter is not a number")?;
        }
        stats.latency_us = histogram_from_json(&value["latency_us"])?;
        stats.handshake_us = histogram_from_json(&value["handshake_us"])?;
        for (error, count) in value["errors"].as_object().into_iter().flatten() {
            stats.note_errors(error.clone(), count.as_u64().unwrap_or(1));
        }
        Ok(stats)
    }
}

/// One profile's share of a run with a link model.
pub struct ProfileReport<'a> {
    pub name: &'a str,
    pub stats: &'a Stats,
}

/// What a run measured, with what it took to measure it.
pub struct Report<'a> {
    pub scenario: &'a str,
    pub url: &'a str,
    pub connections: u64,
    pub duration_secs: f64,
    pub stats: &'a Stats,
    /// Per link profile, when a link model was on.
    pub profiles: &'a [ProfileReport<'a>],
    /// The generator's own CPU time over the run, as a share of the cores it ran on.
    pub cpu_percent: f64,
    pub threads: usize,
    /// The server's resident memory growth per connection, when its pid was given.
    pub server_bytes_per_connection: Option<f64>,
}

fn percentiles(histogram: &Histogram<u64>) -> Value {
    let at = |q: f64| {
        if histogram.is_empty() {
            0
        } else {
            histogram.value_at_quantile(q)
        }
    };
    json!({
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": histogram.max(),
        "mean": (histogram.mean() * 10.0).round() / 10.0,
        "count": histogram.len(),
    })
}

impl Report<'_> {
    pub fn throughput(&self) -> f64 {
        if self.duration_secs > 0.0 {
            self.stats.messages_in_window as f64 / self.duration_secs
        } else {
            0.0
        }
    }

    /// The JSON fields other tooling reads; see the README of the crate.
    pub fn to_json(&self) -> Value {
        let s = self.stats;
        json!({
            "scenario": self.scenario,
            "url": self.url,
            "connections": self.connections,
            "duration_secs": self.duration_secs,
            "connections_established": s.connections_established,
            "connect_errors": s.connect_errors,
            "connections_dropped": s.connections_dropped,
            "messages_sent": s.messages_sent,
            "messages_received": s.messages_received,
            "messages_lost": s.messages_lost,
            "messages_corrupted": s.messages_corrupted,
            "messages_duplicated": s.messages_duplicated,
            "messages_reordered": s.messages_reordered,
            "throughput_msgs_per_sec": self.throughput().round(),
            "latency_us": percentiles(&s.latency_us),
            "handshake_latency_us": percentiles(&s.handshake_us),
            "loadgen_cpu_percent": (self.cpu_percent * 10.0).round() / 10.0,
            "loadgen_threads": self.threads,
            "errors": s.errors,
            "reconnects": s.reconnects,
            "server_rss_bytes_per_connection": self.server_bytes_per_connection.map(f64::round),
            "storm_recovery_ms": s.storm_recovery_us as f64 / 1000.0,
            "profiles": self.profiles.iter().map(|p| json!({
                "name": p.name,
                "connections_established": p.stats.connections_established,
                "connections_dropped": p.stats.connections_dropped,
                "messages_sent": p.stats.messages_sent,
                "messages_received": p.stats.messages_received,
                "messages_lost": p.stats.messages_lost,
                "latency_us": percentiles(&p.stats.latency_us),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn print_table(&self) {
        let s = self.stats;
        let latency = &s.latency_us;
        let q = |q: f64| {
            if latency.is_empty() {
                0
            } else {
                latency.value_at_quantile(q)
            }
        };
        println!("scenario        {} against {}", self.scenario, self.url);
        println!(
            "connections     {} established, {} failed, {} dropped (of {})",
            s.connections_established, s.connect_errors, s.connections_dropped, self.connections
        );
        println!(
            "messages        {} sent, {} received in {:.1} s: {:.0} msg/s",
            s.messages_sent,
            s.messages_received,
            self.duration_secs,
            self.throughput()
        );
        println!(
            "integrity       {} lost, {} corrupted, {} duplicated, {} reordered",
            s.messages_lost, s.messages_corrupted, s.messages_duplicated, s.messages_reordered
        );
        println!(
            "latency (µs)    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            latency.max()
        );
        if !s.handshake_us.is_empty() {
            println!(
                "handshake (µs)  p50 {}  p99 {}  max {}",
                s.handshake_us.value_at_quantile(0.5),
                s.handshake_us.value_at_quantile(0.99),
                s.handshake_us.max()
            );
        }
        if let Some(bytes) = self.server_bytes_per_connection {
            println!("server memory   {bytes:.0} B resident per open connection");
        }
        if s.reconnects > 0 {
            println!(
                "churn           {} reconnects; after the storm all were back in {:.1} ms",
                s.reconnects,
                s.storm_recovery_us as f64 / 1000.0
            );
        }
        for p in self.profiles {
            let l = &p.stats.latency_us;
            let q = |q: f64| {
                if l.is_empty() {
                    0
                } else {
                    l.value_at_quantile(q)
                }
            };
            println!(
                "  {:<13} {} conns, {} received, {} lost; latency µs p50 {}  p99 {}  max {}",
                p.name,
                p.stats.connections_established,
                p.stats.messages_received,
                p.stats.messages_lost,
                q(0.5),
                q(0.99),
                l.max()
            );
        }
        println!(
            "generator       {} threads, {:.0}% CPU",
            self.threads, self.cpu_percent
        );
        for (error, count) in &s.errors {
            println!("error           {count} × {error}");
        }
    }
}
