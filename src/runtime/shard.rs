//! One shard: its ring, its connections, and the loop that drives them.
//!
//! Each loop turn: handle every completion, fire due deadlines, write out what handlers
//! queued (one sendmsg per connection), give the receive buffers back, then enter the kernel
//! once to submit everything and wait for the next completion or timer tick.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::types::{DestinationSlot, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::buf_ring::BufRing;
use super::listener;
use super::mailbox::Mailbox;
use super::slot::{Dropped, Phase, SendBuf, Slot};
use super::socket;
use super::timer::{self, TimerWheel};
use super::user_data::{Op, next_generation, pack, unpack};
use super::{CloseCause, Config, ConnId, Handler};

/// The provided-buffer group of every shard's ring (each ring has its own groups).
const BUFFER_GROUP: u16 = 0;
/// Accepts kept in flight per listening socket.
const ACCEPTS_PER_LISTENER: usize = 16;
/// How long to wait before accepting again after running out of memory or descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Spare sendmsg headers kept for reuse; each is about 1 KiB.
const MAX_SPARE_SEND_BUFS: usize = 256;

/// What a handler can do to connections; lent to every [`Handler`] call.
pub struct Io {
    ring: IoUring,
    slots: Vec<Slot>,
    timers: TimerWheel,
    now: Instant,
    /// Connections with something to write this turn.
    dirty: Vec<u32>,
    /// Connections whose receive must be started again (resumed, or the buffers ran out).
    rearm: Vec<u32>,
    /// Connections that wrote out their whole queue this turn.
    drained: Vec<u32>,
    /// A descriptor closed this turn: parked accepts may go ahead.
    slots_freed: bool,
    /// Boxed: the kernel reads a send buffer by address while its send is in flight, so
    /// it must not move when the pool grows.
    #[allow(clippy::vec_box)]
    /// Spare message headers for sendmsg, at most MAX_SPARE_SEND_BUFS.
    send_pool: Vec<Box<SendBuf>>,
    live: usize,
    shard: usize,
    linger: Duration,
}

impl Io {
    fn live_slot(&mut self, conn: ConnId) -> Option<&mut Slot> {
        self.slots
            .get_mut(conn.slot as usize)
            .filter(|slot| slot.generation == conn.generation && slot.phase != Phase::Free)
    }

