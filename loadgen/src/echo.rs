//! One virtual client of the `echo` and `hold` scenarios: three tasks around one socket.
//!
//! - the reader owns the socket's receive side and the protocol session, checks every echo
//!   and records its latency;
//! - the writer is the only task that writes, so frames never interleave;
//! - the pacer decides when messages are due: in the closed loop every echo earns the next
//!   send; in the open loop a fixed schedule does, and each message carries the time it was
//!   due, so a stalled server shows as latency instead of hiding behind a stalled client.
//!
//! When the run ends, the client waits for the echoes still in flight (at most the drain
//! time), then closes with 1000 and reads until the server's close.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::link::{CLOSE_TIMEOUT, Link};
use crate::payload::Stamp;
use crate::run::{Clock, Phase};
use crate::sequence::Tracker;
use crate::stats::Stats;
use crate::wire::{Heard, MaskSource, read_until_close};

/// How each connection sends.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Messages kept in flight in the closed loop; 0 sends nothing (`hold`).
    pub pipeline: usize,
    /// Messages per second per connection: the open loop.
    pub rate: Option<f64>,
    pub message_size: usize,
    pub drain: Duration,
}

enum WriterCmd {
    /// Messages due now (closed loop).
    Send(usize),
    /// Messages `first..first + count` of the open loop's schedule, message `n` due at
    /// `start + n × period`.
    Due {
        first: u64,
        count: u64,
        start: Instant,
        period: Duration,
    },
    /// Protocol replies the session produced (pongs).
    Raw(Vec<u8>),
    /// The run is over: close with 1000.
    Close,
}

/// What the three tasks of a connection share.
struct Shared {
    id: u32,
    sent: Cell<u32>,
    /// The echoes that came back intact.
    echoes: RefCell<Tracker>,
    closing: Cell<bool>,
    stats: Rc<RefCell<Stats>>,
}

impl Shared {
    fn in_flight(&self) -> u32 {
        self.sent.get() - self.echoes.borrow().received()
    }
}

