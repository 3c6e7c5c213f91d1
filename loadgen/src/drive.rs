//! Runs this process's share of the connections through the phases: on its own clock, or
//! steered line by line by a parent process (see `processes`).
//!
//! The parent protocol, one line each way:
//! - worker → parent: `progress SETTLED ESTABLISHED RECEIVED ERRORS P99_US`, a few times a
//!   second;
//!   `published ID COUNT ...` once its fanout publishers have stopped; `result JSON` at the end.
//! - parent → worker: `run`, `drain`, `counts ID COUNT ...` (every publisher's final count).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cpu;
use crate::display::Status;
use crate::plan::{Phase, Plan, Workload};
use crate::run::{self, Progress};
use crate::stats::{Stats, WireError};

/// Why a run could not be driven to its end.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
    #[error("a worker thread panicked")]
    Panicked,
    #[error("the parent process went away")]
    ParentGone,
    #[error("bad count line `{0}`")]
    Counts(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// What one process measured.
pub struct Outcome {
    /// One per profile of the mix, then one for unshaped publishers; each per node (see
    /// [`Layout`](crate::nodes::Layout)).
    pub buckets: Vec<Stats>,
    pub measured: Duration,
    /// CPU time the process used while the run was measured.
    pub cpu: Duration,
    /// (seconds into the run, messages received per second), for the HTML report.
    pub timeline: Vec<(f64, f64)>,
    /// The server's resident memory once every connection was open (`--server-pid`).
    pub server_rss_connected: Option<u64>,
}

impl Outcome {
    pub fn to_wire(&self) -> Value {
        json!({
            "buckets": self.buckets.iter().map(Stats::to_wire).collect::<Vec<_>>(),
            "measured_secs": self.measured.as_secs_f64(),
            "cpu_secs": self.cpu.as_secs_f64(),
        })
    }

    pub fn from_wire(value: &Value) -> Result<Outcome, WireError> {
        let buckets = value["buckets"]
            .as_array()
            .ok_or(WireError::Missing("buckets"))?
            .iter()
            .map(Stats::from_wire)
            .collect::<Result<_, _>>()?;
        let secs = |field: &'static str| {
            value[field]
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or(WireError::Missing(field))
        };
        Ok(Outcome {
            buckets,
            measured: secs("measured_secs")?,
            cpu: secs("cpu_secs")?,
            timeline: Vec::new(),
            server_rss_connected: None,
        })
    }
}

/// Who decides when the phases change.
pub enum Control<'a> {
    /// This process: connect (at most `connect_timeout`), measure for `duration`.
    Local {
        duration: Duration,
        connect_timeout: Duration,
        /// Called a few times a second, for the live display.
        status: Box<dyn FnMut(Status) + 'a>,
        /// The server whose memory to read once every connection is open.
        server_pid: Option<u32>,
    },
    /// A parent process, through stdin and stdout.
    Parent,
}

/// Starts the worker threads, steers them through the phases, and collects their stats.
pub fn drive(plan: Arc<Plan>, control: Control<'_>) -> Result<Outcome, DriveError> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let progress = Arc::new(Progress::default());
    let workers: Vec<_> = (0..plan.threads)
        .map(|index| {
            let (plan, phase, progress) = (plan.clone(), phase_rx.clone(), progress.clone());
            std::thread::Builder::new()
                .name(format!("loadgen-{index}"))
                .spawn(move || run::worker(plan, index, phase, progress))
                .map_err(DriveError::Thread)
        })
        .collect::<Result<_, _>>()?;

    let mut timeline = Vec::new();
    let mut server_rss_connected = None;
    let (measured, cpu) = match control {
        Control::Local {
            duration,
            connect_timeout,
            status,
            server_pid,
        } => run_locally(
            &plan,
            &progress,
            &phase_tx,
            (duration, connect_timeout),
            status,
            &mut timeline,
            || server_rss_connected = server_pid.and_then(cpu::rss_bytes),
        ),
        Control::Parent => run_for_parent(&plan, &progress, &phase_tx)?,
    };

    let mut buckets = vec![Stats::default(); plan.layout().buckets()];
    for worker in workers {
        let parts = worker.join().map_err(|_| DriveError::Panicked)?;
        for (bucket, part) in buckets.iter_mut().zip(&parts) {
            bucket.merge(part);
        }
    }
    Ok(Outcome {
        buckets,
        measured,
        cpu,
        timeline,
        server_rss_connected,
    })
}