    /// Queues `bytes` for `conn`. They are written in order, with everything else queued for
    /// it, in one sendmsg at the end of the loop turn.
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) {
        self.enqueue(conn, bytes, false);
    }

    /// Like [`Io::send`], for a whole message that [`Io::drop_oldest`] may drop unsent.
    pub fn send_droppable(&mut self, conn: ConnId, bytes: Bytes) {
        self.enqueue(conn, bytes, true);
    }

    /// Drops `conn`'s oldest droppable messages not yet being written, until at most `limit`
    /// bytes are queued (or nothing droppable is left).
    pub fn drop_oldest(&mut self, conn: ConnId, limit: usize) -> Dropped {
        self.live_slot(conn)
            .map_or(Dropped::default(), |slot| slot.drop_oldest(limit))
    }

    fn enqueue(&mut self, conn: ConnId, bytes: Bytes, droppable: bool) {
        if bytes.is_empty() {
            return;
        }
        let Some(slot) = self.live_slot(conn) else {
            return;
        };
        if !matches!(slot.phase, Phase::Open | Phase::Draining) {
            return;
        }
        slot.push(bytes, droppable);
        let listed = std::mem::replace(&mut slot.dirty, true);
        if !listed {
            self.dirty.push(conn.slot);
        }
    }

    /// Bytes queued for `conn` and not yet written.
    pub fn queued_bytes(&self, conn: ConnId) -> usize {
        self.slots
            .get(conn.slot as usize)
            .filter(|slot| slot.generation == conn.generation)
            .map_or(0, |slot| slot.queued)
    }

    /// Closes `conn` once its queue is written: FIN, a short wait for the peer's, then the
    /// descriptor. The handler hears `on_closed` at the end.
    pub fn close(&mut self, conn: ConnId) {
        let Some(slot) = self.live_slot(conn) else {
            return;
        };
        if slot.phase != Phase::Open {
            return;
        }
        slot.phase = Phase::Draining;
        if slot.queue.is_empty() && slot.sending.is_none() {
            self.linger(conn.slot);
        }
    }

    /// Closes `conn` now, dropping whatever is queued.
    pub fn abort(&mut self, conn: ConnId) {
        if self.live_slot(conn).is_some() {
            self.begin_closing(conn.slot, CloseCause::Local);
        }
    }

    /// Stops delivering `conn`'s bytes until [`Io::resume_recv`]; what the kernel already
    /// received is kept, not lost.
    pub fn pause_recv(&mut self, conn: ConnId) {
        let Some(slot) = self.live_slot(conn) else {
            return;
        };
        if std::mem::replace(&mut slot.paused, true) || !slot.recv_armed {
            return;
        }
        let recv = pack(Op::Recv, conn.slot, conn.generation);
        self.push(opcode::AsyncCancel::new(recv).build().user_data(pack(
            Op::Cancel,
            conn.slot,
            conn.generation,
        )));
    }

    pub fn resume_recv(&mut self, conn: ConnId) {
        let Some(slot) = self.live_slot(conn) else {
            return;
        };
        if std::mem::replace(&mut slot.paused, false) {
            self.rearm.push(conn.slot);
        }
    }

    /// Calls the handler's `on_deadline` for `conn` after `after` (rounded up to the timer
    /// tick), replacing any earlier deadline.
    pub fn set_deadline(&mut self, conn: ConnId, after: Duration) {
        if self.live_slot(conn).is_none() {
            return;
        }
        let due = self.timers.schedule(
            conn.slot,
            conn.generation,
            timer::Kind::Handler,
            self.now,
            after,
        );
        self.slots[conn.slot as usize].deadline = due;
    }

    /// Like [`Io::set_deadline`], at an instant.
    pub fn set_deadline_at(&mut self, conn: ConnId, at: Instant) {
        let after = at.saturating_duration_since(self.now);
        self.set_deadline(conn, after);
    }

    /// Bytes written to `conn`'s socket so far.
    pub fn written_bytes(&self, conn: ConnId) -> u64 {
        self.slots
            .get(conn.slot as usize)
            .filter(|slot| slot.generation == conn.generation)
            .map_or(0, |slot| slot.written)
    }

    pub fn clear_deadline(&mut self, conn: ConnId) {
        if let Some(slot) = self.live_slot(conn) {
            slot.deadline = 0;
        }
    }

    /// The time at the start of this loop turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Connections this shard holds, closing ones included.
    pub fn connections(&self) -> usize {
        self.live
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry this runtime builds points only at memory that outlives its
            // completion: slot-owned send buffers and queued bytes, the shard's accept and
            // wake buffers, and the buffer ring.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and retry.
            if let Err(err) = self.ring.submit() {
                tracing::error!("io_uring submit failed with a full queue: {err}");
                std::thread::yield_now();
            }
        }
    }

    fn arm_recv(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.recv_armed || slot.paused || !matches!(slot.phase, Phase::Open | Phase::Lingering) {
            return;
        }
        slot.recv_armed = true;
        let user_data = pack(Op::Recv, index, slot.generation);
        self.push(
            opcode::RecvMulti::new(Fixed(index), BUFFER_GROUP)
                .build()
                .user_data(user_data),
        );
    }

    /// Everything is written: send our FIN, keep reading (and discarding) until the peer's
    /// arrives or the linger deadline passes, so the peer gets all we sent before any reset.
    fn linger(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.peer_closed {
            let cause = slot.cause;
            return self.begin_closing(index, cause);
        }
        slot.phase = Phase::Lingering;
        slot.shutdown_in_flight = true;
        let generation = slot.generation;
        let shutdown = opcode::Shutdown::new(Fixed(index), libc::SHUT_WR).build();
        self.push(shutdown.user_data(pack(Op::Shutdown, index, generation)));
        self.timers.schedule(
            index,
            generation,
            timer::Kind::Linger,
            self.now,
            self.linger,
        );
        self.arm_recv(index);
    }

    /// Cancels what is in flight; the descriptor closes once nothing refers to it.
    fn begin_closing(&mut self, index: u32, cause: CloseCause) {
        let slot = &mut self.slots[index as usize];
        if matches!(slot.phase, Phase::Free | Phase::Closing) {
            return;
        }
        slot.phase = Phase::Closing;
        slot.cause = cause;
        let generation = slot.generation;
        tracing::debug!(
            shard = self.shard,
            slot = index,
            ?cause,
            "closing connection"
        );
        let cancel = pack(Op::Cancel, index, generation);
        if slot.recv_armed {
            self.push(
                opcode::AsyncCancel::new(pack(Op::Recv, index, generation))
                    .build()
                    .user_data(cancel),
            );
        }
        if self.slots[index as usize].sending.is_some() {
            self.push(
                opcode::AsyncCancel::new(pack(Op::Send, index, generation))
                    .build()
                    .user_data(cancel),
            );
        }
        self.close_when_idle(index);
    }

    fn close_when_idle(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.phase != Phase::Closing
            || slot.recv_armed
            || slot.sending.is_some()
            || slot.close_submitted
            || slot.shutdown_in_flight
        {
            return;
        }
        slot.close_submitted = true;
        let user_data = pack(Op::Close, index, slot.generation);
        self.push(
            opcode::Close::new(Fixed(index))
                .build()
                .user_data(user_data),
        );
    }

    /// One sendmsg for each connection with something queued and nothing in flight.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for index in dirty.drain(..) {
            let slot = &mut self.slots[index as usize];
            slot.dirty = false;
            if slot.sending.is_some()
                || slot.queue.is_empty()
                || !matches!(slot.phase, Phase::Open | Phase::Draining)
            {
                continue;
            }
            let mut buf = self.send_pool.pop().unwrap_or_else(SendBuf::new);
            slot.fill(&mut buf);
            let header: *const libc::msghdr = &buf.header;
            let user_data = pack(Op::Send, index, slot.generation);
            slot.sending = Some(buf);
            let send = opcode::SendMsg::new(Fixed(index), header).flags(libc::MSG_NOSIGNAL as u32);
            self.push(send.build().user_data(user_data));
        }
        self.dirty = dirty;
    }

    fn on_send(&mut self, index: u32, result: i32) {
        if let Some(buf) = self.slots[index as usize].sending.take() {
            // A burst (thousands of handshake answers at once) must not leave a spare
            // buffer behind for every connection that took part.
            if self.send_pool.len() < MAX_SPARE_SEND_BUFS {
                self.send_pool.push(buf);
            }
        }
        let slot = &mut self.slots[index as usize];
        if result < 0 {
            if slot.phase == Phase::Closing {
                return self.close_when_idle(index);
            }
            return self.begin_closing(index, CloseCause::Error(-result));
        }
        slot.consume(result as usize);
        let (phase, empty) = (slot.phase, slot.queue.is_empty());
        match (phase, empty) {
            (Phase::Closing, _) => self.close_when_idle(index),
            (Phase::Open | Phase::Draining, false) if !std::mem::replace(&mut slot.dirty, true) => {
                self.dirty.push(index);
            }
            (Phase::Draining, true) => self.linger(index),
            (Phase::Open, true) => self.drained.push(index),
            _ => {}
        }
    }

    fn on_shutdown_done(&mut self, index: u32, generation: u32) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.generation == generation && slot.phase != Phase::Free {
            slot.shutdown_in_flight = false;
            self.close_when_idle(index);
        }
    }

    /// The descriptor is closed and the slot free: the kernel may hand it to the very next
    /// accept, even one completing in the same batch, so the handler must hear of this
    /// connection's end before anything else.
    fn on_closed_fd(&mut self, index: u32) -> (ConnId, CloseCause) {
        let slot = &mut self.slots[index as usize];
        let conn = ConnId {
            slot: index,
            generation: slot.generation,
        };
        let cause = slot.cause;
        tracing::trace!(shard = self.shard, slot = index, "descriptor closed");
        *slot = Slot {
            generation: slot.generation,
            ..Slot::default()
        };
        self.live -= 1;
        self.slots_freed = true;
        (conn, cause)
    }
}

