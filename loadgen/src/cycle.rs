//! Scenarios where connections come and go: `handshake` (connect, upgrade, close, again, as
//! fast as the server allows) and `churn` (connections that live for random lifetimes and
//! reconnect, with a reconnect storm partway through the run).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ringws::proto::{Event, Role, Session, SessionConfig};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

use crate::echo::no_close_answer;
use crate::link::{Link, Rng};
use crate::run::{Phase, Plan};
use crate::stats::Stats;
use crate::wire::MaskSource;

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

/// `handshake`: one loop per connection until the run ends. Throughput counts completed
/// handshakes; latency is connect to 101.
pub async fn handshakes(
    plan: Arc<Plan>,
    id: u32,
    mut phase: watch::Receiver<Phase>,
    stats: Rc<RefCell<Stats>>,
) {
    let _ = phase.wait_for(|p| *p != Phase::Connecting).await;
    let mut mask = MaskSource::new(id);
    while *phase.borrow() == Phase::Running {
        let started = std::time::Instant::now();
        match plan.open(id).await {
            Ok((link, _)) => {
                let micros = started.elapsed().as_micros() as u64;
                {
                    let mut stats = stats.borrow_mut();
                    stats.connections_established += 1;
                    stats.record_handshake(micros);
                    stats.record_latency(micros);
                    stats.messages_received += 1;
                    if *phase.borrow() == Phase::Running {
                        stats.messages_in_window += 1;
                    }
                }
                if let Err(error) = close(&link, &mut mask).await {
                    let mut stats = stats.borrow_mut();
                    stats.connections_dropped += 1;
                    stats.note_error(error);
                }
            }
            Err(error) => {
                let mut stats = stats.borrow_mut();
                stats.connect_errors += 1;
                stats.note_error(error);
            }
        }
    }
}

/// `churn`: connect, live a random lifetime, close, reconnect; at the storm, drop at once
/// and come back with jittered backoff. Records how long each client took to be back.
pub async fn churn(
    plan: Arc<Plan>,
    id: u32,
    churn: Churn,
    mut phase: watch::Receiver<Phase>,
    stats: Rc<RefCell<Stats>>,
    mut on_first: Option<Box<dyn FnOnce(bool)>>,
) {
    let rng = Rng::new(u64::from(id) + 1);
    let mut mask = MaskSource::new(id);
    let mut storm_at: Option<Instant> = None;
    let mut dropped_at: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *phase.borrow() == Phase::Draining {
            return;
        }
        let started = std::time::Instant::now();
        let link = match plan.open(id).await {
            Ok((link, _)) => {
                backoff = FIRST_BACKOFF;
                let mut stats = stats.borrow_mut();
                stats.connections_established += 1;
                stats.record_handshake(started.elapsed().as_micros() as u64);
                if let Some(at) = dropped_at.take() {
                    stats.storm_recovery_us =
                        stats.storm_recovery_us.max(at.elapsed().as_micros() as u64);
                }
                link
            }
            Err(error) => {
                {
                    let mut stats = stats.borrow_mut();
                    stats.connect_errors += 1;
                    stats.note_error(error);
                }
                if let Some(first) = on_first.take() {
                    first(false);
                }
                sleep(backoff.mul_f64(0.5 + rng.unit())).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Some(first) = on_first.take() {
            first(true);
        }
        // A reader keeps the connection serviced (pings, the server's close) while it lives.
        let reader = tokio_uring::spawn(discard(link.clone()));
        if *phase.borrow() == Phase::Connecting {
            let _ = phase.wait_for(|p| *p != Phase::Connecting).await;
        }
        if storm_at.is_none() {
            storm_at = churn.storm_after.map(|after| Instant::now() + after);
        }
        let lifetime = churn.mean_lifetime.mul_f64(rng.exponential());
        let storm = storm_at.filter(|at| *at > Instant::now());
        tokio::select! {
            _ = sleep(lifetime) => {
                reader.abort();
                let _ = close(&link, &mut mask).await;
                stats.borrow_mut().reconnects += 1;
            }
            _ = sleep_until(storm.unwrap_or_else(far_future)), if storm.is_some() => {
                // Everyone at once, without a close handshake, as when a load balancer dies.
                reader.abort();
                drop(link);
                dropped_at = Some(Instant::now());
                sleep(churn.storm_jitter.mul_f64(rng.unit())).await;
                stats.borrow_mut().reconnects += 1;
            }
            _ = phase.wait_for(|p| *p == Phase::Draining) => {
                reader.abort();
                let _ = close(&link, &mut mask).await;
                return;
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Reads and drops what the server sends until it closes.
async fn discard(link: Rc<Link>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let (result, back) = link.read(buf).await;
        buf = back;
        if !matches!(result, Ok(n) if n > 0) {
            return;
        }
    }
}

/// The client's close handshake: a 1000 close, then read until the server's close or EOF.
async fn close(link: &Link, mask: &mut MaskSource) -> Result<(), String> {
    let mut frame = Vec::with_capacity(8);
    mask.close(&mut frame);
    let (result, _) = link.write_all(frame).await;
    result.map_err(|e| format!("send close: {e}"))?;
    let mut session = Session::new(Role::Client, SessionConfig::default());
    let mut replies = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let Some((result, back)) = link.read_or_give_up(buf, true).await else {
            return Err(no_close_answer());
        };
        buf = back;
        match result {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("read the close: {e}")),
        }
        let mut at = 0;
        while at < buf.len() {
            let (used, event) = session
                .read(&mut buf[at..], &mut replies)
                .map_err(|e| format!("protocol error while closing: {}", e.reason))?;
            at += used;
            if let Some(Event::Close(_)) = event {
                return Ok(());
            }
        }
    }
}