fn run_locally(
    plan: &Plan,
    progress: &Progress,
    phase: &watch::Sender<Phase>,
    (duration, connect_timeout): (Duration, Duration),
    mut status: Box<dyn FnMut(Status) + '_>,
    timeline: &mut Vec<(f64, f64)>,
    on_connected: impl FnOnce(),
) -> (Duration, Duration) {
    // Connect everything first, so the measurement sees only the steady state.
    let connect_start = Instant::now();
    let total = plan.local_connections();
    while progress.settled.load(Ordering::Relaxed) < total
        && connect_start.elapsed() < connect_timeout
    {
        std::thread::sleep(Duration::from_millis(50));
        let open = progress.established.load(Ordering::Relaxed);
        status(Status::Connecting { open, total });
    }
    on_connected();
    let cpu_start = cpu::process_cpu_time();
    let started = Instant::now();
    let _ = phase.send(Phase::Running);
    let mut last = (started, progress.received.load(Ordering::Relaxed));
    while started.elapsed() < duration {
        std::thread::sleep((duration - started.elapsed()).min(Duration::from_secs(1)));
        let now = (Instant::now(), progress.received.load(Ordering::Relaxed));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        last = now;
        timeline.push((started.elapsed().as_secs_f64(), rate));
        status(Status::Running {
            elapsed: started.elapsed(),
            connections: progress.established.load(Ordering::Relaxed),
            messages_per_sec: rate,
            p99_us: progress.p99_us.load(Ordering::Relaxed),
            errors: progress.errors.load(Ordering::Relaxed),
        });
    }
    let measured = started.elapsed();
    let cpu = cpu::process_cpu_time().saturating_sub(cpu_start);
    let _ = phase.send(Phase::Draining);
    status(Status::Draining);
    (measured, cpu)
}

fn run_for_parent(
    plan: &Plan,
    progress: &Progress,
    phase: &watch::Sender<Phase>,
) -> Result<(Duration, Duration), DriveError> {
    let (tx, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let report = || {
        say(format!(
            "progress {} {} {} {} {}",
            progress.settled.load(Ordering::Relaxed),
            progress.established.load(Ordering::Relaxed),
            progress.received.load(Ordering::Relaxed),
            progress.errors.load(Ordering::Relaxed),
            progress.p99_us.load(Ordering::Relaxed)
        ))
    };
    let wait_for = |word: &str| -> Result<String, DriveError> {
        loop {
            match commands.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.split_whitespace().next() == Some(word) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => report(),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(DriveError::ParentGone),
            }
        }
    };
    wait_for("run")?;
    let cpu_start = cpu::process_cpu_time();
    let started = Instant::now();
    let _ = phase.send(Phase::Running);
    wait_for("drain")?;
    let measured = started.elapsed();
    let cpu = cpu::process_cpu_time().saturating_sub(cpu_start);
    let _ = phase.send(Phase::Draining);
    if let Workload::Fanout(fanout) = &plan.workload {
        let counts = loop {
            if let Some(counts) = fanout.local_counts() {
                break counts;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        say(format!("published {}", encode_counts(&counts)));
        let line = wait_for("counts")?;
        fanout.set_remote_counts(&decode_counts(&line)?);
    }
    report();
    Ok((measured, cpu))
}

/// `ID COUNT ID COUNT ...`
pub fn encode_counts(counts: &[(u32, u32)]) -> String {
    counts
        .iter()
        .map(|(id, count)| format!("{id} {count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads the pairs after the line's first word.
pub fn decode_counts(line: &str) -> Result<Vec<(u32, u32)>, DriveError> {
    let bad = || DriveError::Counts(line.to_owned());
    let numbers: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if !numbers.len().is_multiple_of(2) {
        return Err(bad());
    }
    Ok(numbers.chunks(2).map(|pair| (pair[0], pair[1])).collect())
}
