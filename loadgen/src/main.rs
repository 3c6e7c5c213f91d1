//! `ringws-loadgen`: load generator for WebSocket servers.
//!
//! Thread-per-core on tokio-uring; every virtual client is a task that speaks RFC 6455
//! through `ringws::proto`. Every message carries its connection, sequence number, timestamp
//! and checksum, so the report counts loss, duplication, reordering and corruption, not only
//! speed.

mod cpu;
mod cycle;
mod display;
mod drive;
mod echo;
mod fanout;
mod html;
mod link;
mod payload;
mod processes;
mod profile;
mod run;
mod sequence;
mod stats;
mod target;
mod wire;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mimalloc::MiMalloc;

use crate::cycle::Churn;
use crate::display::Display;
use crate::drive::{Control, Outcome};
use crate::echo::Load;
use crate::fanout::Fanout;
use crate::processes::Schedule;
use crate::profile::{Mix, Profile};
use crate::run::{Plan, Share, Workload};
use crate::stats::{ProfileReport, Report, Stats};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
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

/// Load generator for WebSocket servers: throughput, latency and message integrity.
///
/// Exits 0 when every connection opened and every message came back intact, 1 otherwise,
/// 2 on a usage error.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server: ws://HOST:PORT/PATH.
    #[arg(long, default_value = "ws://127.0.0.1:9001/loadgen")]
    url: String,
    #[arg(long, value_enum, default_value = "echo")]
    scenario: Scenario,
    #[arg(long, default_value_t = 100)]
    connections: u32,
    /// Seconds of measurement, after every connection is open.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Messages each connection keeps in flight (closed loop).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Total messages per second over all connections (open loop); latency then counts from
    /// each message's scheduled time. For `fanout`: messages published per second, over
    /// all publishers [default: 100].
    #[arg(long)]
    rate: Option<f64>,
    /// `fanout`: connections that publish, in addition to the subscribers.
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// Connections started per second (all of them: over threads and processes); default:
    /// as fast as --connect-concurrency allows.
    #[arg(long)]
    ramp: Option<f64>,
    /// The server's process id: the report gives its memory growth per open connection
    /// (resident memory read from /proc before connecting and once all are open).
    #[arg(long)]
    server_pid: Option<u32>,
    /// `churn`: mean seconds a connection stays open before it closes and reconnects.
    #[arg(long, default_value_t = 5.0)]
    lifetime: f64,
    /// `churn`: seconds into the run when every client drops at once [default: half of
    /// --duration]; a negative value turns the storm off.
    #[arg(long, allow_hyphen_values = true)]
    storm_after: Option<f64>,
    /// `churn`: seconds over which the storm's reconnects are spread.
    #[arg(long, default_value_t = 1.0)]
    storm_jitter: f64,
    /// Bytes per message; 20 is the smallest that carries the integrity stamp.
    #[arg(long, default_value_t = 20)]
    message_size: usize,
    /// Worker threads, each with its own io_uring; defaults to one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds to wait for echoes still in flight when the run ends; later ones count as lost.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Seconds allowed for opening every connection.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Handshakes in progress at once, per thread.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// The network every client sees: a preset (none, wifi, lte, 4g, fast-3g, slow-3g,
    /// satellite, rural) or `NAME,key=value,...` with rtt, jitter, down, up, rcvbuf,
    /// stall-every, stall-for changed (`custom,...` starts from no shaping).
    #[arg(long, default_value = "none", conflicts_with = "profile_mix")]
    profile: String,
    /// A population of presets with weights, e.g. `90:wifi,10:slow-3g`; the report gives
    /// latency per profile.
    #[arg(long)]
    profile_mix: Option<String>,
    /// Worker processes, each with a share of the connections [default: as many as the
    /// open-file limit needs].
    #[arg(long)]
    processes: Option<u32>,
    /// Local addresses to connect from, in turn (comma-separated). Default: the kernel's
    /// choice, or for a loopback target with more connections than one address's ephemeral
    /// ports, 127.0.0.1, 127.0.0.2, ... as many as needed.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<std::net::IpAddr>,
    /// Internal: this process is worker INDEX of COUNT, steered through stdin and stdout.
    #[arg(long, hide = true, requires = "worker_count")]
    worker_index: Option<u32>,
    #[arg(long, hide = true, requires = "worker_index")]
    worker_count: Option<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write a self-contained HTML report (latency percentiles and throughput plots).
    #[arg(long)]
    html: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("ringws-loadgen: {error}");
            ExitCode::from(2)
        }
    }
}

