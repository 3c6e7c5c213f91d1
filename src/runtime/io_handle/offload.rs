//! Handing an established TLS connection's records to the kernel (kernel TLS).
//!
//! The keys may go to the kernel only when no record is half-way between it and rustls:
//! 1. *Draining*: plaintext stops being sealed (it waits in the queue), the multishot
//!    receive is cancelled, and the handoff waits for its last completion (whatever it
//!    carried was decrypted by rustls) and for the sealed records queued (session tickets)
//!    to be written. A record half-received then stays in user space for good.
//! 2. *Attaching*: `TCP_ULP "tls"`. Refused (no `tls` module, io_uring without setsockopt):
//!    the connection stays in user space, counted and logged once.
//! 3. *Keying*: rustls gives its keys and sequence numbers away; `TLS_TX`, then `TLS_RX`
//!    (linked). Past this point the connection cannot go back to user-space records: a
//!    kernel that refuses a key closes it.
//! 4. Done: the queue becomes a plain one (its waiting plaintext goes out unsealed, the
//!    kernel seals it) and the receive starts again, now bringing plaintext.
//!
//! After it, the connection's TLS 1.3 keys still change (`tls/rekey.rs`): the peer's
//! KeyUpdate sets a new receive key before the receive starts again, and ours goes out,
//! followed by a new transmit key, when the peer asks or the key wears out, before the next
//! send. Our close_notify goes out, linked, before the shutdown of our side.

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::Fixed;

use crate::runtime::slot::Actions;
use crate::runtime::tls::offload::{self, attach_ulp, set_key};
use crate::runtime::tls::{BeforeShutdown, ControlRecord, Handoff, KeyDue, TxUpdate};
use crate::runtime::user_data::{Op, pack};
use crate::runtime::{CloseCause, ConnId};

use super::*;

impl Io {
    /// `conn` finished its TLS handshake: starts handing its records to the kernel, unless
    /// the kernel cannot carry its cipher suite.
    pub(in crate::runtime) fn start_offload(&mut self, conn: ConnId) {
        let shard = self.shard;
        let setsockopt = self.reset;
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        let Some((tls, _)) = slot.tls() else {
            return;
        };
        if !tls.begin_handoff() {
            offload::count_fallback(
                shard,
                "the negotiated cipher suite is not one the kernel takes",
            );
            return;
        }
        if !setsockopt {
            tls.abandon_handoff();
            offload::count_fallback(shard, "this kernel's io_uring has no setsockopt");
            return;
        }
        let actions = slot.stop_recv();
        self.apply(conn.slot, actions);
        self.offloads.push(conn);
    }

    /// Moves each handoff in its draining stage on, once nothing is in flight.
    pub(in crate::runtime) fn advance_offloads(&mut self) {
        if self.offloads.is_empty() {
            return;
        }
        let mut offloads = std::mem::take(&mut self.offloads);
        offloads.retain(|&conn| self.advance_offload(conn));
        offloads.append(&mut self.offloads);
        self.offloads = offloads;
    }

