//! [`Io`]: what a handler can do to its shard's connections, and how the shard carries out
//! what a slot's transitions ask for.

use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::opcode;

use super::buf_ring::BUFFER_GROUP;
use super::ring;
use super::rings::Rings;
use super::send_queue::SendQueue;
use super::send_queue::{Dropped, SendBuf, Tag};
use super::slot::{Action, Actions, CANCEL_BOUND, Phase, Slot};
use super::timer::{self, TimerWheel};
use super::tls::{Seal, TlsAcceptor, TlsStream};
use super::user_data::{Op, pack};
use super::{CloseCause, ConnId, Secured};

/// Spare sendmsg headers kept for reuse; each is about 1 KiB.
const MAX_SPARE_SEND_BUFS: usize = 256;

/// Plaintext a TLS connection seals per flush at most: eight full records. What it holds
/// sealed and unsent is bounded by this, beside what its queue's bound allows.
const SEAL_BATCH: usize = 128 << 10;

/// What a handler can do to connections; lent to every [`Handler`](super::Handler) call.
pub struct Io {
    /// Declared first: dropping the rings waits for the kernel to finish with the memory
    /// of the fields below (send queues and their headers).
    pub(super) rings: Rings,
    pub(super) slots: Vec<Slot>,
    pub(super) timers: TimerWheel,
    pub(super) now: Instant,
    /// Connections with something to write this turn.
    dirty: Vec<u32>,
    /// Connections whose receive must be started again (resumed, or the buffers ran out).
    pub(super) rearm: Vec<ConnId>,
    /// Connections that wrote out their whole queue this turn.
    pub(super) drained: Vec<ConnId>,
    /// Tags of chunks the kernel finished taking this turn.
    pub(super) sent_tags: Vec<Tag>,
    /// A descriptor closed this turn: parked accepts may go ahead.
    pub(super) slots_freed: bool,
    /// Spare message headers for sendmsg, at most MAX_SPARE_SEND_BUFS.
    #[allow(
        clippy::vec_box,
        reason = "the kernel reads a header by address while its send is in flight"
    )]
    send_pool: Vec<Box<SendBuf>>,
    pub(super) live: usize,
    shard: usize,
    drain_timeout: Duration,
    linger: Duration,
    /// Aborts reset (SO_LINGER 0 through io_uring); without it they are plain closes.
    reset: bool,
    /// Where a TLS connection's small queued pieces are gathered to be sealed in one record.
    seal_scratch: Vec<u8>,
}

/// The slot `conn` names, if that connection is still there.
fn slot_of(slots: &mut [Slot], conn: ConnId) -> Option<&mut Slot> {
    slots
        .get_mut(conn.slot as usize)
        .filter(|slot| slot.generation() == conn.generation && slot.is_live())
}

impl Io {
    pub(super) fn new(rings: Rings, shard: usize, config: &super::Config, reset: bool) -> Self {
        let now = Instant::now();
        Self {
            rings,
            slots: Vec::new(),
            timers: TimerWheel::new(config.timer_tick, now),
            now,
            dirty: Vec::new(),
            rearm: Vec::new(),
            drained: Vec::new(),
            sent_tags: Vec::new(),
            slots_freed: false,
            send_pool: Vec::new(),
            live: 0,
            shard,
            drain_timeout: config.drain_timeout,
            linger: config.linger,
            reset,
            seal_scratch: Vec::new(),
        }
    }