/// Memory an accept in flight writes the peer's address into.
struct AcceptBuf {
    listener: usize,
    address: libc::sockaddr_storage,
    length: libc::socklen_t,
}

/// A shard's loop state. Field order matters: `io` (the ring) drops before `buffers`, so the
/// kernel never sees the buffer memory unmapped while the ring lives.
struct Shard<H: Handler> {
    io: Io,
    buffers: BufRing,
    handler: H,
    mailbox: Arc<Mailbox<H::Message>>,
    listeners: Vec<OwnedFd>,
    accepts: Box<[AcceptBuf]>,
    /// Accepts waiting for a free descriptor slot. An accept armed with the table full
    /// would take the connection off the backlog and then drop it, so no more accepts are
    /// armed than there are free slots; the rest of the clients wait in the backlog.
    parked_accepts: Vec<u32>,
    accepts_in_flight: usize,
    table: usize,
    wake_buf: Box<u64>,
    messages: Vec<H::Message>,
    completions: Vec<(u64, i32, u32)>,
    fired: Vec<timer::Entry>,
    stopping: Option<Instant>,
    grace: Duration,
}

pub(super) fn run<H: Handler>(
    index: usize,
    config: &Config,
    listeners: Vec<OwnedFd>,
    mailbox: Arc<Mailbox<H::Message>>,
    handler: H,
) -> io::Result<()> {
    let ring = super::ring::build(config.ring_entries)?;
    let table = table_size(config.max_connections_per_shard);
    ring.submitter().register_files_sparse(table).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot register a direct-descriptor table of {table}: {e}"),
        )
    })?;
    let buffers = BufRing::new(
        &ring.submitter(),
        config.recv_buffers,
        config.recv_buffer_size,
        BUFFER_GROUP,
    )?;
    let now = Instant::now();
    let accepts = (0..listeners.len() * ACCEPTS_PER_LISTENER)
        .map(|i| AcceptBuf {
            listener: i / ACCEPTS_PER_LISTENER,
            // SAFETY: all-zero bytes are a valid sockaddr_storage.
            address: unsafe { std::mem::zeroed() },
            length: 0,
        })
        .collect();
    let io = Io {
        ring,
        slots: Vec::new(),
        timers: TimerWheel::new(config.timer_tick, now),
        now,
        dirty: Vec::new(),
        rearm: Vec::new(),
        drained: Vec::new(),
        slots_freed: false,
        send_pool: Vec::new(),
        live: 0,
        shard: index,
        linger: config.linger,
    };
    let mut shard = Shard {
        io,
        buffers,
        handler,
        mailbox,
        listeners,
        accepts,
        parked_accepts: Vec::new(),
        accepts_in_flight: 0,
        table: table as usize,
        wake_buf: Box::new(0),
        messages: Vec::new(),
        completions: Vec::with_capacity(1024),
        fired: Vec::new(),
        stopping: None,
        grace: config.shutdown_grace,
    };
    tracing::debug!(shard = index, table, "shard started");
    shard.run()
}

