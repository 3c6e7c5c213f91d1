//! `ringws-loadgen`: load generator for WebSocket servers.
//!
//! Thread-per-core on tokio-uring; every virtual client is a task that speaks RFC 6455
//! through `ringws::proto`. Every message carries its connection, sequence number, timestamp
//! and checksum, so the report counts loss, duplication, reordering and corruption, not only
//! speed.

mod cpu;
mod echo;
mod fanout;
mod link;
mod payload;
mod profile;
mod run;
mod sequence;
mod stats;
mod target;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use mimalloc::MiMalloc;
use tokio::sync::watch;

use crate::echo::Load;
use crate::fanout::Fanout;
use crate::profile::{Mix, Profile};
use crate::run::{Clock, Phase, Plan, Progress, Workload};
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
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
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
    let (workload, connections) = match args.scenario {
        Scenario::Echo | Scenario::Hold => {
            let echo = args.scenario == Scenario::Echo;
            let load = Load {
                pipeline: if echo { args.pipeline } else { 0 },
                rate: args
                    .rate
                    .filter(|_| echo)
                    .map(|total| total / f64::from(args.connections)),
                message_size: args.message_size,
                drain,
            };
            (Workload::Echo(load), args.connections)
        }
        Scenario::Fanout => {
            if args.publishers == 0 {
                return Err("--publishers must be at least 1".into());
            }
            let rate = args.rate.unwrap_or(100.0) / f64::from(args.publishers);
            let fanout = Fanout::new(args.publishers, rate, args.message_size, drain);
            let connections = args
                .connections
                .checked_add(args.publishers)
                .ok_or("too many connections")?;
            (Workload::Fanout(Arc::new(fanout)), connections)
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, connections as usize);
    let mix = match &args.profile_mix {
        Some(spec) => Mix::parse(spec)?,
        None => Mix::single(Profile::parse(&args.profile)?),
    };
    let plan = Arc::new(Plan {
        target,
        connections,
        threads,
        workload,
        mix: mix.clone(),
        connect_concurrency: args.connect_concurrency.max(1),
    });
    let duration = seconds(args.duration, "duration")?;
    let connect_timeout = seconds(args.connect_timeout, "connect-timeout")?;
    Clock::get();

    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let progress = Arc::new(Progress::default());
    let workers: Vec<_> = (0..threads)
        .map(|index| {
            let (plan, phase, progress) = (plan.clone(), phase_rx.clone(), progress.clone());
            std::thread::Builder::new()
                .name(format!("loadgen-{index}"))
                .spawn(move || run::worker(plan, index, phase, progress))
                .map_err(|e| format!("cannot start a worker thread: {e}"))
        })
        .collect::<Result<_, _>>()?;

    // Connect everything first, so the measurement sees only the steady state.
    let connect_start = Instant::now();
    let total = u64::from(connections);
    while progress.settled.load(Ordering::Relaxed) < total
        && connect_start.elapsed() < connect_timeout
    {
        std::thread::sleep(Duration::from_millis(50));
        status(args, || {
            format!(
                "connecting: {} of {total} open",
                progress.established.load(Ordering::Relaxed)
            )
        });
    }

    let cpu_start = cpu::process_cpu_time();
    let started = Instant::now();
    let _ = phase_tx.send(Phase::Running);
    let mut last = (started, progress.received.load(Ordering::Relaxed));
    while started.elapsed() < duration {
        std::thread::sleep((duration - started.elapsed()).min(Duration::from_secs(1)));
        let now = (Instant::now(), progress.received.load(Ordering::Relaxed));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        last = now;
        status(args, || {
            format!(
                "{:>5.1} s  {} connections  {:.0} msg/s",
                started.elapsed().as_secs_f64(),
                progress.established.load(Ordering::Relaxed),
                rate
            )
        });
    }
    let measured = started.elapsed();
    let cpu_used = cpu::process_cpu_time().saturating_sub(cpu_start);
    let _ = phase_tx.send(Phase::Draining);
    status(args, || "draining".to_owned());

    // One bucket per profile of the mix, then one for unshaped publishers.
    let mut buckets = vec![Stats::default(); mix.len() + 1];
    for worker in workers {
        let parts = worker
            .join()
            .map_err(|_| "a worker thread panicked".to_owned())?;
        for (bucket, part) in buckets.iter_mut().zip(&parts) {
            bucket.merge(part);
        }
    }
    let mut stats = Stats::default();
    for bucket in &buckets {
        stats.merge(bucket);
    }
    let shaped = mix.len() > 1 || mix.profiles().any(|p| !p.is_ideal());
    let profiles: Vec<ProfileReport> = if shaped {
        mix.profiles()
            .zip(&buckets)
            .map(|(profile, stats)| ProfileReport {
                name: &profile.name,
                stats,
            })
            .collect()
    } else {
        Vec::new()
    };
    if !args.quiet {
        eprintln!();
    }

    let report = Report {
        scenario: match args.scenario {
            Scenario::Echo => "echo",
            Scenario::Hold => "hold",
            Scenario::Fanout => "fanout",
        },
        url: &args.url,
        connections: total,
        duration_secs: measured.as_secs_f64(),
        stats: &stats,
        profiles: &profiles,
        cpu_percent: 100.0 * cpu_used.as_secs_f64() / (measured.as_secs_f64() * threads as f64),
        threads,
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
    let clean = stats.connect_errors == 0
        && stats.connections_dropped == 0
        && stats.connections_established == total
        && stats.messages_lost == 0
        && stats.messages_corrupted == 0
        && stats.messages_duplicated == 0
        && stats.messages_reordered == 0;
    Ok(clean)
}

/// One progress line on stderr, rewritten in place.
fn status(args: &Args, line: impl FnOnce() -> String) {
    if !args.quiet {
        eprint!("\r\x1b[2K{}", line());
        let _ = std::io::stderr().flush();
    }
}