    /// Queues `bytes` for `conn`. They are written in order, with everything else queued for
    /// it, in one sendmsg at the end of the loop turn.
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) {
        self.enqueue(conn, bytes, false, None);
    }

    /// Like [`Io::send`], for a whole message that [`Io::drop_oldest`] may drop unsent. It
    /// is never copied: share it between connections freely.
    pub fn send_droppable(&mut self, conn: ConnId, bytes: Bytes) {
        self.enqueue(conn, bytes, true, None);
    }

    /// Like [`Io::send_droppable`], with a tag the handler hears back
    /// ([`Handler::on_sent`](super::Handler::on_sent)) once the kernel has taken the whole
    /// message; a dropped message's tag never comes back.
    pub fn send_tagged(&mut self, conn: ConnId, bytes: Bytes, tag: Tag) {
        self.enqueue(conn, bytes, true, Some(tag));
    }

    fn enqueue(&mut self, conn: ConnId, bytes: Bytes, droppable: bool, tag: Option<Tag>) {
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        if bytes.is_empty() || !slot.accepts_bytes() {
            return;
        }
        slot.queue.push_tagged(bytes, droppable, tag);
        if slot.mark_dirty() {
            self.dirty.push(conn.slot);
        }
    }

    /// Drops `conn`'s oldest droppable messages not yet being written, until its queue
    /// costs at most `low_water` (or nothing droppable is left). The work is proportional to
    /// what it drops, plus what it must keep in front (in flight, or not droppable).
    pub fn drop_oldest(&mut self, conn: ConnId, low_water: usize) -> Dropped {
        slot_of(&mut self.slots, conn)
            .map_or(Dropped::default(), |slot| slot.queue.drop_oldest(low_water))
    }

    /// What `conn`'s queue costs: bytes not yet written, plus
    /// [`CHUNK_OVERHEAD`](super::CHUNK_OVERHEAD) per queued chunk, plus the capacity of the
    /// buffers the queue owns (bytes queued behind a sendmsg in flight are copied into
    /// them).
    pub fn queued_bytes(&self, conn: ConnId) -> usize {
        self.slots
            .get(conn.slot as usize)
            .filter(|slot| slot.generation() == conn.generation)
            .map_or(0, |slot| slot.queue.cost())
    }

    /// Bytes the kernel has accepted for `conn` since it opened: no progress over a while
    /// means the peer is not reading.
    pub fn written_bytes(&self, conn: ConnId) -> u64 {
        self.slots
            .get(conn.slot as usize)
            .filter(|slot| slot.generation() == conn.generation)
            .map_or(0, |slot| slot.queue.written())
    }

    /// Closes `conn` once its queue is written: FIN, a wait for the peer's, then the
    /// descriptor. From here the runtime owns the connection's end: writing out the queue
    /// may take [`Config::drain_timeout`](super::Config::drain_timeout), the wait
    /// [`Config::linger`](super::Config::linger), and past either the connection is aborted,
    /// so the handler hears `on_closed` within both plus a little whatever the peer does.
    ///
    /// On a TLS connection what is queued is sealed now, followed by a close_notify; bytes
    /// queued after this would follow it, and are dropped. A TLS connection whose handshake
    /// has not finished can send none of its plaintext: that is dropped, and the connection
    /// ends with [`TlsFailure::Unfinished`](super::TlsFailure::Unfinished).
    pub fn close(&mut self, conn: ConnId) {
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        if slot.phase() == Phase::Open
            && let Some((tls, queue)) = slot.tls()
        {
            seal_for_close(tls, queue, &mut self.seal_scratch);
            if !queue.is_empty() && slot.mark_dirty() {
                self.dirty.push(conn.slot);
            }
        }
        let actions = slot.close();
        self.apply(conn.slot, actions);
    }

    /// Closes `conn` now, dropping whatever is queued: the kernel resets the connection
    /// (SO_LINGER 0, where io_uring can set it) and frees its buffers at once.
    pub fn abort(&mut self, conn: ConnId) {
        if let Some(slot) = slot_of(&mut self.slots, conn) {
            let actions = slot.abort(CloseCause::Local, self.reset);
            self.apply(conn.slot, actions);
        }
    }

    /// Stops delivering `conn`'s bytes until [`Io::resume_recv`]; what the kernel already
    /// received is kept, not lost.
    pub fn pause_recv(&mut self, conn: ConnId) {
        if let Some(slot) = slot_of(&mut self.slots, conn) {
            let actions = slot.pause();
            self.apply(conn.slot, actions);
        }
    }

    pub fn resume_recv(&mut self, conn: ConnId) {
        if let Some(slot) = slot_of(&mut self.slots, conn)
            && slot.resume()
        {
            self.rearm.push(conn);
        }
    }

    /// Calls the handler's `on_deadline` for `conn` after `after` (rounded up to the timer
    /// tick), replacing any earlier deadline. Delivered only while the connection is open.
    pub fn set_deadline(&mut self, conn: ConnId, after: Duration) {
        match self.now.checked_add(after) {
            Some(at) => self.set_deadline_at(conn, at),
            None => self.clear_deadline(conn),
        }
    }

    /// Like [`Io::set_deadline`], at `at`.
    pub fn set_deadline_at(&mut self, conn: ConnId, at: Instant) {
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        slot.deadline = self
            .timers
            .schedule(conn.slot, conn.generation, timer::Kind::Handler, at);
    }

    pub fn clear_deadline(&mut self, conn: ConnId) {
        if let Some(slot) = slot_of(&mut self.slots, conn) {
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

    /// Which listening socket accepted `conn`: its index in `Config::listen`.
    pub fn listener_of(&self, conn: ConnId) -> Option<usize> {
        self.slots
            .get(conn.slot as usize)
            .filter(|slot| slot.generation() == conn.generation && slot.is_live())
            .map(|slot| usize::from(slot.listener))
    }

    /// Whether `conn` came through a TLS listener.
    pub fn is_tls(&self, conn: ConnId) -> bool {
        self.slots
            .get(conn.slot as usize)
            .is_some_and(|slot| slot.generation() == conn.generation && slot.is_tls())
    }

    /// A connection accepted into `index` by listening socket `listener`, through TLS when
    /// `tls` is given; `None` if the slot is somehow still in use (the newcomer is then
    /// closed), or TLS could not start.
    pub(super) fn open(
        &mut self,
        index: u32,
        listener: u16,
        tls: Option<&TlsAcceptor>,
    ) -> Option<ConnId> {
        let stream = match tls.map(TlsStream::new).transpose() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::error!(shard = self.shard, "cannot start a TLS connection: {err}");
                self.close_stray(index);
                return None;
            }
        };
        if self.slots.len() <= index as usize {
            self.slots.resize_with(index as usize + 1, Slot::default);
        }
        let slot = &mut self.slots[index as usize];
        if slot.is_live() {
            // Cannot happen while closes complete in order; refuse the newcomer rather than
            // corrupt the old connection.
            tracing::error!(
                shard = self.shard,
                slot = index,
                "accepted into a slot in use"
            );
            self.close_stray(index);
            return None;
        }
        let actions = slot.open();
        slot.listener = listener;
        if let Some(stream) = stream {
            slot.set_tls(stream);
        }
        let conn = ConnId::new(index, slot.generation());
        self.live += 1;
        self.rings.opened(index);
        self.apply(index, actions);
        Some(conn)
    }

    /// Closes a descriptor accepted into `index` that no connection will own.
    fn close_stray(&mut self, index: u32) {
        let close = opcode::Close::new(self.rings.fixed(index))
            .build()
            .user_data(0);
        // SAFETY: a close carries no pointers.
        unsafe { self.rings.push_for(index, &close) };
    }

    /// Bytes received on TLS connection `conn` (which must be open): decrypts what it can
    /// into `plain`, queues what the handshake answers, and on a failure closes the
    /// connection after the alert (or the not-TLS reply) is written. Returns the
    /// handshake's outcome when these bytes completed it.
    pub(super) fn receive_tls(
        &mut self,
        conn: ConnId,
        data: &mut [u8],
        plain: &mut Vec<u8>,
        not_tls_reply: &bytes::Bytes,
    ) -> Option<Secured> {
        let slot = slot_of(&mut self.slots, conn)?;
        let (tls, queue) = slot.tls()?;
        let outcome = tls.receive(data, plain, queue, not_tls_reply);
        if let Err(failure) = outcome {
            tracing::debug!(shard = self.shard, slot = conn.slot, %failure, "TLS failed");
            queue.discard_plaintext();
        }
        // Handshake records to send, or plaintext that waited for the handshake.
        let ready = queue.has_sealed() || (tls.is_established() && queue.has_plaintext());
        if ready && slot.mark_dirty() {
            self.dirty.push(conn.slot);
        }
        if outcome.is_err() {
            let actions = slot.close();
            self.apply(conn.slot, actions);
        }
        outcome.ok().flatten()
    }

    /// Whether `conn` is still there and open (not closing).
    pub(super) fn is_open(&self, conn: ConnId) -> bool {
        self.slots
            .get(conn.slot as usize)
            .is_some_and(|slot| slot.generation() == conn.generation && slot.phase() == Phase::Open)
    }

    /// The slot a completion of generation `generation` belongs to, if still there.
    pub(super) fn slot_for(&mut self, index: u32, generation: u32) -> Option<&mut Slot> {
        slot_of(&mut self.slots, ConnId::new(index, generation))
    }

    pub(super) fn on_send(&mut self, index: u32, generation: u32, result: i32) {
        let Some(slot) = slot_of(&mut self.slots, ConnId::new(index, generation)) else {
            return;
        };
        let (actions, buf) = slot.on_sent(result, &mut self.sent_tags);
        // A burst (thousands of handshake answers at once) must not leave a spare buffer
        // behind for every connection that took part.
        if let Some(buf) = buf
            && self.send_pool.len() < MAX_SPARE_SEND_BUFS
        {
            self.send_pool.push(buf);
        }
        self.apply(index, actions);
    }

    /// A shutdown or setsockopt completed.
    pub(super) fn on_fd_op_done(&mut self, index: u32, generation: u32) {
        if let Some(slot) = self.slot_for(index, generation) {
            let actions = slot.on_fd_op_done();
            self.apply(index, actions);
        }
    }

    /// One of the runtime's closing deadlines passed.
    pub(super) fn on_closing_timer(&mut self, index: u32, generation: u32, kind: timer::Kind) {
        let reset = self.reset;
        if let Some(slot) = self.slot_for(index, generation) {
            let actions = slot.on_timer(kind, reset);
            if kind == timer::Kind::Cancel && !actions.is_empty() {
                tracing::warn!(
                    shard = self.shard,
                    slot = index,
                    "cancelled requests outlived their bound: shutting the socket down"
                );
            }
            self.apply(index, actions);
        }
    }

    /// The descriptor is closed and the slot free: the kernel may hand it to the very next
    /// accept, even one completing in the same batch, so the handler must hear of this
    /// connection's end before anything else.
    pub(super) fn on_closed_fd(
        &mut self,
        index: u32,
        generation: u32,
    ) -> Option<(ConnId, CloseCause)> {
        let slot = self.slot_for(index, generation)?;
        let cause = slot.on_closed();
        tracing::trace!(
            shard = self.shard,
            slot = index,
            ?cause,
            "descriptor closed"
        );
        self.live -= 1;
        self.rings.closed(index);
        self.slots_freed = true;
        Some((ConnId::new(index, generation), cause))
    }

    /// Closes every connection still here, as the shutdown grace ran out.
    pub(super) fn close_all(&mut self) {
        for index in 0..self.slots.len() as u32 {
            let actions = self.slots[index as usize].abort(CloseCause::Shutdown, false);
            self.apply(index, actions);
        }
    }

    /// One sendmsg for each connection with something queued and nothing in flight.
    pub(super) fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for index in dirty.drain(..) {
            let slot = &mut self.slots[index as usize];
            if !slot.take_flush() {
                continue;
            }
            if let Some((tls, queue)) = slot.tls() {
                seal_batch(tls, queue, &mut self.seal_scratch);
                if !queue.has_sealed() {
                    continue;
                }
            }
            let buf = self.send_pool.pop().unwrap_or_else(SendBuf::new);
            let header = slot.queue.start_send(buf);
            let send = opcode::SendMsg::new(self.rings.fixed(index), header)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(pack(Op::Send, index, slot.generation()));
            // SAFETY: `header` is the boxed SendBuf the slot's queue now holds as its send in
            // flight; it and the chunks its iovecs point into stay put and unchanged until
            // the completion hands the box back (`SendQueue::start_send`). The slot is not
            // freed before then: its close waits for the send to end.
            unsafe { self.rings.push_for(index, &send) };
        }
        self.dirty = dirty;
    }

    /// Carries out what a transition of slot `index` asked for.
    #[inline]
    pub(super) fn apply(&mut self, index: u32, actions: Actions) {
        if !actions.is_empty() {
            self.carry_out(index, actions);
        }
    }

    /// Out of line: most transitions ask for nothing, and the callers stay small.
    #[inline(never)]
    fn carry_out(&mut self, index: u32, actions: Actions) {
        let generation = self.slots[index as usize].generation();
        let conn = ConnId::new(index, generation);
        let fd = self.rings.fixed(index);
        let of = |op: Op| pack(op, index, generation);
        for action in actions {
            let entry = match action {
                Action::ArmRecv => opcode::RecvMulti::new(fd, BUFFER_GROUP)
                    .build()
                    .user_data(of(Op::Recv)),
                Action::CancelRecv => opcode::AsyncCancel::new(of(Op::Recv))
                    .build()
                    .user_data(of(Op::Cancel)),
                Action::CancelSend => opcode::AsyncCancel::new(of(Op::Send))
                    .build()
                    .user_data(of(Op::Cancel)),
                Action::ShutdownWrite => opcode::Shutdown::new(fd, libc::SHUT_WR)
                    .build()
                    .user_data(of(Op::Shutdown)),
                Action::ShutdownBoth => opcode::Shutdown::new(fd, libc::SHUT_RDWR)
                    .build()
                    .user_data(of(Op::Shutdown)),
                Action::LingerZero => ring::linger_zero(fd).user_data(of(Op::SockOpt)),
                Action::Close => opcode::Close::new(fd).build().user_data(of(Op::Close)),
                Action::StartTimer(kind) => {
                    let after = match kind {
                        timer::Kind::Drain => self.drain_timeout,
                        timer::Kind::Linger => self.linger,
                        _ => CANCEL_BOUND,
                    };
                    // Validated at start: now + the configured durations never overflows.
                    let at = self.now.checked_add(after).unwrap_or(self.now);
                    self.timers.schedule(index, generation, kind, at);
                    continue;
                }
                Action::RearmRecv => {
                    self.rearm.push(conn);
                    continue;
                }
                Action::Flush => {
                    self.dirty.push(index);
                    continue;
                }
                Action::Drained => {
                    self.drained.push(conn);
                    continue;
                }
            };
            // SAFETY: none of these entries carries a pointer to our memory but two: the
            // multishot receive writes into buffers the kernel picks from the shard's buffer
            // ring, which is registered before and dropped after this ring; the setsockopt
            // reads the static LINGER_ZERO. The descriptor slot stays ours until the close
            // submitted last completes (the slot's transitions order it after the others).
            unsafe { self.rings.push_for(index, &entry) };
        }
    }
}

