//! The worker threads: each holds its share of the connections, on the io_uring engine
//! (plain links) or as tokio-uring tasks (shaped links, and the scenarios that reconnect),
//! steered through the phases by the main thread. Each returns what it measured.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::cycle;
use crate::engine;
use crate::open::open_recorded;
use crate::plan::{Phase, Plan, Workload};
use crate::stats::Stats;
use crate::tasks;

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

/// How often a worker publishes its counts to [`Progress`].
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// One worker thread: runs its connections, returns one [`Stats`] per profile of the mix
/// and one for unshaped publishers.
pub fn worker(
    plan: Arc<Plan>,
    index: usize,
    phase: watch::Receiver<Phase>,
    progress: Arc<Progress>,
) -> Vec<Stats> {
    let ids = plan.ids_of_thread(index);
    if plan.unshaped() && plan.behaviour_driven() {
        match engine::run(&plan, &ids, phase.clone(), &progress) {
            Ok(stats) => return stats,
            // No usable io_uring for the engine: the same connections as tasks.
            Err(error) => engine_unavailable(&error),
        }
    }
    let entries = (ids.len() as u32 * 2)
        .clamp(256, 32 * 1024)
        .next_power_of_two();
    tokio_uring::builder()
        .entries(entries)
        .start(run_tasks(plan, ids, phase, progress))
}

/// The connections of one thread as tokio-uring tasks.
async fn run_tasks(
    plan: Arc<Plan>,
    ids: Vec<u32>,
    phase: watch::Receiver<Phase>,
    progress: Arc<Progress>,
) -> Vec<Stats> {
    let buckets: Vec<Rc<RefCell<Stats>>> = (0..plan.layout().buckets())
        .map(|_| Rc::new(RefCell::new(Stats::default())))
        .collect();
    let gate = Rc::new(Semaphore::new(plan.connect_concurrency));
    let published = Rc::new(Cell::new(Published::default()));
    let flusher = tokio_uring::spawn({
        let (buckets, progress, published) = (buckets.clone(), progress.clone(), published.clone());
        async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let stats: Vec<_> = buckets.iter().map(|b| b.borrow()).collect();
                publish(stats.iter().map(|s| &**s), &progress, &published);
            }
        }
    });
    let ramp = thread_ramp(&plan);
    let mut tasks = Vec::with_capacity(ids.len());
    for (position, id) in ids.into_iter().enumerate() {
        let start_after = ramp.map(|rate| Duration::from_secs_f64(position as f64 / rate));
        let (bucket, _) = plan.profile_of(id);
        let (plan, stats, all, gate, phase, progress) = (
            plan.clone(),
            buckets[bucket].clone(),
            buckets.clone(),
            gate.clone(),
            phase.clone(),
            progress.clone(),
        );
        tasks.push(tokio_uring::spawn(async move {
            if let Some(after) = start_after {
                tokio::time::sleep(after).await;
            }
            let settled = move |opened: bool| {
                progress.settled.fetch_add(1, Ordering::Relaxed);
                if opened {
                    progress.established.fetch_add(1, Ordering::Relaxed);
                }
            };
            match &plan.workload {
                Workload::Handshake => {
                    settled(true);
                    cycle::handshakes(plan.clone(), id, phase, stats).await;
                }
                Workload::Churn(churn) => {
                    let churn = *churn;
                    let first = Box::new(settled);
                    cycle::churn(plan.clone(), id, churn, phase, all, Some(first), gate).await;
                }
                Workload::Echo(_) | Workload::Hold | Workload::Fanout(_) => {
                    let opened = {
                        let _permit = gate.acquire().await;
                        open_recorded(&plan, id, &stats).await
                    };
                    settled(opened.is_some());
                    let (Some(opened), Some(behaviour)) = (opened, plan.behaviour(id)) else {
                        plan.gave_up(id);
                        return;
                    };
                    let conn = crate::client::Conn::new(id, &opened.agreed, behaviour, plan.drain);
                    tasks::run(opened, conn, stats, phase).await;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    flusher.abort();
    let stats: Vec<Stats> = buckets.iter().map(|b| b.borrow().clone()).collect();
    publish(stats.iter(), &progress, &published);
    stats
}

/// Says once per thread why its connections run as tasks after all.
fn engine_unavailable(error: &std::io::Error) {
    eprintln!("ringws-loadgen: the io_uring engine is unavailable ({error}); using tasks");
}

/// This thread's share of the ramp: connections started per second.
pub fn thread_ramp(plan: &Plan) -> Option<f64> {
    plan.ramp
        .map(|total| total / (plan.threads as f64 * f64::from(plan.process.count)))
}

/// What a thread has already added to [`Progress`].
#[derive(Clone, Copy, Default)]
pub struct Published {
    received: u64,
    errors: u64,
}

/// Adds what this thread received since the last call to `progress`; `published` remembers
/// how much it already has.
pub fn publish<'a>(
    buckets: impl Iterator<Item = &'a Stats>,
    progress: &Progress,
    published: &Cell<Published>,
) {
    let (mut received, mut errors, mut p99) = (0, 0, 0);
    for stats in buckets {
        received += stats.messages_received;
        errors += stats.connect_errors + stats.connections_dropped;
        if !stats.latency_us.is_empty() {
            p99 = p99.max(stats.latency_us.value_at_quantile(0.99));
        }
    }
    let before = published.replace(Published { received, errors });
    progress
        .received
        .fetch_add(received - before.received, Ordering::Relaxed);
    progress
        .errors
        .fetch_add(errors - before.errors, Ordering::Relaxed);
    progress.p99_us.fetch_max(p99, Ordering::Relaxed);
}