    /// Returns whether the handoff of `conn` is still under way.
    fn advance_offload(&mut self, conn: ConnId) -> bool {
        let shard = self.shard;
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return false;
        };
        let open = slot.phase() == Phase::Open;
        let receiving = slot.is_receiving();
        let Some((tls, queue)) = slot.tls() else {
            return false;
        };
        match tls.handoff() {
            Some(Handoff::Draining) => {}
            Some(Handoff::Attaching | Handoff::Keying(_)) => return true,
            None => return false,
        }
        if !open {
            // Closing: the close seals what is queued and a close_notify, in user space.
            tls.abandon_handoff();
            return false;
        }
        if receiving || queue.has_sealed() || queue.is_sending() {
            return true;
        }
        if tls.holds_partial_record() {
            tls.abandon_handoff();
            offload::count_fallback(shard, "a record was half-received when the handshake ended");
            self.resume_user_space(conn);
            return false;
        }
        tls.set_handoff(Handoff::Attaching);
        slot.hold_fd();
        let entry = attach_ulp(self.rings.fixed(conn.slot));
        self.push_offload(conn, entry);
        true
    }

    /// A setsockopt of a handoff completed with `result`.
    pub(in crate::runtime) fn on_offload_op(&mut self, index: u32, generation: u32, result: i32) {
        let conn = ConnId::new(index, generation);
        let shard = self.shard;
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        let actions = slot.on_fd_op_done();
        let open = slot.phase() == Phase::Open;
        let stage = slot.tls().and_then(|(tls, _)| tls.handoff());
        self.apply(index, actions);
        match stage {
            Some(Handoff::Attaching) if result < 0 || !open => {
                if let Some((tls, _)) = slot_of(&mut self.slots, conn).and_then(|s| s.tls()) {
                    tls.abandon_handoff();
                }
                self.offloads.retain(|&c| c != conn);
                if open {
                    let err = std::io::Error::from_raw_os_error(-result);
                    offload::count_fallback(shard, &format!("setsockopt(TCP_ULP, \"tls\"): {err}"));
                }
                self.resume_user_space(conn);
            }
            Some(Handoff::Attaching) => self.set_keys(conn),
            // The handoff already failed: this is the failed key's partner.
            Some(Handoff::Keying(0)) => {}
            Some(Handoff::Keying(left)) => {
                if result < 0 {
                    let err = std::io::Error::from_raw_os_error(-result);
                    self.fail_offload(conn, &format!("setting the record key: {err}"));
                    return;
                }
                let Some(slot) = slot_of(&mut self.slots, conn) else {
                    return;
                };
                let Some((tls, queue)) = slot.tls() else {
                    return;
                };
                if left > 1 {
                    tls.set_handoff(Handoff::Keying(left - 1));
                    return;
                }
                tls.finish_handoff();
                queue.stop_sealing();
                let flush = !queue.is_empty();
                offload::count_offloaded();
                self.offloads.retain(|&c| c != conn);
                tracing::trace!(shard, slot = index, "kernel TLS: records offloaded");
                let Some(slot) = slot_of(&mut self.slots, conn) else {
                    return;
                };
                if flush && slot.mark_dirty() {
                    self.dirty.push(index);
                }
                let actions = slot.arm_recv();
                self.apply(index, actions);
            }
            // The handoff ended (a failed key's partner, cancelled by the link).
            _ => {}
        }
    }

    /// The `tls` upper-layer protocol is attached: the keys go to the kernel.
    fn set_keys(&mut self, conn: ConnId) {
        let fd = self.rings.fixed(conn.slot);
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        let Some((tls, _)) = slot.tls() else {
            return;
        };
        let entries = match tls.extract_keys() {
            Ok([tx, rx]) => [
                set_key(fd, true, tx).flags(squeue::Flags::IO_LINK),
                set_key(fd, false, rx),
            ],
            Err(why) => {
                self.fail_offload(conn, &why);
                return;
            }
        };
        tls.set_handoff(Handoff::Keying(2));
        slot.hold_fd();
        slot.hold_fd();
        for entry in entries {
            self.push_offload(conn, entry);
        }
    }

    /// The handoff failed past the point where rustls could take the records back: the
    /// connection ends.
    fn fail_offload(&mut self, conn: ConnId, why: &str) {
        offload::count_fallback(self.shard, &format!("{why}; the connection is closed"));
        self.offloads.retain(|&c| c != conn);
        let reset = self.reset;
        if let Some(slot) = slot_of(&mut self.slots, conn) {
            if let Some((tls, _)) = slot.tls() {
                tls.set_handoff(Handoff::Keying(0));
            }
            let actions = slot.abort(CloseCause::Error(libc::EPROTO), reset);
            self.apply(conn.slot, actions);
        }
    }

    /// The connection stays on user-space records: its receive starts again and what its
    /// handler queued meanwhile is sealed.
    fn resume_user_space(&mut self, conn: ConnId) {
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        if !slot.queue.is_empty() && slot.mark_dirty() {
            self.dirty.push(conn.slot);
        }
        let actions = slot.arm_recv();
        self.apply(conn.slot, actions);
    }

    fn push_offload(&mut self, conn: ConnId, entry: squeue::Entry) {
        let entry = entry.user_data(pack(Op::TlsOffload, conn.slot, conn.generation));
        // The entry points either at the static ULP name or at the key block the
        // connection's TLS state holds boxed until the handoff ends; that state lives in the
        // slot, which is not freed before its close, and the close waits for this request
        // (`hold_fd`), so the descriptor stays this connection's for as long.
        // SAFETY: what the entry points at, and its descriptor, outlive the request (above).
        unsafe { self.rings.push_for(conn.slot, &entry) };
    }
}

