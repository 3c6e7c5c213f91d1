//! The run: worker threads, each a tokio-uring runtime holding its share of the connections,
//! steered through the phases by the main thread, their statistics merged at the end.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::cycle::{self, Churn};
use crate::echo::{self, Load};
use crate::fanout::{self, Fanout};
use crate::link::Link;
use crate::profile::{Mix, Profile};
use crate::stats::Stats;
use crate::target::{self, Target};

/// Where the run stands; every connection watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Running,
    /// Sending stopped: collect the echoes in flight, then close.
    Draining,
}

/// Nanoseconds of the system's monotonic clock: the same on every thread and in every
/// process of the machine, so a stamp written by one worker process is read by another.
#[derive(Clone, Copy, Debug)]
pub struct Clock;

impl Clock {
    pub fn get() -> Clock {
        Clock
    }

    pub fn now_ns(self) -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes a timespec into a live local; CLOCK_MONOTONIC always
        // exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    /// The clock's reading at `at`, a moment near now (past or future).
    pub fn ns_at(self, at: Instant) -> u64 {
        let (now, now_ns) = (Instant::now(), self.now_ns());
        if at <= now {
            now_ns.saturating_sub(now.duration_since(at).as_nanos() as u64)
        } else {
            now_ns + at.duration_since(now).as_nanos() as u64
        }
    }
}

/// Counters the main thread reads while the run goes on, for progress and phase changes.
#[derive(Default)]
pub struct Progress {
    /// Connections that finished connecting, successfully or not.
    pub settled: AtomicU64,
    pub established: AtomicU64,
    /// Messages received, flushed from the workers a few times a second.
    pub received: AtomicU64,
    /// Connect errors and dropped connections so far.
    pub errors: AtomicU64,
    /// The highest of the threads' latency p99 so far, in µs.
    pub p99_us: AtomicU64,
}

/// Which share of the connections a process runs.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub index: u32,
    pub count: u32,
}

/// What each connection does.
pub enum Workload {
    /// `echo` and `hold`.
    Echo(Load),
    Fanout(Arc<Fanout>),
    /// Connect, upgrade, close, again.
    Handshake,
    Churn(Churn),
}

pub struct Plan {
    pub target: Target,
    pub connections: u32,
    pub threads: usize,
    /// This process's share: the connections whose id is `index` modulo `count`.
    pub process: Share,
    pub workload: Workload,
    /// Local addresses to connect from, in turn (empty: the kernel picks).
    pub source_ips: Vec<std::net::IpAddr>,
    /// The network each connection sees (fanout publishers excepted: they sit next to the
    /// server, as a backend does).
    pub mix: Mix,
    /// Handshakes in progress at once, per thread.
    pub connect_concurrency: usize,
    /// Connections started per second over the whole run (all threads and processes).
    pub ramp: Option<f64>,
}

impl Plan {
    /// Connects connection `id` from its source address over its link profile and upgrades.
    pub async fn open(&self, id: u32) -> Result<(Rc<Link>, Vec<u8>), String> {
        let source = self
            .source_ips
            .get(id as usize % self.source_ips.len().max(1));
        target::open(&self.target, source.copied(), self.profile_of(id).1).await
    }

    /// Which statistics bucket, and which link profile, connection `id` gets: a profile of
    /// the mix, or (for a fanout publisher) the unshaped bucket after them.
    fn profile_of(&self, id: u32) -> (usize, Option<&Profile>) {
        match &self.workload {
            Workload::Fanout(fanout) if id < fanout.publishers => (self.mix.len(), None),
            _ => {
                let index = self.mix.assign(id);
                (index, self.mix.profiles().nth(index))
            }
        }
    }
}

