//! More connections than one process may open: worker processes of this same binary, each
//! with a share of the connections, steered in step and merged exactly (histograms added,
//! never averaged). The line protocol is in `drive`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::display::Status;
use crate::drive::{DriveError, Outcome, decode_counts, encode_counts};
use crate::stats::WireError;

/// Why the worker processes could not carry a run through.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot find this program to start workers: {0}")]
    Exe(std::io::Error),
    #[error("cannot start worker process {index}: {source}")]
    Spawn { index: u32, source: std::io::Error },
    #[error("worker process {0} has no stdin or stdout to steer it through")]
    Pipes(u32),
    #[error("every worker process exited")]
    AllExited,
    #[error("worker process {0} exited without a result")]
    ExitedEarly(usize),
    #[error("worker process {index} said `{line}`")]
    Unexpected { index: usize, line: String },
    #[error("worker process {index}'s result is not JSON: {source}")]
    Json {
        index: usize,
        source: serde_json::Error,
    },
    #[error("worker process {index}: {source}")]
    Wire { index: usize, source: WireError },
    #[error(transparent)]
    Counts(#[from] DriveError),
    #[error("no worker process reported")]
    NoResult,
}

/// File descriptors a worker keeps for itself (runtime, pipes, stdio) beyond its sockets.
const RESERVED_FDS: u64 = 512;

/// Worker processes needed for `connections` sockets under this process's open-file limit.
pub fn needed(connections: u64) -> u32 {
    let limit = open_file_limit().saturating_sub(RESERVED_FDS).max(1);
    connections.div_ceil(limit).max(1) as u32
}

fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    /// The latest `progress` line: settled, established, received, errors, p99.
    progress: [u64; 5],
}

enum Event {
    Line(usize, String),
    Exited(usize),
}

/// What the parent needs to steer a run.
#[derive(Clone, Copy)]
pub struct Schedule {
    /// Connections over all workers.
    pub total: u64,
    /// `fanout` publishers, whose final counts are relayed (0 otherwise).
    pub publishers: u32,
    pub duration: Duration,
    pub connect_timeout: Duration,
    /// The server whose memory to read once every connection is open.
    pub server_pid: Option<u32>,
}

/// Runs `count` workers with `args` (this process's own, minus what only the parent does),
/// steering them through the phases. `status` hears how the run stands a few times a second.
pub fn run(
    count: u32,
    args: &[String],
    schedule: &Schedule,
    mut status: impl FnMut(Status),
) -> Result<Outcome, ProcessError> {
    let exe = std::env::current_exe().map_err(ProcessError::Exe)?;
    let (tx, events) = mpsc::channel();
    let mut workers = Vec::new();
    for index in 0..count {
        let mut child = Command::new(&exe)
            .args(args)
            .args([
                "--worker-index",
                &index.to_string(),
                "--worker-count",
                &count.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| ProcessError::Spawn { index, source })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(ProcessError::Pipes(index));
        };
        let tx = tx.clone();
        let slot = index as usize;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(Event::Line(slot, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Exited(slot));
        });
        workers.push(Worker {
            child,
            stdin,
            progress: [0; 5],
        });
    }
    drop(tx);
    let result = steer(&mut workers, &events, schedule, &mut status);
    for worker in &mut workers {
        if result.is_err() {
            let _ = worker.child.kill();
        }
        let _ = worker.child.wait();
    }
    result
}

