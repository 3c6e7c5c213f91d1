//! The io_uring engine: the plain (unshaped) connections of one worker thread, with no task
//! each.
//!
//! A load generator must be cheaper per message than the server it measures, or it measures
//! itself. Here a connection is a slot: its socket, its [`Conn`], the one send it may have in
//! flight. Its socket has one multishot receive, into buffers the kernel picks from a ring
//! the thread shares. A turn of the loop handles every completion that is ready, queues the
//! sends they earned, and submits them with the wait for the next completions in one system
//! call. The ring defers completion work to that call (DEFER_TASKRUN): the server's writes
//! cost it no wake-up of this thread while the thread is busy, and this thread never takes
//! an interrupt per completion.

mod buffers;
mod ring;

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};
use tokio::sync::watch;

use crate::client::{Behaviour, Conn, ConnError, Ctx};
use crate::clock::Clock;
use crate::open::{OpenError, record_failed, record_opened};
use crate::plan::{Phase, Plan};
use crate::run::{PROGRESS_EVERY, Progress, Published, publish, thread_ramp};
use crate::stats::Stats;
use crate::target::socket_to;
use crate::upgrade::Pending;
use buffers::Buffers;
use ring::Ring;

/// The longest the loop sleeps: a change of phase is seen within this, so the measured
/// window's edges are as sharp as the tasks' (which hear it at once) to within 2 ms.
const MAX_WAIT: Duration = Duration::from_millis(2);
/// Bytes per receive buffer.
const BUFFER_SIZE: usize = 16 << 10;

/// What a completion is for, in the low bits of its user data; the slot is above them.
const RECV: u64 = 0;
const SEND: u64 = 1;

enum Stage {
    /// Not started: waiting for its place in the ramp or for the connect gate.
    Waiting,
    /// The upgrade request is sent (or on its way); the answer is awaited.
    Upgrading(Box<Pending>),
    Open(Box<Conn>),
    /// Over: the socket is shut down; the kernel's last completions are awaited.
    Ending,
    Finished,
}

struct Slot {
    id: u32,
    bucket: usize,
    fd: Option<OwnedFd>,
    stage: Stage,
    /// The bytes being sent, from `sent` on; the kernel reads them until the send completes.
    sending: Vec<u8>,
    sent: usize,
    send_in_flight: bool,
    /// The send in flight is the upgrade request, not frames.
    sending_request: bool,
    /// A multishot receive is armed.
    receiving: bool,
    /// The deadline the timer heap holds for this slot (others there are stale).
    deadline: Option<u64>,
    started: Instant,
}

/// The largest completion queue the kernel sets up (IORING_MAX_CQ_ENTRIES).
const MAX_COMPLETIONS: u32 = 64 << 10;

/// A fatal error of the ring itself: the thread's connections cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("io_uring: {0}")]
struct RingFailed(io::Error);

/// Runs the connections `ids` of `plan` to the end of the run. `Err` only when the ring
/// cannot be set up (the caller then runs them as tasks).
pub fn run(
    plan: &Plan,
    ids: &[u32],
    mut phase: watch::Receiver<Phase>,
    progress: &Progress,
) -> io::Result<Vec<Stats>> {
    let entries = (ids.len() as u32 * 2)
        .clamp(256, 32 << 10)
        .next_power_of_two();
    // The kernel refuses (EINVAL) a completion queue over IORING_MAX_CQ_ENTRIES, 64 Ki:
    // a worker with more than 16,384 connections gets that many and reaps more often.
    let completions = (ids.len() as u32 * 4)
        .clamp(1024, MAX_COMPLETIONS)
        .next_power_of_two();
    let ring = Ring::new(entries, completions)?;
    let count = (ids.len() * 4).clamp(64, 4096).next_power_of_two() as u16;
    let buffers = Buffers::new(&ring.submitter(), count, BUFFER_SIZE)?;
    let slots = ids
        .iter()
        .map(|&id| Slot {
            id,
            bucket: plan.profile_of(id).0,
            fd: None,
            stage: Stage::Waiting,
            sending: Vec::with_capacity(4096),
            sent: 0,
            send_in_flight: false,
            sending_request: false,
            receiving: false,
            deadline: None,
            started: Instant::now(),
        })
        .collect();
    let mut engine = Engine {
        ring,
        slots,
        buffers,
        stats: vec![Stats::default(); plan.layout().buckets()],
        timers: BinaryHeap::new(),
        ready: VecDeque::new(),
        upgrading: 0,
        unfinished: ids.len(),
        rearm: Vec::new(),
        phase: *phase.borrow_and_update(),
        plan,
        progress,
        clock: Clock,
    };
    match engine.run(&mut phase) {
        Ok(()) => Ok(engine.stats),
        Err(failed) => Ok(engine.abandon(&failed)),
    }
}