/// The direct-descriptor table size: what was asked, within the kernel's cap (RLIMIT_NOFILE).
fn table_size(wanted: usize) -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let cap = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    wanted.min(cap as usize).clamp(1, u32::MAX as usize) as u32
}

impl<H: Handler> Shard<H> {
    fn run(&mut self) -> io::Result<()> {
        for index in 0..self.accepts.len() as u32 {
            self.arm_accept(index);
        }
        self.arm_wake();
        loop {
            self.io.now = Instant::now();
            self.handle_completions();
            self.fire_deadlines();
            self.accept_into_freed_slots();
            if self.check_stop() {
                return Ok(());
            }
            for index in std::mem::take(&mut self.io.rearm) {
                self.resume(index);
            }
            for index in std::mem::take(&mut self.io.drained) {
                let conn = ConnId {
                    slot: index,
                    generation: self.io.slots[index as usize].generation,
                };
                self.handler.on_drained(&mut self.io, conn);
            }
            self.io.flush();
            self.buffers.publish();
            self.enter_kernel()?;
        }
    }

    /// Submits everything queued this turn and waits for a completion or the next tick.
    fn enter_kernel(&mut self) -> io::Result<()> {
        let tick = Timespec::from(self.io.timers.tick());
        let args = SubmitArgs::new().timespec(&tick);
        match self.io.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn handle_completions(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(
            self.io
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(user_data, result, flags) in &completions {
            let Some((op, index, generation)) = unpack(user_data) else {
                continue;
            };
            match op {
                Op::Accept => self.on_accept(index, result),
                Op::Recv => self.on_recv(index, generation, result, flags),
                Op::Send => self.io.on_send(index, result),
                Op::Close => {
                    let (conn, cause) = self.io.on_closed_fd(index);
                    self.handler.on_closed(&mut self.io, conn, cause);
                }
                Op::Shutdown => self.io.on_shutdown_done(index, generation),
                Op::Wake => self.on_wake(),
                Op::Cancel => {}
            }
        }
        completions.clear();
        self.completions = completions;
    }

    fn arm_accept(&mut self, index: u32) {
        if self.stopping.is_some() {
            return;
        }
        if self.io.live + self.accepts_in_flight >= self.table {
            self.parked_accepts.push(index);
            return;
        }
        self.accepts_in_flight += 1;
        let accept = &mut self.accepts[index as usize];
        accept.length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let listener = self.listeners[accept.listener].as_raw_fd();
        let entry = opcode::Accept::new(
            Fd(listener),
            (&raw mut accept.address).cast(),
            &raw mut accept.length,
        )
        // Direct descriptors are never in the fd table, so there is nothing to close on exec.
        .file_index(Some(DestinationSlot::auto_target()))
        .build()
        .user_data(pack(Op::Accept, index, 0));
        self.io.push(entry);
    }

    fn on_accept(&mut self, index: u32, result: i32) {
        self.accepts_in_flight -= 1;
        if result < 0 {
            match -result {
                libc::ECANCELED => {}
                // The table is full after all (slots freed late): wait for a close.
                libc::ENFILE => self.parked_accepts.push(index),
                // The peer gave up before we accepted: nothing wrong here.
                libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO | libc::EPERM => {
                    self.arm_accept(index)
                }
                // Out of memory or descriptors, or anything unexpected: back off, never spin.
                errno => {
                    let err = io::Error::from_raw_os_error(errno);
                    tracing::warn!(
                        shard = self.io.shard,
                        "accept failed: {err}; retrying in {ACCEPT_BACKOFF:?}"
                    );
                    self.io.timers.schedule(
                        index,
                        0,
                        timer::Kind::AcceptRetry,
                        self.io.now,
                        ACCEPT_BACKOFF,
                    );
                }
            }
            return;
        }
        let slot_index = result as u32;
        let accept = &self.accepts[index as usize];
        let peer =
            socket::from_sockaddr(&accept.address).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let slots = &mut self.io.slots;
        if slots.len() <= slot_index as usize {
            slots.resize_with(slot_index as usize + 1, Slot::default);
        }
        let slot = &mut slots[slot_index as usize];
        if slot.phase != Phase::Free {
            // The kernel gave out a slot we still use: cannot happen while closes complete in
            // order; refuse the newcomer rather than corrupt the old connection.
            tracing::error!(
                shard = self.io.shard,
                slot = slot_index,
                "accepted into a slot still in use"
            );
            self.io
                .push(opcode::Close::new(Fixed(slot_index)).build().user_data(0));
            self.arm_accept(index);
            return;
        }
        slot.generation = next_generation(slot.generation);
        slot.phase = Phase::Open;
        let conn = ConnId {
            slot: slot_index,
            generation: slot.generation,
        };
        self.io.live += 1;
        tracing::debug!(shard = self.io.shard, slot = slot_index, %peer, "accepted");
        self.arm_accept(index);
        self.io.arm_recv(slot_index);
        self.handler.on_open(&mut self.io, conn, peer);
    }

    fn on_recv(&mut self, index: u32, generation: u32, result: i32, flags: u32) {
        let buffer = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(slot) = self
            .io
            .slots
            .get_mut(index as usize)
            .filter(|s| s.generation == generation)
        else {
            if let Some(id) = buffer {
                self.buffers.recycle(id);
            }
            return;
        };
        if !more {
            slot.recv_armed = false;
        }
        let conn = ConnId {
            slot: index,
            generation,
        };
        let (phase, paused) = (slot.phase, slot.paused);
        if let Some(id) = buffer {
            if result > 0 {
                let data = self.buffers.filled(id, result as usize);
                match (phase, paused) {
                    (Phase::Open, false) => self.handler.on_data(&mut self.io, conn, data),
                    (Phase::Open, true) => {
                        self.io.slots[index as usize].stash.extend_from_slice(data)
                    }
                    // Closing: whatever comes now is discarded.
                    _ => {}
                }
            }
            self.buffers.recycle(id);
        }
        let closing = self.io.slots[index as usize].phase == Phase::Closing;
        match result {
            0 => self.on_peer_closed(index),
            _ if closing => self.io.close_when_idle(index),
            // The ring ran dry: start again once this turn has given buffers back.
            r if -r == libc::ENOBUFS => self.io.rearm.push(index),
            // Paused: the receive was cancelled on purpose.
            r if -r == libc::ECANCELED => {}
            r if r < 0 => self.io.begin_closing(index, CloseCause::Error(-r)),
            _ if !more => self.io.rearm.push(index),
            _ => {}
        }
    }

    /// The peer's FIN: write out what is queued, then close.
    fn on_peer_closed(&mut self, index: u32) {
        let slot = &mut self.io.slots[index as usize];
        slot.peer_closed = true;
        match slot.phase {
            Phase::Open => {
                slot.cause = CloseCause::PeerClosed;
                slot.phase = Phase::Draining;
                if slot.queue.is_empty() && slot.sending.is_none() {
                    self.io.begin_closing(index, CloseCause::PeerClosed);
                }
            }
            Phase::Lingering => {
                let cause = slot.cause;
                self.io.begin_closing(index, cause);
            }
            Phase::Closing => self.io.close_when_idle(index),
            Phase::Draining | Phase::Free => {}
        }
    }

    /// Starts a connection's receive again, handing over what arrived while it was paused.
    fn resume(&mut self, index: u32) {
        let slot = &mut self.io.slots[index as usize];
        if slot.paused || slot.phase == Phase::Free {
            return;
        }
        let stash = std::mem::take(&mut slot.stash);
        if !stash.is_empty() && slot.phase == Phase::Open {
            let conn = ConnId {
                slot: index,
                generation: slot.generation,
            };
            let mut stash = stash;
            self.handler.on_data(&mut self.io, conn, &mut stash);
            if self.io.slots[index as usize].paused {
                return;
            }
        }
        self.io.arm_recv(index);
    }

    fn fire_deadlines(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.io.timers.advance(self.io.now, &mut fired);
        for entry in fired.drain(..) {
            if entry.kind == timer::Kind::AcceptRetry {
                self.arm_accept(entry.index);
                continue;
            }
            let Some(slot) = self.io.slots.get_mut(entry.index as usize) else {
                continue;
            };
            if slot.generation != entry.generation || slot.phase == Phase::Free {
                continue;
            }
            let conn = ConnId {
                slot: entry.index,
                generation: entry.generation,
            };
            match entry.kind {
                timer::Kind::Handler if slot.deadline == entry.due && slot.phase == Phase::Open => {
                    slot.deadline = 0;
                    self.handler.on_deadline(&mut self.io, conn);
                }
                timer::Kind::Linger if slot.phase == Phase::Lingering => {
                    let cause = slot.cause;
                    self.io.begin_closing(entry.index, cause);
                }
                _ => {}
            }
        }
        self.fired = fired;
    }

    fn accept_into_freed_slots(&mut self) {
        if std::mem::take(&mut self.io.slots_freed) {
            // As many as now fit; the rest park again.
            for parked in std::mem::take(&mut self.parked_accepts) {
                self.arm_accept(parked);
            }
        }
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let read = opcode::Read::new(Fd(self.mailbox.wake_fd()), buf.cast(), 8);
        self.io.push(read.build().user_data(pack(Op::Wake, 0, 0)));
    }

    fn on_wake(&mut self) {
        self.mailbox.drain(&mut self.messages);
        for message in std::mem::take(&mut self.messages) {
            self.handler.on_message(&mut self.io, message);
        }
        self.arm_wake();
    }

    /// Handles a shutdown request; returns whether the shard is done.
    fn check_stop(&mut self) -> bool {
        let Some(since) = self.stopping else {
            if self.mailbox.stop.load(std::sync::atomic::Ordering::Acquire) {
                self.stopping = Some(self.io.now);
                for index in 0..self.accepts.len() as u32 {
                    let accept = pack(Op::Accept, index, 0);
                    self.io
                        .push(opcode::AsyncCancel::new(accept).build().user_data(pack(
                            Op::Cancel,
                            0,
                            0,
                        )));
                }
                self.handler.on_shutdown(&mut self.io);
            }
            return false;
        };
        if self.io.live == 0 {
            return true;
        }
        let waited = self.io.now.saturating_duration_since(since);
        if waited >= self.grace {
            for index in 0..self.io.slots.len() as u32 {
                if self.io.slots[index as usize].phase != Phase::Free {
                    self.io.begin_closing(index, CloseCause::Shutdown);
                }
            }
        }
        // Closes are cancelled and submitted; give them a second more, then leave.
        waited >= self.grace + Duration::from_secs(1)
    }
}

/// Binds every shard's listening sockets: one per shard and address. A port of 0 is chosen
/// by the kernel for the first shard and shared by the rest.
pub(super) fn bind_all(config: &Config) -> io::Result<Vec<Vec<OwnedFd>>> {
    let mut per_shard: Vec<Vec<OwnedFd>> = (0..config.shards).map(|_| Vec::new()).collect();
    for &addr in &config.listen {
        listener::ensure_free(addr)?;
        let first = listener::listen(addr, config.backlog)?;
        let bound = listener::local_addr(&first)?;
        per_shard[0].push(first);
        for sockets in per_shard.iter_mut().skip(1) {
            sockets.push(listener::listen(bound, config.backlog)?);
        }
    }
    Ok(per_shard)
}

/// The CPUs this process may run on.
pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the set's real size.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set filled above, for indices below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`.
pub(super) fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it for cpu < CPU_SETSIZE, and
    // sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(
                "cannot pin a shard to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }
}
