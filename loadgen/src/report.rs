//! What a run measured, as a table on stdout and as JSON: the fields other tooling reads.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::stats::Stats;
use crate::threshold::{Latency, Metric};

/// One profile's share of a run with a link model.
pub struct ProfileReport<'a> {
    pub name: &'a str,
    /// The profile's configured round trip.
    pub rtt: Duration,
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
    pub profiles: Vec<ProfileReport<'a>>,
    /// The generator's own CPU time over the run, as a share of the cores it ran on.
    pub cpu_percent: f64,
    pub threads: usize,
    /// The server's resident memory growth per connection, when its pid was given.
    pub server_bytes_per_connection: Option<f64>,
}

/// Latency percentiles as the JSON report gives them.
pub fn percentiles(histogram: &Histogram<u64>) -> Value {
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
    /// A value a threshold can test, in the threshold's unit; `None` when this run has none.
    pub fn metric(&self, metric: Metric) -> Option<f64> {
        let s = self.stats;
        let latency = |histogram: &Histogram<u64>, which: Latency| {
            (!histogram.is_empty()).then(|| match which {
                Latency::Percentile(ppm) => {
                    histogram.value_at_quantile(f64::from(ppm) / 1e6) as f64
                }
                Latency::Max => histogram.max() as f64,
                Latency::Mean => histogram.mean(),
            })
        };
        Some(match metric {
            Metric::Latency(which) => return latency(&s.latency_us, which),
            Metric::Handshake(which) => return latency(&s.handshake_us, which),
            Metric::Rate => self.throughput(),
            Metric::Lost => s.messages_lost as f64,
            Metric::Corrupted => s.messages_corrupted as f64,
            Metric::Duplicated => s.messages_duplicated as f64,
            Metric::Reordered => s.messages_reordered as f64,
            Metric::Errors => (s.connect_errors + s.connections_dropped) as f64,
            Metric::ConnectErrors => s.connect_errors as f64,
            Metric::Dropped => s.connections_dropped as f64,
            Metric::Cpu => self.cpu_percent,
            Metric::Ratio | Metric::MaxRate => return None,
        })
    }

    pub fn throughput(&self) -> f64 {
        if self.duration_secs > 0.0 {
            self.stats.messages_in_window as f64 / self.duration_secs
        } else {
            0.0
        }
    }

    /// Bytes on the wire per message, each way: what compression saves shows here.
    pub fn wire_per_message(&self) -> (f64, f64) {
        let s = self.stats;
        let per = |bytes: u64, messages: u64| {
            if messages == 0 {
                0.0
            } else {
                bytes as f64 / messages as f64
            }
        };
        let arrivals = s.messages_received + s.messages_duplicated + s.messages_corrupted;
        (
            per(s.bytes_sent, s.messages_sent),
            per(s.bytes_received, arrivals),
        )
    }

    /// The JSON fields other tooling reads (docs/loadgen.md lists them).
    pub fn to_json(&self) -> Value {
        let s = self.stats;
        let (sent_per_message, received_per_message) = self.wire_per_message();
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
            "tls": (s.tls_handshakes > 0).then(|| json!({
                "handshakes": s.tls_handshakes,
                "resumed": s.tls_resumed,
                "handshake_latency_us": percentiles(&s.tls_handshake_us),
                "upgrade_latency_us": percentiles(&s.upgrade_us),
            })),
            "loadgen_cpu_percent": (self.cpu_percent * 10.0).round() / 10.0,
            "loadgen_threads": self.threads,
            "errors": s.errors,
            "reconnects": s.reconnects,
            "server_rss_bytes_per_connection": self.server_bytes_per_connection.map(f64::round),
            "storm_recovery_ms": s.storm_recovery_us as f64 / 1000.0,
            "reconnect_rate": (!s.reconnect_log.is_empty()).then(|| s.reconnect_log.to_json()),
            "wire": {
                "bytes_sent": s.bytes_sent,
                "bytes_received": s.bytes_received,
                "bytes_sent_per_message": (sent_per_message * 10.0).round() / 10.0,
                "bytes_received_per_message": (received_per_message * 10.0).round() / 10.0,
                "writes": s.writes,
                "reads": s.reads,
            },
            "negotiated": {
                "protocol": s.protocol,
                "extensions": s.extensions,
            },
            "profiles": self.profiles.iter().map(|p| json!({
                "name": p.name,
                "rtt_ms": p.rtt.as_secs_f64() * 1000.0,
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
        if s.messages_sent > 0 {
            let (sent, received) = self.wire_per_message();
            let per = |messages: u64, calls: u64| messages as f64 / calls.max(1) as f64;
            println!(
                "wire            {sent:.1} B per message sent, {received:.1} B per message \
                 received; {:.1} messages per write, {:.1} per read",
                per(s.messages_sent, s.writes),
                per(s.messages_received, s.reads),
            );
        }
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
        if s.tls_handshakes > 0 {
            let q = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q);
            println!(
                "tls             {} handshakes, {} resumed; handshake µs p50 {}  p99 {}, \
                 then upgrade µs p50 {}  p99 {}",
                s.tls_handshakes,
                s.tls_resumed,
                q(&s.tls_handshake_us, 0.5),
                q(&s.tls_handshake_us, 0.99),
                q(&s.upgrade_us, 0.5),
                q(&s.upgrade_us, 0.99),
            );
        }
        if let Some(bytes) = self.server_bytes_per_connection {
            println!("server memory   {bytes:.0} B resident per open connection");
        }
        if s.reconnects > 0 {
            println!(
                "churn           {} reconnects; a dropped client was back within {:.1} ms",
                s.reconnects,
                s.storm_recovery_us as f64 / 1000.0
            );
        }
        s.reconnect_log.print();
        for p in &self.profiles {
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