struct Engine<'p> {
    /// Declared first, so it is dropped before the memory its operations use.
    ring: Ring,
    slots: Vec<Slot>,
    buffers: Buffers,
    /// One per profile bucket.
    stats: Vec<Stats>,
    /// (deadline, slot), soonest first.
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    /// Slots whose turn to connect has come, waiting for the connect gate.
    ready: VecDeque<u32>,
    upgrading: usize,
    unfinished: usize,
    /// Slots whose multishot receive ended for want of buffers.
    rearm: Vec<u32>,
    phase: Phase,
    plan: &'p Plan,
    /// Where the main thread reads how the run goes.
    progress: &'p Progress,
    clock: Clock,
}

impl Engine<'_> {
    fn run(&mut self, phase: &mut watch::Receiver<Phase>) -> Result<(), RingFailed> {
        self.schedule_starts();
        let published = Cell::new(Published::default());
        let mut next_progress = Instant::now() + PROGRESS_EVERY;
        let mut completions = Vec::with_capacity(1024);
        let mut due = Vec::new();
        while self.unfinished > 0 {
            if phase.has_changed().unwrap_or(false) {
                self.phase = *phase.borrow_and_update();
                self.on_phase()?;
            }
            // The timers due now; any a handler sets for now again wait for the next turn.
            let now = self.clock.now_ns();
            due.clear();
            while let Some(&Reverse((at, slot))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                due.push((at, slot));
            }
            for &(at, slot) in &due {
                if self.slots[slot as usize].deadline == Some(at) {
                    self.slots[slot as usize].deadline = None;
                    self.on_timer(slot, now)?;
                }
            }
            if Instant::now() >= next_progress {
                publish(self.stats.iter(), self.progress, &published);
                next_progress = Instant::now() + PROGRESS_EVERY;
            }
            let wait = self
                .timers
                .peek()
                .map_or(MAX_WAIT, |&Reverse((at, _))| {
                    Duration::from_nanos(at.saturating_sub(now))
                })
                .min(MAX_WAIT);
            self.ring.submit_and_wait(wait).map_err(RingFailed)?;
            self.ring.completions(&mut completions);
            let now = self.clock.now_ns();
            for &(user_data, result, flags) in &completions {
                let slot = (user_data >> 2) as u32;
                match user_data & 3 {
                    RECV => self.on_recv(slot, result, flags, now)?,
                    _ => self.on_send(slot, result, now)?,
                }
            }
            self.buffers.publish();
            for slot in std::mem::take(&mut self.rearm) {
                self.arm_recv(slot)?;
            }
        }
        publish(self.stats.iter(), self.progress, &published);
        Ok(())
    }

    /// Puts every connection in line to start: at once, or at its place in the ramp.
    fn schedule_starts(&mut self) {
        let ramp = thread_ramp(self.plan);
        let start = self.clock.now_ns();
        for slot in 0..self.slots.len() as u32 {
            match ramp {
                Some(rate) => {
                    let at = start + (f64::from(slot) / rate * 1e9) as u64;
                    self.set_deadline(slot, Some(at));
                }
                None => self.ready.push_back(slot),
            }
        }
        self.start_ready();
    }

    /// Starts waiting connections while the connect gate has room.
    fn start_ready(&mut self) {
        while self.upgrading < self.plan.connect_concurrency {
            let Some(slot) = self.ready.pop_front() else {
                return;
            };
            if matches!(self.slots[slot as usize].stage, Stage::Waiting) {
                self.start(slot);
            }
        }
    }

    /// Connects and sends the upgrade request; the answer comes to the receive armed here.
    fn start(&mut self, slot: u32) {
        let plan = self.plan;
        let (id, bucket) = (
            self.slots[slot as usize].id,
            self.slots[slot as usize].bucket,
        );
        let target = plan.target_of(id);
        let fd = match socket_to(target.addr, plan.source_ip(id), true) {
            Ok(fd) => fd,
            Err(error) => {
                record_failed(&mut self.stats[bucket], &OpenError::Connect(error));
                self.progress.settled.fetch_add(1, Ordering::Relaxed);
                plan.gave_up(id);
                self.finish(slot);
                return;
            }
        };
        let s = &mut self.slots[slot as usize];
        s.started = Instant::now();
        s.sending.clear();
        let pending = plan.upgrade.request(target, &mut s.sending);
        s.sending_request = true;
        s.stage = Stage::Upgrading(Box::new(pending));
        s.fd = Some(fd);
        self.upgrading += 1;
        // A failed push can only be the ring failing; the next enter reports it.
        let _ = self.send(slot);
        let _ = self.arm_recv(slot);
    }

    /// Submits the slot's `sending` bytes from `sent` on.
    fn send(&mut self, slot: u32) -> Result<(), RingFailed> {
        let s = &mut self.slots[slot as usize];
        let Some(fd) = &s.fd else {
            return Ok(());
        };
        let rest = &s.sending[s.sent..];
        let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .build()
            .user_data(u64::from(slot) << 2 | SEND);
        s.send_in_flight = true;
        // SAFETY: `sending` belongs to the slot and is neither touched nor dropped while
        // `send_in_flight` is set, which stays so until this send's completion; the slot
        // keeps the descriptor open until then too.
        unsafe { self.ring.push(&entry) }.map_err(RingFailed)
    }

    /// Arms the slot's multishot receive.
    fn arm_recv(&mut self, slot: u32) -> Result<(), RingFailed> {
        let s = &mut self.slots[slot as usize];
        let Some(fd) = &s.fd else {
            return Ok(());
        };
        if s.receiving || matches!(s.stage, Stage::Ending | Stage::Finished) {
            return Ok(());
        }
        let entry = opcode::RecvMulti::new(types::Fd(fd.as_raw_fd()), buffers::GROUP)
            .build()
            .user_data(u64::from(slot) << 2 | RECV);
        s.receiving = true;
        // SAFETY: the receive writes only into the registered buffers, which outlive every
        // operation; the slot keeps the descriptor open until its last completion.
        unsafe { self.ring.push(&entry) }.map_err(RingFailed)
    }

    fn on_recv(
        &mut self,
        slot: u32,
        result: i32,
        flags: u32,
        now_ns: u64,
    ) -> Result<(), RingFailed> {
        let index = slot as usize;
        if !cqueue::more(flags) {
            self.slots[index].receiving = false;
        }
        let buffer = cqueue::buffer_select(flags);
        match (result, buffer) {
            (n, Some(id)) if n > 0 => {
                let data = self.buffers.filled(id, n as usize);
                let s = &mut self.slots[index];
                let ctx = &mut Ctx {
                    stats: &mut self.stats[s.bucket],
                    phase: self.phase,
                    now_ns,
                };
                let mut upgraded = None;
                match &mut s.stage {
                    Stage::Upgrading(pending) => match pending.feed(data) {
                        Ok(None) => {}
                        Ok(Some((agreed, consumed))) => upgraded = Some(Ok((agreed, consumed))),
                        Err(error) => upgraded = Some(Err(OpenError::Upgrade(error))),
                    },
                    Stage::Open(conn) => conn.on_read(data, ctx),
                    Stage::Waiting | Stage::Ending | Stage::Finished => {}
                }
                match upgraded {
                    Some(Ok((agreed, consumed))) => {
                        let data = self.buffers.filled(id, n as usize);
                        let s = &mut self.slots[index];
                        let behaviour = self.plan.behaviour(s.id).unwrap_or(Behaviour::Hold);
                        let stats = &mut self.stats[s.bucket];
                        record_opened(stats, s.started, &agreed);
                        self.progress.settled.fetch_add(1, Ordering::Relaxed);
                        self.progress.established.fetch_add(1, Ordering::Relaxed);
                        let mut conn = Conn::new(s.id, &agreed, behaviour, self.plan.drain);
                        let ctx = &mut Ctx {
                            stats,
                            phase: self.phase,
                            now_ns,
                        };
                        conn.on_time(ctx);
                        if consumed < data.len() {
                            conn.on_read(&mut data[consumed..], ctx);
                        }
                        s.stage = Stage::Open(Box::new(conn));
                        self.upgrading -= 1;
                        self.start_ready();
                    }
                    Some(Err(error)) => self.open_failed(slot, error),
                    None => {}
                }
                self.buffers.recycle(id);
            }
            (error, _) if error == -libc::ENOBUFS => self.rearm.push(slot),
            (result, _) => {
                let (opening, ended) = if result == 0 {
                    (OpenError::ClosedInHandshake, None)
                } else {
                    let error = io::Error::from_raw_os_error(-result);
                    let copy = io::Error::from_raw_os_error(-result);
                    (OpenError::ReadResponse(error), Some(ConnError::Read(copy)))
                };
                if matches!(self.slots[index].stage, Stage::Upgrading(_)) {
                    self.open_failed(slot, opening);
                } else if let Slot {
                    stage: Stage::Open(conn),
                    bucket,
                    ..
                } = &mut self.slots[index]
                {
                    let bucket = *bucket;
                    let ctx = &mut Ctx {
                        stats: &mut self.stats[bucket],
                        phase: self.phase,
                        now_ns,
                    };
                    match ended {
                        None => conn.on_eof(ctx),
                        Some(error) => conn.on_io_error(error, ctx),
                    }
                }
            }
        }
        // A multishot receive can end while data still flows (the kernel's choice): re-arm.
        let s = &self.slots[index];
        if !s.receiving && result > 0 && matches!(s.stage, Stage::Upgrading(_) | Stage::Open(_)) {
            self.arm_recv(slot)?;
        }
        self.after(slot, now_ns)
    }

    fn on_send(&mut self, slot: u32, result: i32, now_ns: u64) -> Result<(), RingFailed> {
        let s = &mut self.slots[slot as usize];
        s.send_in_flight = false;
        if result < 0 {
            let error = io::Error::from_raw_os_error(-result);
            s.sending.clear();
            s.sent = 0;
            s.sending_request = false;
            if matches!(s.stage, Stage::Upgrading(_)) {
                let error = match error.raw_os_error() {
                    Some(libc::ECONNREFUSED | libc::ETIMEDOUT | libc::EHOSTUNREACH) => {
                        OpenError::Connect(error)
                    }
                    _ => OpenError::SendRequest(error),
                };
                self.open_failed(slot, error);
            } else if let Stage::Open(conn) = &mut s.stage {
                conn.on_io_error(
                    ConnError::Write(error),
                    &mut Ctx {
                        stats: &mut self.stats[s.bucket],
                        phase: self.phase,
                        now_ns,
                    },
                );
            }
            return self.after(slot, now_ns);
        }
        s.sent += result as usize;
        if s.sent < s.sending.len() {
            return self.send(slot);
        }
        let request = std::mem::take(&mut s.sending_request);
        if let (Stage::Open(conn), false) = (&mut s.stage, request) {
            conn.on_written(
                s.sending.len(),
                &mut Ctx {
                    stats: &mut self.stats[s.bucket],
                    phase: self.phase,
                    now_ns,
                },
            );
        }
        s.sending.clear();
        s.sent = 0;
        self.after(slot, now_ns)
    }

    /// The change of phase reaches every connection; connections that have not started by
    /// the end of the run never will.
    fn on_phase(&mut self) -> Result<(), RingFailed> {
        let now_ns = self.clock.now_ns();
        for slot in 0..self.slots.len() as u32 {
            let s = &self.slots[slot as usize];
            if matches!(s.stage, Stage::Open(_)) {
                self.on_timer(slot, now_ns)?;
            } else if matches!(s.stage, Stage::Waiting) && self.phase == Phase::Draining {
                self.plan.gave_up(s.id);
                self.finish(slot);
            }
        }
        Ok(())
    }

    fn on_timer(&mut self, slot: u32, now_ns: u64) -> Result<(), RingFailed> {
        let s = &mut self.slots[slot as usize];
        match &mut s.stage {
            Stage::Waiting => {
                self.ready.push_back(slot);
                self.start_ready();
                Ok(())
            }
            Stage::Open(conn) => {
                conn.on_time(&mut Ctx {
                    stats: &mut self.stats[s.bucket],
                    phase: self.phase,
                    now_ns,
                });
                self.after(slot, now_ns)
            }
            _ => Ok(()),
        }
    }

    /// After any event of an open connection: writes what it queued, ends it when it is
    /// done, and keeps its timer.
    fn after(&mut self, slot: u32, now_ns: u64) -> Result<(), RingFailed> {
        let s = &mut self.slots[slot as usize];
        let Stage::Open(conn) = &mut s.stage else {
            return self.maybe_finished(slot);
        };
        let deadline = conn.next_deadline(now_ns);
        let done = conn.is_done();
        if conn.is_cut() {
            // Whatever is queued or in flight will never be taken: the shutdown fails the
            // send, and its completion finishes the slot.
            self.end(slot);
            return self.maybe_finished(slot);
        }
        if !s.send_in_flight && conn.has_output() {
            conn.swap_output(&mut s.sending);
            s.sent = 0;
            self.send(slot)?;
        } else if done && !s.send_in_flight {
            self.end(slot);
            return self.maybe_finished(slot);
        }
        self.set_deadline(slot, deadline);
        Ok(())
    }

    fn set_deadline(&mut self, slot: u32, deadline: Option<u64>) {
        let s = &mut self.slots[slot as usize];
        if s.deadline != deadline {
            s.deadline = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, slot)));
            }
        }
    }

    fn open_failed(&mut self, slot: u32, error: OpenError) {
        let s = &self.slots[slot as usize];
        record_failed(&mut self.stats[s.bucket], &error);
        self.progress.settled.fetch_add(1, Ordering::Relaxed);
        self.plan.gave_up(s.id);
        self.upgrading -= 1;
        self.end(slot);
        self.start_ready();
    }

    /// Shuts the socket down: its receive ends, its send fails, and then it is finished.
    fn end(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.stage = Stage::Ending;
        s.deadline = None;
        if let Some(fd) = &s.fd {
            // SAFETY: shutdown takes a descriptor the slot owns and touches no memory.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Closes an ending slot once the kernel is done with it.
    fn maybe_finished(&mut self, slot: u32) -> Result<(), RingFailed> {
        let s = &self.slots[slot as usize];
        if matches!(s.stage, Stage::Ending) && !s.receiving && !s.send_in_flight {
            self.finish(slot);
        }
        Ok(())
    }

    fn finish(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.stage = Stage::Finished;
        s.fd = None;
        s.deadline = None;
        self.unfinished -= 1;
    }

    /// The ring failed: what was measured stands, the connections still open count as
    /// dropped, and the memory the kernel may still use is leaked rather than freed under it.
    fn abandon(mut self, failed: &RingFailed) -> Vec<Stats> {
        for s in &self.slots {
            if !matches!(s.stage, Stage::Finished | Stage::Waiting) {
                self.stats[s.bucket].connections_dropped += 1;
            }
        }
        self.stats[0].note_error(failed);
        let stats = std::mem::take(&mut self.stats);
        std::mem::forget(self);
        stats
    }
}