fn steer(
    workers: &mut [Worker],
    events: &mpsc::Receiver<Event>,
    schedule: &Schedule,
    status: &mut impl FnMut(Status),
) -> Result<Outcome, ProcessError> {
    let Schedule {
        total,
        publishers,
        duration,
        connect_timeout,
        server_pid,
    } = *schedule;
    let mut published: Vec<Option<Vec<(u32, u32)>>> = vec![None; workers.len()];
    let mut results: Vec<Option<Outcome>> = (0..workers.len()).map(|_| None).collect();
    let tell = |workers: &mut [Worker], line: &str| {
        for worker in workers.iter_mut() {
            let _ = writeln!(worker.stdin, "{line}");
            let _ = worker.stdin.flush();
        }
    };
    let sum = |workers: &[Worker], i: usize| workers.iter().map(|w| w.progress[i]).sum::<u64>();

    // Connecting.
    let connect_start = Instant::now();
    while sum(workers, 0) < total && connect_start.elapsed() < connect_timeout {
        pump(workers, events, &mut published, &mut results)?;
        let open = sum(workers, 1);
        status(Status::Connecting { open, total });
    }
    let server_rss_connected = server_pid.and_then(crate::cpu::rss_bytes);
    tell(workers, "run");
    let started = Instant::now();
    let mut last = (started, sum(workers, 2));
    let mut timeline = Vec::new();
    while started.elapsed() < duration {
        pump(workers, events, &mut published, &mut results)?;
        let now = (Instant::now(), sum(workers, 2));
        if now.0.duration_since(last.0) >= Duration::from_secs(1) {
            let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
            last = now;
            timeline.push((started.elapsed().as_secs_f64(), rate));
            status(Status::Running {
                elapsed: started.elapsed(),
                connections: sum(workers, 1),
                messages_per_sec: rate,
                p99_us: workers.iter().map(|w| w.progress[4]).max().unwrap_or(0),
                errors: sum(workers, 3),
            });
        }
    }
    tell(workers, "drain");
    status(Status::Draining);
    if publishers > 0 {
        while published.iter().any(Option::is_none) {
            pump(workers, events, &mut published, &mut results)?;
        }
        let mut counts = vec![0u32; publishers as usize];
        for (publisher, count) in published.iter().flatten().flatten() {
            if let Some(slot) = counts.get_mut(*publisher as usize) {
                *slot = (*slot).max(*count);
            }
        }
        let pairs: Vec<(u32, u32)> = (0..publishers).zip(counts).collect();
        tell(workers, &format!("counts {}", encode_counts(&pairs)));
    }
    while results.iter().any(Option::is_none) {
        pump(workers, events, &mut published, &mut results)?;
    }
    let mut merged: Option<Outcome> = None;
    for outcome in results.into_iter().flatten() {
        match &mut merged {
            None => merged = Some(outcome),
            Some(merged) => {
                for (bucket, part) in merged.buckets.iter_mut().zip(&outcome.buckets) {
                    bucket.merge(part);
                }
                merged.measured = merged.measured.max(outcome.measured);
                merged.cpu += outcome.cpu;
            }
        }
    }
    let mut merged = merged.ok_or(ProcessError::NoResult)?;
    merged.timeline = timeline;
    merged.server_rss_connected = server_rss_connected;
    Ok(merged)
}

/// Handles what the workers said in the next 200 ms.
fn pump(
    workers: &mut [Worker],
    events: &mpsc::Receiver<Event>,
    published: &mut [Option<Vec<(u32, u32)>>],
    results: &mut [Option<Outcome>],
) -> Result<(), ProcessError> {
    let deadline = Instant::now() + Duration::from_millis(200);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let event = match events.recv_timeout(left) {
            Ok(event) => event,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) if results.iter().all(Option::is_some) => {
                return Ok(());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(ProcessError::AllExited),
        };
        match event {
            Event::Exited(index) if results[index].is_none() => {
                return Err(ProcessError::ExitedEarly(index));
            }
            Event::Exited(_) => {}
            Event::Line(index, line) => {
                let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
                match word {
                    "progress" => {
                        let numbers: Vec<u64> = rest
                            .split_whitespace()
                            .filter_map(|n| n.parse().ok())
                            .collect();
                        if let Ok(numbers) = <[u64; 5]>::try_from(numbers) {
                            workers[index].progress = numbers;
                        }
                    }
                    "published" => published[index] = Some(decode_counts(&line)?),
                    "result" => {
                        let value = serde_json::from_str(rest)
                            .map_err(|source| ProcessError::Json { index, source })?;
                        let outcome = Outcome::from_wire(&value)
                            .map_err(|source| ProcessError::Wire { index, source })?;
                        results[index] = Some(outcome);
                    }
                    _ => return Err(ProcessError::Unexpected { index, line }),
                }
            }
        }
    }
    Ok(())
}