/// One worker thread: connects its connections, runs them, returns what it measured, one
/// [`Stats`] per profile of the mix and one for unshaped publishers.
pub fn worker(
    plan: Arc<Plan>,
    index: usize,
    phase: watch::Receiver<Phase>,
    progress: Arc<Progress>,
) -> Vec<Stats> {
    let share = plan.process;
    let ids: Vec<u32> = (0..plan.connections)
        .filter(|id| id % share.count == share.index)
        .filter(|id| (id / share.count) as usize % plan.threads == index)
        .collect();
    let entries = (ids.len() as u32 * 2)
        .clamp(256, 32 * 1024)
        .next_power_of_two();
    tokio_uring::builder().entries(entries).start(async move {
        let buckets: Vec<Rc<RefCell<Stats>>> = (0..=plan.mix.len())
            .map(|_| Rc::new(RefCell::new(Stats::default())))
            .collect();
        let clock = Clock::get();
        let gate = Rc::new(Semaphore::new(plan.connect_concurrency));
        let published = Rc::new(Cell::new((0, 0)));
        let flusher = tokio_uring::spawn(flush_progress(
            buckets.clone(),
            progress.clone(),
            published.clone(),
        ));
        let mut tasks = Vec::with_capacity(ids.len());
        // This thread's share of the ramp: its k-th connection starts k / rate seconds in.
        let ramp = plan
            .ramp
            .map(|total| total / (plan.threads as f64 * f64::from(share.count)));
        for (position, id) in ids.into_iter().enumerate() {
            let start_after = ramp.map(|rate| Duration::from_secs_f64(position as f64 / rate));
            let (bucket, _) = plan.profile_of(id);
            let (plan, stats, gate, phase, progress) = (
                plan.clone(),
                buckets[bucket].clone(),
                gate.clone(),
                phase.clone(),
                progress.clone(),
            );
            tasks.push(tokio_uring::spawn(async move {
                if let Some(after) = start_after {
                    tokio::time::sleep(after).await;
                }
                match &plan.workload {
                    Workload::Handshake => {
                        progress.settled.fetch_add(1, Ordering::Relaxed);
                        progress.established.fetch_add(1, Ordering::Relaxed);
                        cycle::handshakes(plan.clone(), id, phase, stats).await;
                        return;
                    }
                    Workload::Churn(churn) => {
                        let counted = progress.clone();
                        let first = Box::new(move |opened: bool| {
                            counted.settled.fetch_add(1, Ordering::Relaxed);
                            if opened {
                                counted.established.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        let churn = *churn;
                        cycle::churn(plan.clone(), id, churn, phase, stats, Some(first)).await;
                        return;
                    }
                    Workload::Echo(_) | Workload::Fanout(_) => {}
                }
                let started = Instant::now();
                let opened = {
                    let _permit = gate.acquire().await;
                    plan.open(id).await
                };
                progress.settled.fetch_add(1, Ordering::Relaxed);
                match opened {
                    Ok((stream, leftover)) => {
                        {
                            let mut stats = stats.borrow_mut();
                            stats.connections_established += 1;
                            stats.record_handshake(started.elapsed().as_micros() as u64);
                        }
                        progress.established.fetch_add(1, Ordering::Relaxed);
                        match &plan.workload {
                            Workload::Echo(load) => {
                                echo::run(stream, leftover, id, *load, clock, phase, stats).await
                            }
                            Workload::Fanout(fanout) => {
                                let fanout = fanout.clone();
                                fanout::run(stream, leftover, id, fanout, clock, phase, stats).await
                            }
                            Workload::Handshake | Workload::Churn(_) => {}
                        }
                    }
                    Err(error) => {
                        let mut stats = stats.borrow_mut();
                        stats.connect_errors += 1;
                        stats.note_error(error);
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        flusher.abort();
        publish_received(&buckets, &progress, &published);
        buckets.iter().map(|b| b.borrow().clone()).collect()
    })
}

/// Adds what this thread received since the last call to `progress`; `published` remembers
/// how much it already has.
fn publish_received(
    buckets: &[Rc<RefCell<Stats>>],
    progress: &Progress,
    published: &Cell<(u64, u64)>,
) {
    let (mut received, mut errors, mut p99) = (0, 0, 0);
    for bucket in buckets {
        let stats = bucket.borrow();
        received += stats.messages_received;
        errors += stats.connect_errors + stats.connections_dropped;
        if !stats.latency_us.is_empty() {
            p99 = p99.max(stats.latency_us.value_at_quantile(0.99));
        }
    }
    let (received_before, errors_before) = published.replace((received, errors));
    progress
        .received
        .fetch_add(received - received_before, Ordering::Relaxed);
    progress
        .errors
        .fetch_add(errors - errors_before, Ordering::Relaxed);
    progress.p99_us.fetch_max(p99, Ordering::Relaxed);
}

/// Publishes this thread's received count a few times a second, without touching a shared
/// atomic on every message.
async fn flush_progress(
    buckets: Vec<Rc<RefCell<Stats>>>,
    progress: Arc<Progress>,
    published: Rc<Cell<(u64, u64)>>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish_received(&buckets, &progress, &published);
    }
}