impl Io {
    /// The kernel TLS receive of `conn` failed with EIO: the next record is not application
    /// data. Starts reading it; returns whether it did.
    pub(in crate::runtime) fn read_control_record(&mut self, conn: ConnId) -> bool {
        let fd = self.rings.fixed(conn.slot);
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return false;
        };
        let Some(entry) = slot.tls().and_then(|(tls, _)| tls.start_control_read(fd)) else {
            return false;
        };
        slot.hold_fd();
        let entry = entry.user_data(pack(Op::TlsControl, conn.slot, conn.generation));
        // SAFETY: the recvmsg writes into the boxed header and buffers the connection's TLS
        // state holds until the completion; that state lives in the slot, which is not freed
        // before its close, and the close waits for this request (`hold_fd`).
        unsafe { self.rings.push_for(conn.slot, &entry) };
        true
    }

    /// The control record of `index` was read: `result` bytes, or an error.
    pub(in crate::runtime) fn on_control_record(
        &mut self,
        index: u32,
        generation: u32,
        result: i32,
    ) {
        let conn = ConnId::new(index, generation);
        let shard = self.shard;
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        let actions = slot.on_fd_op_done();
        let record = slot
            .tls()
            .and_then(|(tls, _)| tls.end_control_read(usize::try_from(result).unwrap_or(0)));
        let ended = match (result, record) {
            (..0, _) => slot.on_recv(result, false),
            // The peer's close_notify ends what it sends, as a FIN would.
            (0, _) | (_, Some(ControlRecord::CloseNotify)) => {
                tracing::trace!(shard, slot = index, "kernel TLS: the peer's close_notify");
                slot.on_recv(0, false)
            }
            (_, Some(ControlRecord::Alert(level, description))) => {
                tracing::debug!(
                    shard,
                    slot = index,
                    level,
                    description,
                    "TLS alert from the peer"
                );
                if let Some((tls, _)) = slot.tls() {
                    tls.fail(crate::runtime::TlsFailure::PeerAlert);
                }
                slot.abort(CloseCause::PeerClosed, false)
            }
            // Closing: nothing more is read, and nothing may be submitted after the close.
            (_, Some(ControlRecord::KeyUpdate { .. })) if slot.phase() == Phase::Closing => {
                Actions::default()
            }
            (_, Some(ControlRecord::KeyUpdate { requested })) => {
                let fd = self.rings.fixed(index);
                let update = slot
                    .tls()
                    .and_then(|(tls, _)| tls.kernel_keys())
                    .map(|keys| keys.update_rx(fd, requested));
                match update {
                    Some(Ok(entry)) => {
                        slot.hold_fd();
                        let entry = entry.user_data(pack(Op::TlsRxKey, index, generation));
                        // SAFETY: the setsockopt reads the key block the connection's TLS
                        // state keeps boxed until the completion; that state lives in the
                        // slot, whose close waits for this request (`hold_fd`).
                        unsafe { self.rings.push_for(index, &entry) };
                        Actions::default()
                    }
                    Some(Err(why)) => {
                        offload::log_key_update_failed(shard, &why);
                        slot.abort(CloseCause::Error(libc::EPROTO), false)
                    }
                    None => slot.abort(CloseCause::Error(libc::EPROTO), false),
                }
            }
            (_, record) => {
                tracing::debug!(
                    shard,
                    slot = index,
                    ?record,
                    "kernel TLS: an unexpected record"
                );
                slot.abort(CloseCause::Error(libc::EPROTO), false)
            }
        };
        let rearm = slot.arm_recv();
        self.apply(index, actions);
        self.apply(index, ended);
        self.apply(index, rearm);
    }
}

impl Io {
    /// The new receive key after the peer's KeyUpdate is set (or refused): the receive
    /// starts again, or the connection ends.
    pub(in crate::runtime) fn on_rx_key(&mut self, index: u32, generation: u32, result: i32) {
        let conn = ConnId::new(index, generation);
        let shard = self.shard;
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        let actions = slot.on_fd_op_done();
        if let Some(keys) = slot.tls().and_then(|(tls, _)| tls.kernel_keys()) {
            keys.rx_key_set();
        }
        let next = if result < 0 {
            let err = std::io::Error::from_raw_os_error(-result);
            offload::log_key_update_failed(shard, &format!("setsockopt(TLS_RX): {err}"));
            slot.abort(CloseCause::Error(libc::EPROTO), false)
        } else {
            offload::count_key_update(false);
            tracing::trace!(shard, slot = index, "kernel TLS: the peer's new key is set");
            slot.arm_recv()
        };
        self.apply(index, actions);
        self.apply(index, next);
    }

