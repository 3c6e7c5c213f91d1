//! How the shard carries out what a slot's transitions ask for: opening and closing slots,
//! completions of sends and descriptor operations, the flush, and TLS sealing.

use io_uring::opcode;

use crate::runtime::buf_ring::BUFFER_GROUP;
use crate::runtime::ring;
use crate::runtime::send_queue::{SendBuf, SendQueue};
use crate::runtime::slot::{Action, Actions, CANCEL_BOUND, Phase, Slot};
use crate::runtime::timer;
use crate::runtime::tls::{KeyDue, Seal, Sending, TlsAcceptor, TlsStream};
use crate::runtime::user_data::{Op, pack};
use crate::runtime::{CloseCause, ConnId, Secured};

use super::offload::shutdown_write;
use super::*;

/// The request that writes what `header` describes: a plain send when it is one
/// contiguous chunk (a connection's frames of one turn usually are), which spares the kernel
/// copying in the message header and importing an iovec array; else a sendmsg.
fn send_entry(fd: io_uring::types::Fixed, header: *const libc::msghdr) -> io_uring::squeue::Entry {
    // SAFETY: `header` points at the SendBuf the queue just filled and holds (`start_send`);
    // its iovec pointer covers `msg_iovlen` initialised entries of that same buffer.
    let single = unsafe {
        let msg = &*header;
        (msg.msg_iovlen == 1).then(|| *msg.msg_iov)
    };
    match single.and_then(|iov| Some((iov.iov_base, u32::try_from(iov.iov_len).ok()?))) {
        Some((base, len)) => opcode::Send::new(fd, base.cast_const().cast(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build(),
        None => opcode::SendMsg::new(fd, header)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build(),
    }
}

impl Io {
    /// A connection accepted into `index` by listening socket `listener`, through TLS when
    /// `tls` is given; `None` if the slot is somehow still in use (the newcomer is then
    /// closed), or TLS could not start.
    pub(in crate::runtime) fn open(
        &mut self,
        index: u32,
        listener: u8,
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
    pub(in crate::runtime) fn receive_tls(
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
            let actions = slot.close(false);
            self.apply(conn.slot, actions);
        }
        outcome.ok().flatten()
    }

    /// Whether `conn` is still there and open (not closing).
    pub(in crate::runtime) fn is_open(&self, conn: ConnId) -> bool {
        self.slots
            .get(conn.slot as usize)
            .is_some_and(|slot| slot.generation() == conn.generation && slot.phase() == Phase::Open)
    }

    /// The slot a completion of generation `generation` belongs to, if still there.
    pub(in crate::runtime) fn slot_for(
        &mut self,
        index: u32,
        generation: u32,
    ) -> Option<&mut Slot> {
        slot_of(&mut self.slots, ConnId::new(index, generation))
    }

    pub(in crate::runtime) fn on_send(&mut self, index: u32, generation: u32, result: i32) {
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
    pub(in crate::runtime) fn on_fd_op_done(&mut self, index: u32, generation: u32) {
        if let Some(slot) = self.slot_for(index, generation) {
            let actions = slot.on_fd_op_done();
            self.apply(index, actions);
        }
    }

    /// One of the runtime's closing deadlines passed. Whether it found requests that outlived
    /// their cancellation, and shut the socket down to end them.
    pub(in crate::runtime) fn on_closing_timer(
        &mut self,
        index: u32,
        generation: u32,
        kind: timer::Kind,
    ) -> bool {
        let reset = self.reset;
        let Some(slot) = self.slot_for(index, generation) else {
            return false;
        };
        let actions = slot.on_timer(kind, reset);
        let overran = kind == timer::Kind::Cancel && !actions.is_empty();
        if overran {
            tracing::debug!(
                shard = self.shard,
                slot = index,
                "cancelled requests outlived their bound"
            );
        }
        self.apply(index, actions);
        overran
    }

    /// The descriptor is closed and the slot free: the kernel may hand it to the very next
    /// accept, even one completing in the same batch, so the handler must hear of this
    /// connection's end before anything else.
    pub(in crate::runtime) fn on_closed_fd(
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
    pub(in crate::runtime) fn close_all(&mut self) {
        for index in 0..self.slots.len() as u32 {
            let actions = self.slots[index as usize].abort(CloseCause::Shutdown, false);
            self.apply(index, actions);
        }
    }

    /// One sendmsg for each connection with something queued and nothing in flight.
    pub(in crate::runtime) fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for index in dirty.drain(..) {
            let slot = &mut self.slots[index as usize];
            if !slot.take_flush() {
                continue;
            }
            if let Some((tls, queue)) = slot.tls() {
                match tls.sending() {
                    Sending::Sealed => {
                        seal_batch(tls, queue, &mut self.seal_scratch);
                        if !queue.has_sealed() {
                            continue;
                        }
                    }
                    Sending::Wait => continue,
                    Sending::Plain => match tls.key_due(queue.written()) {
                        KeyDue::No => tls.count_send(),
                        due => {
                            self.update_tx_key(index, due);
                            continue;
                        }
                    },
                }
            }
            let buf = self.send_pool.pop().unwrap_or_else(SendBuf::new);
            let header = slot.queue.start_send(buf);
            let send = send_entry(self.rings.fixed(index), header).user_data(pack(
                Op::Send,
                index,
                slot.generation(),
            ));
            // The slot is not freed before the completion: its close waits for the send.
            // SAFETY: `header` is the boxed SendBuf the queue holds as its send in flight; it,
            // its iovecs and the chunks they point into stay put until the completion
            // (`start_send`), and the entry points at nothing else.
            unsafe { self.rings.push_for(index, &send) };
        }
        self.dirty = dirty;
    }

    /// Carries out what a transition of slot `index` asked for.
    #[inline]
    pub(in crate::runtime) fn apply(&mut self, index: u32, actions: Actions) {
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
                Action::ShutdownWrite => {
                    // Kernel TLS: our close_notify goes first, linked.
                    if self.before_shutdown(conn) {
                        continue;
                    }
                    shutdown_write(fd).user_data(of(Op::Shutdown))
                }
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
                    // From the clock, not the turn's start: a turn that closes a whole table
                    // can take longer than the bound itself. Validated at start: now + the
                    // configured durations never overflows.
                    let now = Instant::now();
                    let at = now.checked_add(after).unwrap_or(now);
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
            // The multishot receive writes only into buffers of the shard's buffer ring,
            // registered before and dropped after this ring; the descriptor slot stays ours
            // until the close the slot's transitions submit last completes.
            // SAFETY: besides that receive, only the setsockopt points at our memory: the
            // static LINGER_ZERO.
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
pub(super) fn seal_for_close(tls: &mut TlsStream, queue: &mut SendQueue, scratch: &mut Vec<u8>) {
    tls.abandon_handoff();
    if tls.in_kernel() || tls.handoff().is_some() {
        // The kernel seals what is queued (once it holds the keys).
        return;
    }
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
