//! The command line, and the run it describes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ringws::proto::deflate::DeflateConfig;

use crate::client::{Fanout, Load};
use crate::cycle::Churn;
use crate::messages::Payloads;
use crate::nodes::{Servers, ServersError};
use crate::payload;
use crate::plan::{Plan, Share, Workload};
use crate::processes;
use crate::profile::{self, Mix, Profile, ProfileError};
use crate::target::{Target, UrlError};
use crate::templates::{Order, TemplateError, Templates};
use crate::threshold::{Threshold, ThresholdError};
use crate::tls::{TlsArgs, TlsClient, TlsSetupError};
use crate::upgrade::Upgrade;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Messages echoed back: closed loop (`--pipeline`) or open loop (`--rate`).
    Echo,
    /// Open the connections and keep them, sending nothing.
    Hold,
    /// Publishers and subscribers on one pub/sub topic: `--url` names it
    /// (ws://HOST:PORT/pubsub/TOPIC); `--connections` subscribers, `--publishers` more
    /// connections publishing `--rate` messages per second in total.
    Fanout,
    /// Connect, upgrade and close as fast as the server allows, on `--connections` loops:
    /// handshakes per second and their latency.
    Handshake,
    /// `--connections` clients that each live a random lifetime (mean `--lifetime`) and
    /// reconnect; at `--storm-after` every client drops at once and reconnects within
    /// `--storm-jitter`, and the report gives the time until all were back.
    Churn,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Hold => "hold",
            Scenario::Fanout => "fanout",
            Scenario::Handshake => "handshake",
            Scenario::Churn => "churn",
        }
    }
}