/// Seals a batch of a TLS connection's plaintext, unless sealed records are already waiting
/// (one batch in the kernel's hands at a time). Plaintext that can never be sealed (the
/// connection failed or sent its close_notify) is dropped; plaintext queued before the
/// handshake finished waits for it.
fn seal_batch(tls: &mut TlsStream, queue: &mut SendQueue, scratch: &mut Vec<u8>) {
    if queue.has_sealed() || !queue.has_plaintext() {
        return;
    }
    match queue.seal_front(SEAL_BATCH, scratch, |plaintext| tls.seal(plaintext)) {
        Ok(_) | Err(Seal::NotReady) => {}
        Err(Seal::Never) => queue.discard_plaintext(),
    }
    shrink_scratch(scratch);
}

/// A TLS connection is closing: seals all its plaintext and then a close_notify, or, if
/// its handshake never finished, drops the plaintext it cannot send.
fn seal_for_close(tls: &mut TlsStream, queue: &mut SendQueue, scratch: &mut Vec<u8>) {
    if !tls.is_established() {
        tls.close_unfinished();
        queue.discard_plaintext();
        return;
    }
    while queue.has_plaintext() {
        match queue.seal_front(SEAL_BATCH, scratch, |plaintext| tls.seal(plaintext)) {
            Ok(sealed) if sealed > 0 => {}
            _ => {
                queue.discard_plaintext();
                break;
            }
        }
    }
    shrink_scratch(scratch);
    if let Some(close_notify) = tls.close_notify() {
        queue.push_sealed(close_notify);
    }
}

/// The scratch buffer stays at most one batch large.
fn shrink_scratch(scratch: &mut Vec<u8>) {
    if scratch.capacity() > SEAL_BATCH {
        *scratch = Vec::new();
    }
}