/// Connections one source address can hold to one server address: the ephemeral port
/// range (32768-60999 by default) with a margin.
const PORTS_PER_SOURCE: u64 = 25_000;

fn run(args: &Args) -> Result<bool, String> {
    let target = target::Target::parse(&args.url)?;
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if args.message_size < payload::MIN_SIZE {
        return Err(format!(
            "--message-size must be at least {} (the integrity stamp)",
            payload::MIN_SIZE
        ));
    }
    let seconds = |value: f64, name: &str| {
        Duration::try_from_secs_f64(value)
            .map_err(|_| format!("--{name} must be a number of seconds"))
    };
    let drain = seconds(args.drain, "drain")?;
    let duration = seconds(args.duration, "duration")?;
    let connect_timeout = seconds(args.connect_timeout, "connect-timeout")?;
    let connections = match args.scenario {
        Scenario::Fanout => args
            .connections
            .checked_add(args.publishers)
            .ok_or("too many connections")?,
        _ => args.connections,
    };
    let share = match (args.worker_index, args.worker_count) {
        (Some(index), Some(count)) if index < count => Share { index, count },
        (Some(_), Some(_)) => return Err("--worker-index must be below --worker-count".into()),
        _ => Share { index: 0, count: 1 },
    };
    let worker = args.worker_count.is_some();
    let processes = args
        .processes
        .unwrap_or_else(|| processes::needed(u64::from(connections)))
        .max(1);
    if !worker && processes > 1 {
        return run_processes(args, processes, connections, duration, connect_timeout);
    }

    let workload = match args.scenario {
        Scenario::Echo | Scenario::Hold => {
            let echo = args.scenario == Scenario::Echo;
            Workload::Echo(Load {
                pipeline: if echo { args.pipeline } else { 0 },
                rate: args
                    .rate
                    .filter(|_| echo)
                    .map(|total| total / f64::from(args.connections)),
                message_size: args.message_size,
                drain,
            })
        }
        Scenario::Fanout => {
            if args.publishers == 0 {
                return Err("--publishers must be at least 1".into());
            }
            let rate = args.rate.unwrap_or(100.0) / f64::from(args.publishers);
            let local = (0..args.publishers)
                .filter(|id| id % share.count == share.index)
                .count() as u32;
            let fanout = Fanout::new(args.publishers, local, rate, args.message_size, drain);
            Workload::Fanout(Arc::new(fanout))
        }
        Scenario::Handshake => Workload::Handshake,
        Scenario::Churn => {
            let storm_after = args.storm_after.unwrap_or(args.duration / 2.0);
            Workload::Churn(Churn {
                mean_lifetime: seconds(args.lifetime, "lifetime")?,
                storm_after: (storm_after >= 0.0)
                    .then(|| seconds(storm_after, "storm-after"))
                    .transpose()?,
                storm_jitter: seconds(args.storm_jitter, "storm-jitter")?,
            })
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args
        .threads
        .unwrap_or_else(|| cores.div_ceil(share.count as usize))
        .clamp(1, connections as usize);
    let mix = match &args.profile_mix {
        Some(spec) => Mix::parse(spec)?,
        None => Mix::single(Profile::parse(&args.profile)?),
    };
    let plan = Arc::new(Plan {
        target: target.clone(),
        connections,
        threads,
        process: share,
        source_ips: source_ips(args, &target, connections),
        workload,
        mix: mix.clone(),
        connect_concurrency: args.connect_concurrency.max(1),
        ramp: args.ramp.filter(|r| *r > 0.0),
    });
    if worker {
        let outcome = drive::drive(plan, Control::Parent)?;
        let line = serde_json::to_string(&outcome.to_wire()).map_err(|e| e.to_string())?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "result {line}").map_err(|e| e.to_string())?;
        return Ok(true);
    }
    let display = Rc::new(Display::new(args.quiet));
    let shown = display.clone();
    let control = Control::Local {
        duration,
        connect_timeout,
        status: Box::new(move |status| shown.show(status)),
        server_pid: args.server_pid,
    };
    let rss_before = args.server_pid.and_then(cpu::rss_bytes);
    let outcome = drive::drive(plan, control);
    display.finish();
    report(args, &mix, connections, threads, &outcome?, rss_before)
}

/// The addresses to connect from: as given, or spread over loopback addresses when one
/// would run out of ephemeral ports.
fn source_ips(args: &Args, target: &target::Target, connections: u32) -> Vec<IpAddr> {
    if !args.source_ips.is_empty() {
        return args.source_ips.clone();
    }
    let needed = u64::from(connections).div_ceil(PORTS_PER_SOURCE);
    if !target.addr.ip().is_loopback() || !target.addr.is_ipv4() || needed <= 1 {
        return Vec::new();
    }
    (0..needed.min(250) as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i)))
        .collect()
}