/// Load generator for WebSocket servers: throughput, latency and message integrity.
///
/// Exits 0 when every connection opened and every message came back intact, 1 otherwise,
/// 2 on a usage error. With --threshold the thresholds decide instead: 0 when all pass, 99
/// when any fails.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// The server: ws://HOST:PORT/PATH. Repeat it for several servers (the nodes of a
    /// cluster): connections take them in turn, and the report gives each node's share.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:9001/loadgen"
    )]
    pub urls: Vec<String>,
    /// `fanout`: a server for the publishers (repeatable, taken in turn), while the
    /// subscribers connect to the --url servers [default: the --url servers].
    #[arg(long = "publish-url", value_name = "URL")]
    pub publish_urls: Vec<String>,
    #[arg(long, value_enum, default_value = "echo")]
    pub scenario: Scenario,
    #[arg(long, default_value_t = 100)]
    pub connections: u32,
    /// Seconds of measurement, after every connection is open.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages each connection keeps in flight (closed loop).
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// Total messages per second over all connections (open loop); latency then counts from
    /// each message's scheduled time. For `fanout`: messages published per second, over
    /// all publishers [default: 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// `fanout`: connections that publish, in addition to the subscribers.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Connections started per second (all of them: over threads and processes); default:
    /// as fast as --connect-concurrency allows.
    #[arg(long)]
    pub ramp: Option<f64>,
    /// The server's process id: the report gives its memory growth per open connection
    /// (resident memory read from /proc before connecting and once all are open).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// `churn`: mean seconds a connection stays open before it closes and reconnects.
    #[arg(long, default_value_t = 5.0)]
    pub lifetime: f64,
    /// `churn`: seconds into the run when every client drops at once [default: half of
    /// --duration]; a negative value turns the storm off.
    #[arg(long, allow_hyphen_values = true)]
    pub storm_after: Option<f64>,
    /// `churn`: seconds over which the storm's reconnects are spread.
    #[arg(long, default_value_t = 1.0)]
    pub storm_jitter: f64,
    /// Bytes per message; 20 is the smallest that carries the integrity stamp.
    #[arg(long, default_value_t = 20)]
    pub message_size: usize,
    /// Messages from a file instead of filler: one JSON object per line, or a directory
    /// with one JSON object per file. Each is sent as text with the integrity stamp in the
    /// --stamp-field field, which the server must echo.
    #[arg(long, value_name = "FILE|DIR")]
    pub payload: Option<PathBuf>,
    /// The order --payload messages are sent in.
    #[arg(long, value_enum, default_value_t = Order::InOrder, requires = "payload")]
    pub payload_order: Order,
    /// The JSON field that carries the integrity stamp in --payload messages.
    #[arg(long, default_value = "ringws_stamp", requires = "payload")]
    pub stamp_field: String,
    /// An extra header field for the upgrade request, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Sends `Authorization: Bearer TOKEN` with the upgrade request.
    #[arg(long)]
    pub token: Option<String>,
    /// A subprotocol to offer (repeatable, in order of preference); the server must pick one.
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Offer permessage-deflate; the report then gives bytes on the wire per message.
    #[arg(long)]
    pub deflate: bool,
    /// The largest window (9-15 bits) this client compresses with.
    #[arg(long, default_value_t = 15, requires = "deflate")]
    pub deflate_window: u8,
    /// Ask the server to compress with at most this window (9-15 bits).
    #[arg(long, default_value_t = 15, requires = "deflate")]
    pub deflate_server_window: u8,
    /// Compress every message from a fresh state (client_no_context_takeover).
    #[arg(long, requires = "deflate")]
    pub deflate_no_takeover: bool,
    /// Ask the server to compress every message from a fresh state
    /// (server_no_context_takeover).
    #[arg(long, requires = "deflate")]
    pub deflate_server_no_takeover: bool,
    /// Messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = 64, requires = "deflate")]
    pub deflate_min_size: usize,
    /// Worker threads, each with its own io_uring; defaults to one per CPU this process may
    /// run on (its affinity mask, so `taskset -c 1` means one).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds to wait for messages still in flight when the run ends; later ones count as
    /// lost.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Seconds allowed for opening every connection [default: 60, plus one for every 1,000
    /// connections beyond 10,000, so a quarter of a million have 300].
    #[arg(long)]
    pub connect_timeout: Option<f64>,
    /// Handshakes in progress at once, per thread.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// The network every client sees: a preset (none, wifi, lte, 4g, fast-3g, slow-3g,
    /// satellite, rural) or `NAME,key=value,...` with rtt, jitter, down, up, rcvbuf,
    /// stall-every, stall-for changed (`custom,...` starts from no shaping).
    #[arg(long, default_value = "none", conflicts_with = "profile_mix")]
    pub profile: String,
    /// A population of presets with weights, e.g. `90:wifi,10:slow-3g`; the report gives
    /// latency per profile.
    #[arg(long)]
    pub profile_mix: Option<String>,
    /// Worker processes, each with a share of the connections [default: as many as the
    /// open-file limit needs].
    #[arg(long)]
    pub processes: Option<u32>,
    /// Local addresses to connect from, in turn (comma-separated). Default: the kernel's
    /// choice, or for a loopback target with more connections than one address's ephemeral
    /// ports, 127.0.0.1, 127.0.0.2, ... as many as needed.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// A pass/fail condition on the result, k6 style (repeatable): `p99<50ms`, `lost=0`,
    /// `rate>=100000`, `errors=0`... The run exits 99 when any fails, and says which.
    #[arg(long = "threshold", value_name = "EXPR", value_parser = Threshold::parse)]
    pub thresholds: Vec<Threshold>,
    /// Search the highest open-loop rate whose p99 latency stays under --p99: runs of
    /// --duration each, doubling the rate, then halving the gap; every step is reported.
    #[arg(long, requires = "p99")]
    pub find_max_rate: bool,
    /// The latency target of --find-max-rate (`50ms`, `2s`, `500us`).
    #[arg(long, value_parser = parse_duration, requires = "find_max_rate")]
    pub p99: Option<Duration>,
    /// With --find-max-rate: the most runs the search may take.
    #[arg(long, default_value_t = 16, requires = "find_max_rate")]
    pub steps: usize,
    /// Runs the same scenario against this second server too, in interleaved rounds, and
    /// reports both and their throughput ratio.
    #[arg(long, value_name = "URL2", conflicts_with = "find_max_rate")]
    pub compare: Option<String>,
    /// With --compare: rounds against each server.
    #[arg(long, default_value_t = 3, requires = "compare")]
    pub rounds: u32,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Internal: this process is worker INDEX of COUNT, steered through stdin and stdout.
    #[arg(long, hide = true, requires = "worker_count")]
    pub worker_index: Option<u32>,
    #[arg(long, hide = true, requires = "worker_index")]
    pub worker_count: Option<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write a self-contained HTML report (latency percentiles and throughput plots).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Why the command line does not describe a run.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--{0} must be at least 1")]
    AtLeastOne(&'static str),
    #[error("--{0} must be a number of seconds")]
    NotSeconds(&'static str),
    #[error(
        "--message-size must be at least {} (the integrity stamp)",
        payload::MIN_SIZE
    )]
    MessageSize,
    #[error("too many connections")]
    TooManyConnections,
    #[error("--worker-index must be below --worker-count")]
    WorkerIndex,
    #[error("`{0}` is not a header field: use 'Name: value'")]
    Header(String),
    #[error("--{0} must be 9 to 15 (zlib cannot compress with a window of 8)")]
    Window(&'static str),
    #[error("--{option} works with the {scenarios} scenarios")]
    Scenario {
        option: &'static str,
        scenarios: &'static str,
    },
    #[error("--publish-url places fanout publishers: it needs --scenario fanout")]
    PublishUrl,
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Servers(#[from] ServersError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Payload(#[from] TemplateError),
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

fn parse_duration(value: &str) -> Result<Duration, ProfileError> {
    profile::duration(value)
}

/// Connections one source address is given toward one server address. The ephemeral range
/// holds 28,232 ports by default, but connect() picks from half of it first (even ports;
/// bind() takes the odd ones) and searches longer the fuller it is: with 25,000 per address,
/// opening the last of 250,000 connections slowed to a few hundred a second.
const PORTS_PER_SOURCE: u64 = 12_000;

/// The pieces of a run that do not depend on which server or rate it measures.
pub struct Common {
    pub drain: Duration,
    pub duration: Duration,
    pub connect_timeout: Duration,
    pub mix: Mix,
    pub upgrade: Upgrade,
    pub payloads: Payloads,
    pub tls: TlsClient,
}

impl Args {
    /// Every connection: subscribers and publishers for `fanout`.
    pub fn total_connections(&self) -> Result<u32, UsageError> {
        match self.scenario {
            Scenario::Fanout => self
                .connections
                .checked_add(self.publishers)
                .ok_or(UsageError::TooManyConnections),
            _ => Ok(self.connections),
        }
    }

    /// The servers of the run, as given.
    pub fn servers(&self) -> Servers {
        Servers {
            urls: self.urls.clone(),
            publish_urls: self.publish_urls.clone(),
        }
    }

    /// Checks what does not depend on the server, and builds it.
    pub fn common(&self) -> Result<Common, UsageError> {
        if self.connections == 0 {
            return Err(UsageError::AtLeastOne("connections"));
        }
        if self.scenario == Scenario::Fanout && self.publishers == 0 {
            return Err(UsageError::AtLeastOne("publishers"));
        }
        if self.message_size < payload::MIN_SIZE {
            return Err(UsageError::MessageSize);
        }
        if !self.publish_urls.is_empty() && self.scenario != Scenario::Fanout {
            return Err(UsageError::PublishUrl);
        }
        if self.find_max_rate && !matches!(self.scenario, Scenario::Echo | Scenario::Fanout) {
            return Err(UsageError::Scenario {
                option: "find-max-rate",
                scenarios: "echo and fanout",
            });
        }
        let mix = match &self.profile_mix {
            Some(spec) => Mix::parse(spec)?,
            None => Mix::single(Profile::parse(&self.profile)?),
        };
        let payloads = match &self.payload {
            Some(path) => Payloads::Templates(Arc::new(Templates::load(
                path,
                &self.stamp_field,
                self.payload_order,
            )?)),
            None => Payloads::Stamped {
                size: self.message_size,
            },
        };
        Ok(Common {
            drain: seconds(self.drain, "drain")?,
            duration: seconds(self.duration, "duration")?,
            connect_timeout: match self.connect_timeout {
                Some(given) => seconds(given, "connect-timeout")?,
                None => default_connect_timeout(self.total_connections()?),
            },
            mix,
            upgrade: self.upgrade()?,
            payloads,
            tls: TlsClient::new(&self.tls, self.total_connections()?),
        })
    }

    fn upgrade(&self) -> Result<Upgrade, UsageError> {
        let mut headers = Vec::new();
        for header in &self.headers {
            let (name, value) = header
                .split_once(':')
                .filter(|(name, _)| {
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                })
                .ok_or_else(|| UsageError::Header(header.clone()))?;
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        if let Some(token) = &self.token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        let deflate = self
            .deflate
            .then(|| -> Result<DeflateConfig, UsageError> {
                let window = |bits: u8, option| match bits {
                    9..=15 => Ok(bits),
                    _ => Err(UsageError::Window(option)),
                };
                Ok(DeflateConfig {
                    max_window_bits: window(self.deflate_window, "deflate-window")?,
                    peer_max_window_bits: window(
                        self.deflate_server_window,
                        "deflate-server-window",
                    )?,
                    no_context_takeover: self.deflate_no_takeover,
                    peer_no_context_takeover: self.deflate_server_no_takeover,
                    min_size: self.deflate_min_size,
                    ..DeflateConfig::default()
                })
            })
            .transpose()?;
        Ok(Upgrade {
            headers,
            protocols: self.subprotocols.clone(),
            deflate,
        })
    }

    /// This process's share of the connections, when it is a worker process.
    pub fn share(&self) -> Result<Share, UsageError> {
        match (self.worker_index, self.worker_count) {
            (Some(index), Some(count)) if index < count => Ok(Share { index, count }),
            (Some(_), Some(_)) => Err(UsageError::WorkerIndex),
            _ => Ok(Share { index: 0, count: 1 }),
        }
    }

    /// Worker processes the run needs.
    pub fn processes(&self) -> Result<u32, UsageError> {
        let connections = self.total_connections()?;
        Ok(self
            .processes
            .unwrap_or_else(|| processes::needed(u64::from(connections)))
            .max(1))
    }

    /// Worker threads of each process.
    pub fn threads_per_process(&self, processes: u32) -> usize {
        self.threads
            .unwrap_or_else(|| crate::cpu::allowed_cpus().div_ceil(processes as usize))
            .max(1)
    }

    /// The run against `servers`, at `rate` (messages a second in all, for the open loop),
    /// for this process's `share`.
    pub fn plan(
        &self,
        common: &Common,
        servers: &Servers,
        rate: Option<f64>,
        share: Share,
    ) -> Result<Plan, UsageError> {
        let nodes = servers.resolve(self.scenario == Scenario::Fanout)?;
        let connections = self.total_connections()?;
        let workload = match self.scenario {
            Scenario::Echo => Workload::Echo(Arc::new(Load {
                pipeline: self.pipeline,
                rate: rate.map(|total| total / f64::from(self.connections)),
                payloads: common.payloads.clone(),
            })),
            Scenario::Hold => Workload::Hold,
            Scenario::Fanout => {
                let rate = rate.unwrap_or(100.0) / f64::from(self.publishers);
                let local = (0..self.publishers)
                    .filter(|id| id % share.count == share.index)
                    .count() as u32;
                let fanout = Fanout::new(self.publishers, local, rate, common.payloads.clone());
                Workload::Fanout(Arc::new(fanout))
            }
            Scenario::Handshake => Workload::Handshake,
            Scenario::Churn => {
                let storm_after = self.storm_after.unwrap_or(self.duration / 2.0);
                Workload::Churn(Churn {
                    mean_lifetime: seconds(self.lifetime, "lifetime")?,
                    storm_after: (storm_after >= 0.0)
                        .then(|| seconds(storm_after, "storm-after"))
                        .transpose()?,
                    storm_jitter: seconds(self.storm_jitter, "storm-jitter")?,
                })
            }
        };
        let threads = self
            .threads_per_process(share.count)
            .clamp(1, connections as usize);
        let tls = nodes
            .targets()
            .iter()
            .map(|target| target.tls.then(|| common.tls.connector(target)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan {
            source_ips: self.source_ips(nodes.targets(), connections),
            tls,
            nodes,
            connections,
            threads,
            process: share,
            workload,
            upgrade: common.upgrade.clone(),
            mix: common.mix.clone(),
            connect_concurrency: self.connect_concurrency.max(1),
            ramp: self.ramp.filter(|r| *r > 0.0),
            drain: common.drain,
        })
    }

    /// The addresses to connect from: as given, or spread over loopback addresses when one
    /// would run out of ephemeral ports (toward any one of the `targets`).
    fn source_ips(&self, targets: &[Target], connections: u32) -> Vec<IpAddr> {
        if !self.source_ips.is_empty() {
            return self.source_ips.clone();
        }
        let mut addrs: Vec<_> = targets.iter().map(|t| t.addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let per_target = u64::from(connections).div_ceil(addrs.len().max(1) as u64);
        let needed = per_target.div_ceil(PORTS_PER_SOURCE);
        let loopback = |t: &Target| t.addr.ip().is_loopback() && t.addr.is_ipv4();
        if !targets.iter().all(loopback) || needed <= 1 {
            return Vec::new();
        }
        (0..needed.min(250) as u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i)))
            .collect()
    }
}

/// How long opening `connections` may take by default: a minute, and a second more for every
/// thousand beyond ten thousand (a busy host opens a few thousand a second).
fn default_connect_timeout(connections: u32) -> Duration {
    Duration::from_secs(60 + u64::from(connections.saturating_sub(10_000)) / 1_000)
}

fn seconds(value: f64, option: &'static str) -> Result<Duration, UsageError> {
    Duration::try_from_secs_f64(value).map_err(|_| UsageError::NotSeconds(option))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_many_connections_gets_more_time_by_default() {
        assert_eq!(default_connect_timeout(100), Duration::from_secs(60));
        assert_eq!(default_connect_timeout(10_000), Duration::from_secs(60));
        assert_eq!(default_connect_timeout(100_000), Duration::from_secs(150));
        assert_eq!(default_connect_timeout(250_000), Duration::from_secs(300));
    }
}
