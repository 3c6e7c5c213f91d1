//! What one invocation does: one run (here or in worker processes), a search for the highest
//! rate, or a comparison of two servers; then its report, thresholds and exit status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::cli::{Args, Common, UsageError};
use crate::display::Display;
use crate::drive::{self, Control, DriveError, Outcome};
use crate::nodes::{self, Layout, NodeReport, Servers};
use crate::processes::{self, ProcessError, Schedule};
use crate::profile::Mix;
use crate::report::{ProfileReport, Report};
use crate::stats::Stats;
use crate::threshold::{Metric, Threshold, Verdict};
use crate::{compare, cpu, html, search};

/// How the invocation ended, and so its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every connection opened and every message came back intact (or every threshold
    /// passed).
    Clean,
    /// Something was lost, corrupted, refused or dropped.
    Failed,
    /// A threshold failed.
    Thresholds,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Clean => 0,
            Exit::Failed => 1,
            // k6's exit status for failed thresholds, which CI scripts already check for.
            Exit::Thresholds => 99,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error(transparent)]
    Processes(#[from] ProcessError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot hand the result to the parent process: {0}")]
    Result(std::io::Error),
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let common = args.common()?;
    if args.worker_count.is_some() {
        return worker(args, &common);
    }
    if args.find_max_rate {
        return search::run(args, &common);
    }
    if let Some(other) = &args.compare {
        return compare::run(args, &common, other);
    }
    let display = Display::new(args.quiet);
    let measured = measure(args, &common, &args.servers(), args.rate, &display)?;
    display.finish();
    let report = measured.report(args, &common.mix);
    report.print_table();
    let nodes = measured.node_reports();
    nodes.iter().for_each(NodeReport::print);
    warn_if_saturated(&report);
    let verdicts = judge(&args.thresholds, |metric| report.metric(metric));
    let mut json = report.to_json();
    json["nodes"] = nodes.iter().map(NodeReport::to_json).collect();
    add_verdicts(&mut json, &verdicts);
    write_outputs(args, &json, || {
        html::page(&html::Page::single(&report, &measured.outcome.timeline))
    })?;
    Ok(exit(&args.thresholds, &verdicts, measured.clean()))
}

/// One run against `servers` at `rate` (the open loop's total, or fanout's publish rate).
pub struct Measured {
    /// The servers, as the report names them.
    pub url: String,
    /// Its buckets are per profile (the nodes added up).
    pub outcome: Outcome,
    pub stats: Stats,
    /// Per node: its URL, the connections and publishers put on it, what they measured.
    pub nodes: Vec<(String, (u64, u64), Stats)>,
    pub connections: u32,
    pub threads: usize,
    pub server_rss_before: Option<u64>,
}

impl Measured {
    pub fn report<'a>(&'a self, args: &'a Args, mix: &'a Mix) -> Report<'a> {
        let shaped = mix.len() > 1 || mix.profiles().any(|p| !p.is_ideal());
        let profiles = if shaped {
            mix.profiles()
                .zip(&self.outcome.buckets)
                .map(|(profile, stats)| ProfileReport {
                    name: &profile.name,
                    rtt: profile.one_way_latency * 2,
                    stats,
                })
                .collect()
        } else {
            Vec::new()
        };
        let measured = self.outcome.measured.as_secs_f64();
        let stats = &self.stats;
        Report {
            scenario: args.scenario.name(),
            url: &self.url,
            connections: u64::from(self.connections),
            duration_secs: measured,
            stats,
            profiles,
            cpu_percent: 100.0 * self.outcome.cpu.as_secs_f64()
                / (measured * self.threads as f64).max(1e-9),
            threads: self.threads,
            server_bytes_per_connection: self
                .server_rss_before
                .zip(self.outcome.server_rss_connected)
                .filter(|_| stats.connections_established > 0)
                .map(|(before, after)| {
                    after.saturating_sub(before) as f64 / stats.connections_established as f64
                }),
        }
    }

    /// Each node's share.
    pub fn node_reports(&self) -> Vec<NodeReport<'_>> {
        self.nodes
            .iter()
            .map(|(url, (connections, publishers), stats)| NodeReport {
                url,
                connections: *connections,
                publishers: *publishers,
                stats,
            })
            .collect()
    }

    /// Every connection opened and stayed, every message came back once, intact, in order.
    pub fn clean(&self) -> bool {
        let s = &self.stats;
        s.connect_errors == 0
            && s.connections_dropped == 0
            && s.connections_established >= u64::from(self.connections)
            && s.messages_lost == 0
            && s.messages_corrupted == 0
            && s.messages_duplicated == 0
            && s.messages_reordered == 0
    }
}