/// Runs worker processes with this process's arguments and reports their merged results.
fn run_processes(
    args: &Args,
    processes: u32,
    connections: u32,
    duration: Duration,
    connect_timeout: Duration,
) -> Result<bool, String> {
    // The workers run everything but the report: no JSON file, no progress of their own.
    let mut forwarded = Vec::new();
    let mut skip = false;
    for arg in std::env::args().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        match arg.as_str() {
            "--json" | "--html" | "--processes" => skip = true,
            "--quiet" => {}
            _ if ["--json=", "--html=", "--processes="]
                .iter()
                .any(|prefix| arg.starts_with(prefix)) => {}
            _ => forwarded.push(arg),
        }
    }
    forwarded.push("--quiet".to_owned());
    let publishers = if args.scenario == Scenario::Fanout {
        args.publishers
    } else {
        0
    };
    let display = Display::new(args.quiet);
    let rss_before = args.server_pid.and_then(cpu::rss_bytes);
    let schedule = Schedule {
        total: u64::from(connections),
        publishers,
        duration,
        connect_timeout,
        server_pid: args.server_pid,
    };
    let outcome = processes::run(processes, &forwarded, &schedule, |status| {
        display.show(status)
    });
    display.finish();
    let outcome = outcome?;
    let mix = match &args.profile_mix {
        Some(spec) => Mix::parse(spec)?,
        None => Mix::single(Profile::parse(&args.profile)?),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args
        .threads
        .unwrap_or_else(|| cores.div_ceil(processes as usize))
        * processes as usize;
    report(args, &mix, connections, threads, &outcome, rss_before)
}

/// Prints the table, writes the JSON, and says whether the run was clean.
fn report(
    args: &Args,
    mix: &Mix,
    connections: u32,
    threads: usize,
    outcome: &Outcome,
    server_rss_before: Option<u64>,
) -> Result<bool, String> {
    let buckets = &outcome.buckets;
    let mut stats = Stats::default();
    for bucket in buckets {
        stats.merge(bucket);
    }
    let shaped = mix.len() > 1 || mix.profiles().any(|p| !p.is_ideal());
    let profiles: Vec<ProfileReport> = if shaped {
        mix.profiles()
            .zip(buckets)
            .map(|(profile, stats)| ProfileReport {
                name: &profile.name,
                stats,
            })
            .collect()
    } else {
        Vec::new()
    };
    let measured = outcome.measured.as_secs_f64();
    let total = u64::from(connections);
    let report = Report {
        scenario: match args.scenario {
            Scenario::Echo => "echo",
            Scenario::Hold => "hold",
            Scenario::Fanout => "fanout",
            Scenario::Handshake => "handshake",
            Scenario::Churn => "churn",
        },
        url: &args.url,
        connections: total,
        duration_secs: measured,
        stats: &stats,
        profiles: &profiles,
        cpu_percent: 100.0 * outcome.cpu.as_secs_f64() / (measured * threads as f64).max(1e-9),
        threads,
        server_bytes_per_connection: server_rss_before
            .zip(outcome.server_rss_connected)
            .filter(|_| stats.connections_established > 0)
            .map(|(before, after)| {
                after.saturating_sub(before) as f64 / stats.connections_established as f64
            }),
    };
    report.print_table();
    if report.cpu_percent > 90.0 {
        println!(
            "warning         the generator used {:.0}% of its {threads} threads: the numbers \
             may show its limit, not the server's",
            report.cpu_percent
        );
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::page(&report, &outcome.timeline))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(stats.connect_errors == 0
        && stats.connections_dropped == 0
        && stats.connections_established >= total
        && stats.messages_lost == 0
        && stats.messages_corrupted == 0
        && stats.messages_duplicated == 0
        && stats.messages_reordered == 0)
}
