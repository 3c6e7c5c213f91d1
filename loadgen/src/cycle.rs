//! Scenarios where connections come and go: `handshake` (connect, upgrade, close, again, as
//! fast as the server allows) and `churn` (connections that live for random lifetimes and
//! reconnect, with a reconnect storm partway through the run).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep, sleep_until};

use crate::client::{Behaviour, Conn};
use crate::clock::Clock;
use crate::link::Rng;
use crate::open::{Opened, open_recorded, open_recorded_on};
use crate::plan::{Phase, Plan};
use crate::stats::Stats;
use crate::tasks;

/// How a `churn` client lives.
#[derive(Clone, Copy, Debug)]
pub struct Churn {
    /// Mean time a connection stays open (exponentially distributed).
    pub mean_lifetime: Duration,
    /// When, after the run starts, every client drops its connection at once.
    pub storm_after: Option<Duration>,
    /// Reconnects after the storm are spread uniformly over this much time.
    pub storm_jitter: Duration,
}

/// Backoff after a failed connect: doubling from this, jittered, capped at [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An opened connection, sending nothing, until `phase` says the run is over; then the
/// close handshake. Dropping the future cuts the connection without one.
async fn hold(opened: Opened, id: u32, stats: Rc<RefCell<Stats>>, phase: watch::Receiver<Phase>) {
    let conn = Conn::new(id, &opened.agreed, Behaviour::Hold, Duration::ZERO);
    tasks::run(opened, conn, stats, phase).await;
}

/// `handshake`: one loop per connection until the run ends. Throughput counts completed
/// handshakes; latency is connect to 101.
pub async fn handshakes(
    plan: Arc<Plan>,
    id: u32,
    mut phase: watch::Receiver<Phase>,
    stats: Rc<RefCell<Stats>>,
) {
    let _ = phase.wait_for(|p| *p != Phase::Connecting).await;
    // A connection that closes as soon as it opens.
    let (_closing, closed) = watch::channel(Phase::Draining);
    while *phase.borrow() == Phase::Running {
        let started = std::time::Instant::now();
        let Some(opened) = open_recorded(&plan, id, &stats).await else {
            continue;
        };
        {
            let micros = started.elapsed().as_micros() as u64;
            let mut stats = stats.borrow_mut();
            stats.record_latency(micros);
            stats.messages_received += 1;
            if *phase.borrow() == Phase::Running {
                stats.messages_in_window += 1;
            }
        }
        hold(opened, id, stats.clone(), closed.clone()).await;
    }
}

/// `churn`: connect, live a random lifetime, close, reconnect; at the storm, drop at once
/// and come back with jittered backoff. A client its server drops (a drain's 1001, a reset)
/// or refuses moves on to the next node, as a client with a list of servers or behind a load
/// balancer does, and reconnects at once. Records how long each client took to be back, and
/// when (the reconnect rate), in the bucket of the node it reached.
///
/// Connects and upgrades pass `gate`, the thread's bound on handshakes in progress, as the
/// other scenarios' first connects do: a quarter of a million clients connecting at once
/// would overflow the server's listen backlog and its SYN queue, and the dropped SYNs would
/// come back only after the kernel's retransmission back-off (1, 3, 7, 15 s...), measuring
/// that back-off rather than the server.
pub async fn churn(
    plan: Arc<Plan>,
    id: u32,
    churn: Churn,
    mut phase: watch::Receiver<Phase>,
    buckets: Vec<Rc<RefCell<Stats>>>,
    mut on_first: Option<Box<dyn FnOnce(bool)>>,
    gate: Rc<Semaphore>,
) {
    let rng = Rng::new(u64::from(id) + 1);
    let mut node = plan.node_of(id);
    let mut storm_at: Option<Instant> = None;
    let mut dropped_at: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut opened_before = false;
    loop {
        if *phase.borrow() == Phase::Draining {
            return;
        }
        let stats = buckets[plan.bucket_on(id, node)].clone();
        let started = std::time::Instant::now();
        let opened = {
            let _permit = gate.acquire().await;
            open_recorded_on(&plan, id, node, &stats).await
        };
        let Some(opened) = opened else {
            if let Some(first) = on_first.take() {
                first(false);
            }
            node = plan.nodes.after(node);
            sleep(backoff.mul_f64(0.5 + rng.unit())).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = FIRST_BACKOFF;
        if std::mem::replace(&mut opened_before, true) {
            let mut stats = stats.borrow_mut();
            stats.reconnects += 1;
            let handshake_us = started.elapsed().as_micros() as u64;
            let after_drop = dropped_at.is_some();
            stats
                .reconnect_log
                .reconnected(Clock.now_ns(), handshake_us, after_drop);
        }
        if let Some(at) = dropped_at.take() {
            let mut stats = stats.borrow_mut();
            stats.storm_recovery_us = stats.storm_recovery_us.max(at.elapsed().as_micros() as u64);
        }
        if let Some(first) = on_first.take() {
            first(true);
        }
        // The connection is serviced (pings, the server's close) while it lives.
        let (closing, closed) = watch::channel(Phase::Running);
        let link = opened.link.clone();
        let mut connection = Box::pin(hold(opened, id, stats.clone(), closed));
        if *phase.borrow() == Phase::Connecting {
            let _ = phase.wait_for(|p| *p != Phase::Connecting).await;
        }
        if storm_at.is_none() {
            storm_at = churn.storm_after.map(|after| Instant::now() + after);
        }
        let lifetime = churn.mean_lifetime.mul_f64(rng.exponential());
        let storm = storm_at.filter(|at| *at > Instant::now());
        tokio::select! {
            _ = &mut connection => {
                // The server ended it (counted as dropped): the next node, at once.
                dropped_at = Some(Instant::now());
                stats.borrow_mut().reconnect_log.dropped(Clock.now_ns());
                node = plan.nodes.after(node);
            }
            _ = sleep(lifetime) => {
                let _ = closing.send(Phase::Draining);
                connection.await;
            }
            _ = sleep_until(storm.unwrap_or_else(far_future)), if storm.is_some() => {
                // Everyone at once, without a close handshake, as when a load balancer dies.
                // Dropping the connection's future leaves its read in the kernel, holding the
                // socket open until the server ends it: the shutdown ends the read, so the
                // socket closes now and its descriptor is free for the reconnect.
                link.shutdown();
                drop(connection);
                dropped_at = Some(Instant::now());
                stats.borrow_mut().reconnect_log.dropped(Clock.now_ns());
                sleep(churn.storm_jitter.mul_f64(rng.unit())).await;
            }
            _ = phase.wait_for(|p| *p == Phase::Draining) => {
                let _ = closing.send(Phase::Draining);
                connection.await;
                return;
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