/// Runs the scenario once against `servers` at `rate`, in this process or in worker
/// processes.
pub fn measure(
    args: &Args,
    common: &Common,
    servers: &Servers,
    rate: Option<f64>,
    display: &Display,
) -> Result<Measured, Error> {
    let connections = args.total_connections()?;
    let processes = args.processes()?;
    let fanout = args.scenario == crate::cli::Scenario::Fanout;
    let nodes = servers.resolve(fanout).map_err(UsageError::from)?;
    let server_rss_before = args.server_pid.and_then(cpu::rss_bytes);
    let (mut outcome, threads) = if processes > 1 {
        let forwarded = worker_args(servers, rate);
        let schedule = Schedule {
            total: u64::from(connections),
            publishers: match args.scenario {
                crate::cli::Scenario::Fanout => args.publishers,
                _ => 0,
            },
            duration: common.duration,
            connect_timeout: common.connect_timeout,
            server_pid: args.server_pid,
        };
        let outcome = processes::run(processes, &forwarded, &schedule, |status| {
            display.show(status)
        })?;
        let threads = args.threads_per_process(processes) * processes as usize;
        (outcome, threads)
    } else {
        let plan = Arc::new(args.plan(common, servers, rate, args.share()?)?);
        let threads = plan.threads;
        let control = Control::Local {
            duration: common.duration,
            connect_timeout: common.connect_timeout,
            status: Box::new(|status| display.show(status)),
            server_pid: args.server_pid,
        };
        (drive::drive(plan, control)?, threads)
    };
    let layout = Layout {
        profiles: common.mix.len() + 1,
        nodes: nodes.len(),
    };
    let (by_profile, by_node) = layout.fold(&outcome.buckets);
    outcome.buckets = by_profile;
    let mut stats = Stats::default();
    for bucket in &outcome.buckets {
        stats.merge(bucket);
    }
    let (subscribers, publishers) = match fanout {
        true => (args.connections, args.publishers),
        false => (connections, 0),
    };
    let assigned = nodes::assigned(&nodes, subscribers, publishers);
    let urls = servers.distinct().into_iter().map(str::to_owned);
    Ok(Measured {
        url: servers.label(),
        outcome,
        stats,
        nodes: urls
            .zip(assigned)
            .zip(by_node)
            .map(|((u, a), s)| (u, a, s))
            .collect(),
        connections,
        threads,
        server_rss_before,
    })
}

/// A worker process: runs its share, steered by the parent, and hands back its result.
fn worker(args: &Args, common: &Common) -> Result<Exit, Error> {
    let plan = Arc::new(args.plan(common, &args.servers(), args.rate, args.share()?)?);
    let outcome = drive::drive(plan, Control::Parent)?;
    let line = outcome.to_wire().to_string();
    let mut out = std::io::stdout().lock();
    writeln!(out, "result {line}").map_err(Error::Result)?;
    Ok(Exit::Clean)
}

/// The arguments a worker process runs with: this process's own, minus what only the
/// parent does (reports, thresholds, searches, comparisons), with `servers` and `rate` as
/// this run has them.
fn worker_args(servers: &Servers, rate: Option<f64>) -> Vec<String> {
    const PARENT_VALUES: [&str; 11] = [
        "--json",
        "--html",
        "--processes",
        "--compare",
        "--rounds",
        "--p99",
        "--steps",
        "--threshold",
        "--url",
        "--publish-url",
        "--rate",
    ];
    const PARENT_FLAGS: [&str; 2] = ["--quiet", "--find-max-rate"];
    let mut forwarded = Vec::new();
    let mut skip = false;
    for arg in std::env::args().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
        if PARENT_VALUES.contains(&name) {
            skip = !arg.contains('=');
        } else if !PARENT_FLAGS.contains(&name) {
            forwarded.push(arg);
        }
    }
    forwarded.push("--quiet".to_owned());
    forwarded.extend(servers.to_args());
    if let Some(rate) = rate {
        forwarded.extend(["--rate".to_owned(), rate.to_string()]);
    }
    forwarded
}

/// Warns when the generator's own CPU was the limit.
pub fn warn_if_saturated(report: &Report) {
    if report.cpu_percent > 90.0 {
        println!(
            "warning         the generator used {:.0}% of its {} threads: the numbers may show \
             its limit, not the server's",
            report.cpu_percent, report.threads
        );
    }
}

/// Judges every threshold, printing a verdict line for each.
pub fn judge<'t>(
    thresholds: &'t [Threshold],
    metric: impl Fn(Metric) -> Option<f64>,
) -> Vec<Verdict<'t>> {
    thresholds
        .iter()
        .map(|threshold| {
            let verdict = threshold.judge(metric(threshold.metric));
            println!("{verdict}");
            verdict
        })
        .collect()
}

pub fn add_verdicts(json: &mut Value, verdicts: &[Verdict<'_>]) {
    if verdicts.is_empty() {
        return;
    }
    json["thresholds"] = verdicts.iter().map(Verdict::to_json).collect();
    json["thresholds_passed"] = verdicts.iter().all(|v| v.pass).into();
}

/// The exit status: the thresholds decide when there are any, else whether the run was
/// clean.
pub fn exit(thresholds: &[Threshold], verdicts: &[Verdict<'_>], clean: bool) -> Exit {
    match (
        thresholds.is_empty(),
        verdicts.iter().all(|v| v.pass),
        clean,
    ) {
        (false, true, _) | (true, _, true) => Exit::Clean,
        (false, false, _) => Exit::Thresholds,
        (true, _, false) => Exit::Failed,
    }
}

/// Writes the JSON and (rendered only if asked for) the HTML report.
pub fn write_outputs(
    args: &Args,
    json: &Value,
    html: impl FnOnce() -> String,
) -> Result<(), Error> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(json).unwrap_or_default();
        write(path, &(text + "\n"))?;
    }
    if let Some(path) = &args.html {
        write(path, &html())?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}