    /// The flush found `conn`'s transmit key due for replacement (`due`) before its next
    /// send: our KeyUpdate goes out, the new key after it; or, where the key cannot be
    /// replaced (TLS 1.2), the connection ends.
    pub(super) fn update_tx_key(&mut self, index: u32, due: KeyDue) {
        let shard = self.shard;
        let fd = self.rings.fixed(index);
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation();
        let update = match due {
            KeyDue::No => return,
            KeyDue::Exhausted => Err(
                "a TLS 1.2 key reached its cipher's record limit, and TLS 1.2 cannot replace it"
                    .to_string(),
            ),
            KeyDue::Update => match slot.tls().and_then(|(tls, _)| tls.kernel_keys()) {
                Some(keys) => keys.update_tx(fd),
                None => return,
            },
        };
        let entries = match update {
            Ok(entries) => entries,
            Err(why) => {
                offload::log_key_update_failed(shard, &why);
                let actions = slot.abort(CloseCause::Error(libc::EPROTO), false);
                self.apply(index, actions);
                return;
            }
        };
        slot.hold_fd();
        slot.hold_fd();
        for entry in entries {
            let entry = entry.user_data(pack(Op::TlsTxKey, index, generation));
            // SAFETY: the sendmsg and the setsockopt read the record and key block the
            // connection's TLS state keeps boxed until both complete; that state lives in the
            // slot, whose close waits for both requests (`hold_fd`).
            unsafe { self.rings.push_for(index, &entry) };
        }
    }

    /// A request of our KeyUpdate completed: once both have, sending goes on (or the
    /// shutdown that waited for them goes out), or the connection ends.
    pub(in crate::runtime) fn on_tx_key(&mut self, index: u32, generation: u32, result: i32) {
        let conn = ConnId::new(index, generation);
        let shard = self.shard;
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        let actions = slot.on_fd_op_done();
        let written = slot.queue.written();
        let step = slot.tls().and_then(|(tls, _)| tls.tx_step(result, written));
        self.apply(index, actions);
        let shutdown_waits = match step {
            Some(TxUpdate::Done { shutdown_waits }) => {
                offload::count_key_update(true);
                tracing::trace!(shard, slot = index, "kernel TLS: our new key is set");
                if !shutdown_waits
                    && let Some(slot) = slot_of(&mut self.slots, conn)
                    && !slot.queue.is_empty()
                    && slot.mark_dirty()
                {
                    self.dirty.push(index);
                }
                shutdown_waits
            }
            Some(TxUpdate::Failed { shutdown_waits }) => {
                let err = if result < 0 {
                    std::io::Error::from_raw_os_error(-result).to_string()
                } else {
                    format!("{result}")
                };
                offload::log_key_update_failed(
                    shard,
                    &format!("our KeyUpdate or setsockopt(TLS_TX): {err}"),
                );
                if let Some(slot) = slot_of(&mut self.slots, conn) {
                    let actions = slot.abort(CloseCause::Error(libc::EPROTO), false);
                    self.apply(index, actions);
                }
                shutdown_waits
            }
            Some(TxUpdate::Pending) | None => false,
        };
        if shutdown_waits {
            // The slot counted the shutdown when it asked for it: it must complete.
            let fd = self.rings.fixed(index);
            if !self.before_shutdown(conn) {
                let entry = shutdown_write(fd).user_data(pack(Op::Shutdown, index, generation));
                // SAFETY: a shutdown points at no memory; the slot's close waits for it.
                unsafe { self.rings.push_for(index, &entry) };
            }
        }
    }

    /// The slot asked for the shutdown of its side: on kernel TLS our close_notify goes
    /// first, linked to the shutdown, which runs whatever the sendmsg's outcome; while our
    /// KeyUpdate is in flight, both wait for it. Returns whether this took the shutdown
    /// over.
    pub(super) fn before_shutdown(&mut self, conn: ConnId) -> bool {
        let fd = self.rings.fixed(conn.slot);
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return false;
        };
        let Some((tls, _)) = slot.tls() else {
            return false;
        };
        match tls.before_shutdown(fd) {
            BeforeShutdown::Nothing => false,
            BeforeShutdown::Wait => true,
            BeforeShutdown::CloseNotify(entry) => {
                slot.hold_fd();
                let entries = [
                    entry.flags(squeue::Flags::IO_HARDLINK).user_data(pack(
                        Op::TlsCloseNotify,
                        conn.slot,
                        conn.generation,
                    )),
                    shutdown_write(fd).user_data(pack(Op::Shutdown, conn.slot, conn.generation)),
                ];
                for entry in &entries {
                    // SAFETY: the sendmsg reads the record the connection's TLS state keeps
                    // boxed until the slot is freed, which waits for it (`hold_fd`); the
                    // shutdown points at no memory, and the slot counted it.
                    unsafe { self.rings.push_for(conn.slot, entry) };
                }
                true
            }
        }
    }
}

/// shutdown(SHUT_WR) of `fd`: our FIN.
pub(super) fn shutdown_write(fd: Fixed) -> squeue::Entry {
    opcode::Shutdown::new(fd, libc::SHUT_WR).build()
}