pub async fn run(
    stream: Rc<Link>,
    leftover: Vec<u8>,
    id: u32,
    load: Load,
    clock: Clock,
    mut phase: watch::Receiver<Phase>,
    stats: Rc<RefCell<Stats>>,
) {
    let shared = Rc::new(Shared {
        id,
        sent: Cell::new(0),
        echoes: RefCell::new(Tracker::default()),
        closing: Cell::new(false),
        stats,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio_uring::spawn(write_loop(stream.clone(), rx, shared.clone(), load, clock));
    let pacer = tokio_uring::spawn(pace(
        stream.clone(),
        tx.clone(),
        phase.clone(),
        shared.clone(),
        load,
    ));

    let _ = phase.wait_for(|p| *p != Phase::Connecting).await;
    if load.rate.is_none() && load.pipeline > 0 && *phase.borrow() == Phase::Running {
        let _ = tx.send(WriterCmd::Send(load.pipeline));
    }
    read_loop(&stream, leftover, &shared, load, clock, &phase, &tx).await;
    shared.stats.borrow_mut().messages_lost += u64::from(shared.in_flight());
    drop(tx);
    pacer.abort();
    let _ = writer.await;
}

async fn read_loop(
    stream: &Link,
    pending: Vec<u8>,
    shared: &Shared,
    load: Load,
    clock: Clock,
    phase: &watch::Receiver<Phase>,
    tx: &mpsc::UnboundedSender<WriterCmd>,
) {
    // Each echo may earn the next message; what a read earned goes out in one command.
    let mut earned = 0;
    let ended = read_until_close(
        stream,
        pending,
        clock,
        &shared.closing,
        |heard| match heard {
            Heard::Binary(message, now_ns) => {
                let running = *phase.borrow() == Phase::Running;
                if check_echo(shared, message, load, now_ns) && running {
                    shared.stats.borrow_mut().messages_in_window += 1;
                    if load.rate.is_none() {
                        earned += 1;
                    }
                }
            }
            Heard::Text => shared.stats.borrow_mut().messages_corrupted += 1,
            Heard::Closed { replies } => {
                if !replies.is_empty() {
                    let _ = tx.send(WriterCmd::Raw(replies));
                }
            }
            Heard::Done { replies } => {
                if !replies.is_empty() {
                    let _ = tx.send(WriterCmd::Raw(replies));
                }
                if earned > 0 {
                    let _ = tx.send(WriterCmd::Send(std::mem::take(&mut earned)));
                }
                let over = *phase.borrow() != Phase::Running;
                if over && shared.in_flight() == 0 && !shared.closing.replace(true) {
                    let _ = tx.send(WriterCmd::Close);
                }
            }
        },
    )
    .await;
    if let Err(error) = ended {
        fail(shared, error);
    }
}

/// Accounts for one echoed message; returns whether it was the one expected next.
fn check_echo(shared: &Shared, message: &[u8], load: Load, now_ns: u64) -> bool {
    let mut stats = shared.stats.borrow_mut();
    let stamp = match Stamp::read(message, load.message_size, shared.id) {
        Ok(stamp) => stamp,
        Err(_) => {
            stats.messages_corrupted += 1;
            return false;
        }
    };
    let arrival = shared.echoes.borrow_mut().record(stamp.sequence);
    stats.count_arrival(arrival, now_ns.saturating_sub(stamp.sent_at_ns) / 1000)
}

/// The error a server that ignores our close earns.
pub fn no_close_answer() -> String {
    format!(
        "the server did not answer the close within {} s",
        CLOSE_TIMEOUT.as_secs()
    )
}

fn fail(shared: &Shared, error: String) {
    let mut stats = shared.stats.borrow_mut();
    stats.connections_dropped += 1;
    stats.note_error(error);
}

/// Bytes gathered before a write goes out, when many messages are due at once.
const WRITE_BATCH: usize = 256 << 10;

async fn write_loop(
    stream: Rc<Link>,
    mut rx: mpsc::UnboundedReceiver<WriterCmd>,
    shared: Rc<Shared>,
    load: Load,
    clock: Clock,
) {
    let mut out = Vec::with_capacity(4096);
    let mut message = Vec::with_capacity(load.message_size);
    let mut mask = MaskSource::new(shared.id);
    let mut closed = false;
    while let Some(first) = rx.recv().await {
        // Everything in this batch leaves in one write (or a few, if it is large).
        let now_ns = clock.now_ns();
        let mut next = Some(first);
        while let Some(cmd) = next.take().or_else(|| rx.try_recv().ok()) {
            // (messages, when the first was due, nanoseconds between them)
            let (count, first_due_ns, period_ns) = match cmd {
                WriterCmd::Send(n) => (n as u64, now_ns, 0),
                WriterCmd::Due {
                    first,
                    count,
                    start,
                    period,
                } => {
                    let period_ns = period.as_nanos() as u64;
                    (count, clock.ns_at(start) + first * period_ns, period_ns)
                }
                WriterCmd::Raw(bytes) => {
                    out.extend_from_slice(&bytes);
                    (0, 0, 0)
                }
                WriterCmd::Close => {
                    if !closed {
                        mask.close(&mut out);
                        closed = true;
                    }
                    (0, 0, 0)
                }
            };
            for i in 0..count {
                // Messages due but not yet written when the run ends are never sent.
                if closed || shared.closing.get() {
                    break;
                }
                let sequence = shared.sent.get();
                message.clear();
                Stamp {
                    connection: shared.id,
                    sequence,
                    sent_at_ns: first_due_ns + i * period_ns,
                }
                .write(load.message_size, &mut message);
                mask.binary(&message, &mut out);
                shared.sent.set(sequence + 1);
                shared.stats.borrow_mut().messages_sent += 1;
                if out.len() >= WRITE_BATCH && !write_out(&stream, &mut out, &shared).await {
                    return;
                }
            }
        }
        if !write_out(&stream, &mut out, &shared).await {
            return;
        }
    }
}

/// Writes and empties `out`; false once the connection failed.
async fn write_out(stream: &Link, out: &mut Vec<u8>, shared: &Shared) -> bool {
    if out.is_empty() {
        return true;
    }
    let (result, written) = stream.write_all(std::mem::take(out)).await;
    *out = written;
    out.clear();
    if let Err(error) = result {
        if !shared.closing.get() {
            fail(shared, format!("write: {error}"));
        }
        return false;
    }
    true
}

/// Decides when the run's end begins the close, and in the open loop, when messages are due.
async fn pace(
    link: Rc<Link>,
    tx: mpsc::UnboundedSender<WriterCmd>,
    mut phase: watch::Receiver<Phase>,
    shared: Rc<Shared>,
    load: Load,
) {
    let _ = phase.wait_for(|p| *p != Phase::Connecting).await;
    if let Some(rate) = load.rate.filter(|r| *r > 0.0) {
        let period = Duration::from_secs_f64(1.0 / rate);
        // Spread the connections' schedules over one period so they do not send in lockstep.
        let offset = period.mul_f64(f64::from(shared.id % 997) / 997.0);
        let start = Instant::now() + offset;
        // Each wake-up hands the writer every message due by now, however many: after a
        // stall they all go at once, each stamped with the time it was due. One command per
        // wake-up, not per message, so a writer that falls behind costs no memory.
        let mut scheduled: u64 = 0;
        loop {
            let next = start + period.mul_f64(scheduled as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = phase.changed() => {}
            }
            if *phase.borrow() != Phase::Running {
                break;
            }
            let Some(elapsed) = Instant::now().checked_duration_since(start) else {
                continue;
            };
            let due = (elapsed.as_secs_f64() / period.as_secs_f64()) as u64 + 1;
            if due > scheduled {
                let (first, count) = (scheduled, due - scheduled);
                scheduled = due;
                let _ = tx.send(WriterCmd::Due {
                    first,
                    count,
                    start,
                    period,
                });
            }
        }
    }
    let _ = phase.wait_for(|p| *p != Phase::Running).await;
    // Echoes still in flight get the drain time; the reader closes as soon as they are in.
    if shared.in_flight() > 0 {
        tokio::time::sleep(load.drain).await;
    }
    if !shared.closing.replace(true) {
        let _ = tx.send(WriterCmd::Close);
    }
    // The reader ends (and aborts this task) when the server answers; if it never does,
    // ending the socket wakes the reader.
    give_up_on_close(&link, &shared.stats).await;
}

/// Waits for the server to answer our close; after [`CLOSE_TIMEOUT`], notes that it did not
/// and shuts the socket, so a reader waiting on it sees the end.
pub async fn give_up_on_close(link: &Link, stats: &RefCell<Stats>) {
    tokio::time::sleep(CLOSE_TIMEOUT).await;
    stats.borrow_mut().note_error(no_close_answer());
    link.shutdown();
}
