//! One direct-descriptor slot: the runtime's state for the connection in it, and the phases
//! of its life as a state machine.
//!
//! Every transition is a method that changes the slot and returns the [`Action`]s it needs:
//! requests for the ring, timers, work for this turn. The shard carries them out; the slot
//! never touches a ring, so its life can be tested in memory.
//!
//! ```text
//!  Free ─accept─► Open ─close─► Draining ─queue written─► Lingering ─peer's FIN─► Closing ─► Free
//!                  │               │ drain timeout          │ linger timeout         ▲
//!                  └── abort, error, peer's FIN with nothing queued ─────────────────┘
//! ```
//!
//! `Closing` cancels what is in flight and closes the descriptor once nothing refers to it.
//! A closing deadline that passes aborts: SO_LINGER {on, 0} before the close, so the kernel
//! resets the connection and frees its buffers at once.

use std::time::Duration;

use super::CloseCause;
use super::send_queue::{SendBuf, SendQueue, Tag};
use super::timer;
use super::tls::TlsStream;
use super::user_data::next_generation;

/// How long cancelled requests may take to complete before the socket is shut down under
/// them. Cancels normally complete at once.
pub(crate) const CANCEL_BOUND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Free,
    Open,
    /// Closing was asked for, or the peer sent its FIN: writing out what is queued first.
    Draining,
    /// Our FIN is sent; waiting for the peer's, or the linger deadline.
    Lingering,
    /// Cancelling what is in flight, then closing the descriptor.
    Closing,
}

/// What a transition asks of the shard, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start the multishot receive.
    ArmRecv,
    /// Start the receive again once this turn has given buffers back.
    RearmRecv,
    CancelRecv,
    CancelSend,
    /// shutdown(SHUT_WR): our FIN, after everything written.
    ShutdownWrite,
    /// shutdown(SHUT_RDWR): ends whatever still waits on the socket.
    ShutdownBoth,
    /// SO_LINGER {on, 0}: the close resets the connection.
    LingerZero,
    /// Close the descriptor; the slot is free when this completes.
    Close,
    /// One of the runtime's own deadlines for this connection.
    StartTimer(timer::Kind),
    /// The queue has bytes and no sendmsg in flight: write it this turn.
    Flush,
    /// Everything queued is written: tell the handler.
    Drained,
}

/// The few actions of one transition, without allocating.
#[derive(Default, PartialEq, Eq)]
pub(crate) struct Actions {
    list: [Option<Action>; 6],
    len: usize,
}

impl Actions {
    fn none() -> Self {
        Self::default()
    }

    fn one(action: Action) -> Self {
        let mut actions = Self::none();
        actions.push(action);
        actions
    }

    fn push(&mut self, action: Action) {
        self.list[self.len] = Some(action);
        self.len += 1;
    }

    fn extend(&mut self, other: Actions) {
        for action in other {
            self.push(action);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl IntoIterator for Actions {
    type Item = Action;
    type IntoIter = std::iter::Flatten<std::iter::Take<std::array::IntoIter<Option<Action>, 6>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter().take(self.len).flatten()
    }
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list.iter().flatten()).finish()
    }
}

pub(crate) struct Slot {
    generation: u32,
    phase: Phase,
    cause: CloseCause,
    flags: Flags,
    /// Requests other than recv and send that name the descriptor (shutdown, setsockopt).
    /// The close waits for them: io_uring may run unlinked requests out of order, and one
    /// that ran after the close would hit whichever connection the kernel gave the slot to
    /// next.
    fd_ops: u8,
    pub queue: SendQueue,
    /// The handler's deadline (a timer tick), 0 when none.
    pub deadline: u64,
    /// What only some connections hold. Boxed: 8 bytes in every slot.
    extras: Option<Box<Extras>>,
    /// Which of the shard's listening sockets accepted the connection, in `Config::listen`
    /// order (then `Config::tls_listen`): at most 256 of them.
    pub listener: u8,
}

/// A slot's yes-or-no state, in one byte: with the send queue's one word for its count and
/// mode, a slot is 48 bytes, and a large server holds one per connection.
#[derive(Clone, Copy, Default)]
struct Flags(u8);

impl Flags {
    /// A receive is in flight (the multishot one may still post completions).
    const RECV_ARMED: u8 = 1;
    /// The handler paused reading (only an open connection's bytes are held back).
    const PAUSED: u8 = 1 << 1;
    /// The peer's FIN arrived.
    const PEER_CLOSED: u8 = 1 << 2;
    /// The close of the descriptor is submitted.
    const CLOSE_SUBMITTED: u8 = 1 << 3;
    /// Listed for this turn's flush.
    const DIRTY: u8 = 1 << 4;
    /// The peer said its last word (a WebSocket close frame) on a plain connection: once
    /// ours is written, the descriptor closes without lingering for the peer's FIN.
    const PEER_DONE: u8 = 1 << 5;

    fn get(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// Sets `flag` to `on`; whether it was set before.
    fn replace(&mut self, flag: u8, on: bool) -> bool {
        let was = self.get(flag);
        self.set(flag, on);
        was
    }
}

/// A slot's rarer state.
#[derive(Default)]
struct Extras {
    /// Bytes received while reading was paused.
    stash: Vec<u8>,
    /// A connection accepted on a TLS listener: its record layer.
    tls: Option<TlsStream>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            generation: 0,
            phase: Phase::Free,
            cause: CloseCause::Local,
            flags: Flags::default(),
            fd_ops: 0,
            queue: SendQueue::default(),
            deadline: 0,
            extras: None,
            listener: 0,
        }
    }
}

impl Slot {
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_paused(&self) -> bool {
        self.flags.get(Flags::PAUSED)
    }

    /// Holds a connection, in any phase but `Free`.
    pub fn is_live(&self) -> bool {
        self.phase != Phase::Free
    }

    /// Whether bytes may still be queued: open, or writing out before the FIN.
    pub fn accepts_bytes(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Draining)
    }

    /// A new connection in this slot, under a new generation.
    pub fn open(&mut self) -> Actions {
        debug_assert_eq!(self.phase, Phase::Free);
        *self = Self {
            generation: next_generation(self.generation),
            phase: Phase::Open,
            ..Self::default()
        };
        self.arm_recv()
    }

    /// Bytes were queued; whether the connection must be listed for this turn's flush (it
    /// was not yet).
    pub fn mark_dirty(&mut self) -> bool {
        !self.flags.replace(Flags::DIRTY, true)
    }

    /// Bytes are left to write: list the connection for this turn's flush.
    fn queued(&mut self) -> Actions {
        if self.mark_dirty() {
            Actions::one(Action::Flush)
        } else {
            Actions::none()
        }
    }

    /// Taken off this turn's flush list; whether a sendmsg should start now.
    pub fn take_flush(&mut self) -> bool {
        self.flags.set(Flags::DIRTY, false);
        self.accepts_bytes() && !self.queue.is_sending() && !self.queue.is_empty()
    }

    fn wants_recv(&self) -> bool {
        match self.phase {
            Phase::Open => !self.flags.get(Flags::PAUSED) && !self.handing_off(),
            // Reading on to see the peer's FIN; what arrives is discarded.
            Phase::Lingering => true,
            _ => false,
        }
    }

    /// Starts the receive unless it runs or is not wanted.
    pub fn arm_recv(&mut self) -> Actions {
        if self.flags.get(Flags::RECV_ARMED) || !self.wants_recv() {
            return Actions::none();
        }
        self.flags.set(Flags::RECV_ARMED, true);
        Actions::one(Action::ArmRecv)
    }

    pub fn pause(&mut self) -> Actions {
        if self.flags.replace(Flags::PAUSED, true) || !self.flags.get(Flags::RECV_ARMED) {
            return Actions::none();
        }
        if self.phase == Phase::Open {
            Actions::one(Action::CancelRecv)
        } else {
            Actions::none()
        }
    }

    /// Unpauses; whether the receive must start again (after the stash is handed over).
    pub fn resume(&mut self) -> bool {
        self.flags.replace(Flags::PAUSED, false)
    }

    /// Keeps bytes that arrived while paused, for [`Slot::take_stash`].
    pub fn stash(&mut self, data: &[u8]) {
        let extras = self.extras.get_or_insert_default();
        extras.stash.extend_from_slice(data);
    }

    /// What arrived while paused.
    pub fn take_stash(&mut self) -> Option<Vec<u8>> {
        let extras = self.extras.as_deref_mut()?;
        let stash = std::mem::take(&mut extras.stash);
        if extras.tls.is_none() {
            self.extras = None;
        }
        (!stash.is_empty()).then_some(stash)
    }

    fn drop_stash(&mut self) {
        if let Some(extras) = self.extras.as_deref_mut() {
            extras.stash = Vec::new();
            if extras.tls.is_none() {
                self.extras = None;
            }
        }
    }

    /// Makes this connection a TLS one, with `tls` as its record layer.
    pub fn set_tls(&mut self, tls: TlsStream) {
        self.extras.get_or_insert_default().tls = Some(tls);
        self.queue = SendQueue::sealing();
    }

    pub fn is_tls(&self) -> bool {
        self.extras
            .as_ref()
            .is_some_and(|extras| extras.tls.is_some())
    }

    /// A TLS connection's record layer, and its queue.
    pub fn tls(&mut self) -> Option<(&mut TlsStream, &mut SendQueue)> {
        let tls = self.extras.as_deref_mut()?.tls.as_mut()?;
        Some((tls, &mut self.queue))
    }

    /// A TLS connection handing its records to the kernel, or reading a control record
    /// from it: its receive stays stopped.
    fn handing_off(&self) -> bool {
        self.extras
            .as_ref()
            .and_then(|extras| extras.tls.as_ref())
            .is_some_and(|tls| tls.holds_recv())
    }

    /// Stops the receive of an open connection (it comes back with [`Slot::arm_recv`] when
    /// wanted); the stop is done once [`Slot::is_receiving`] says so.
    pub fn stop_recv(&mut self) -> Actions {
        if self.flags.get(Flags::RECV_ARMED) && self.phase == Phase::Open {
            Actions::one(Action::CancelRecv)
        } else {
            Actions::none()
        }
    }

    /// Whether a receive is in flight (the multishot one may still post completions).
    pub fn is_receiving(&self) -> bool {
        self.flags.get(Flags::RECV_ARMED)
    }

    /// A request naming the descriptor is submitted outside the slot's own transitions: the
    /// close waits for its completion ([`Slot::on_fd_op_done`]).
    pub fn hold_fd(&mut self) {
        self.fd_ops += 1;
    }

    /// The handler closes: write out the queue, then FIN and linger; with `peer_done`, the
    /// peer has nothing more to send, and a plain connection closes without lingering.
    pub fn close(&mut self, peer_done: bool) -> Actions {
        if self.phase != Phase::Open {
            return Actions::none();
        }
        self.phase = Phase::Draining;
        // A TLS peer still sends its close_notify after its last message; arriving at a
        // closed socket it would be answered with a reset.
        self.flags
            .set(Flags::PEER_DONE, peer_done && !self.is_tls());
        if self.queue.is_idle() {
            return self.linger();
        }
        Actions::one(Action::StartTimer(timer::Kind::Drain))
    }

    /// Closes now, dropping what is queued. With `reset`, the kernel sends RST and frees the
    /// socket's buffers at once (when it cannot, a plain close).
    pub fn abort(&mut self, cause: CloseCause, reset: bool) -> Actions {
        self.begin_closing(cause, reset)
    }

    /// Everything is written: our FIN, then read (and discard) until the peer's arrives or
    /// the linger deadline passes, so the peer gets all we sent before any reset.
    fn linger(&mut self) -> Actions {
        // Lingering costs a shutdown, which io_uring runs on a worker thread; a whole table
        // closing at once queues one per connection there, and every cancellation walks that
        // queue. A peer that said its last has nothing a close could reset.
        if self.flags.get(Flags::PEER_CLOSED) || self.flags.get(Flags::PEER_DONE) {
            return self.begin_closing(self.cause, false);
        }
        self.phase = Phase::Lingering;
        self.fd_ops += 1;
        let mut actions = Actions::none();
        actions.push(Action::ShutdownWrite);
        actions.push(Action::StartTimer(timer::Kind::Linger));
        actions.extend(self.arm_recv());
        actions
    }

    /// Cancels what is in flight; the descriptor closes once nothing refers to it.
    fn begin_closing(&mut self, cause: CloseCause, reset: bool) -> Actions {
        if matches!(self.phase, Phase::Free | Phase::Closing) {
            return Actions::none();
        }
        self.phase = Phase::Closing;
        self.cause = cause;
        self.queue.discard_unsent();
        self.drop_stash();
        let mut actions = Actions::none();
        if reset {
            self.fd_ops += 1;
            actions.push(Action::LingerZero);
        }
        if self.flags.get(Flags::RECV_ARMED) {
            actions.push(Action::CancelRecv);
        }
        if self.queue.is_sending() {
            actions.push(Action::CancelSend);
        }
        let close = self.close_if_idle();
        if close.is_empty() {
            actions.push(Action::StartTimer(timer::Kind::Cancel));
        }
        actions.extend(close);
        actions
    }

    fn close_if_idle(&mut self) -> Actions {
        if self.phase != Phase::Closing
            || self.flags.get(Flags::RECV_ARMED)
            || self.queue.is_sending()
            || self.flags.get(Flags::CLOSE_SUBMITTED)
            || self.fd_ops > 0
        {
            return Actions::none();
        }
        self.flags.set(Flags::CLOSE_SUBMITTED, true);
        Actions::one(Action::Close)
    }

    /// The sendmsg in flight completed with `result`; its buffer comes back for reuse.
    /// A sendmsg completed; the tags of the chunks it finished go to `tags`.
    pub fn on_sent(&mut self, result: i32, tags: &mut Vec<Tag>) -> (Actions, Option<Box<SendBuf>>) {
        let buf = self.queue.complete(result, tags);
        (self.after_send(result), buf)
    }

    fn after_send(&mut self, result: i32) -> Actions {
        if result < 0 {
            return match self.phase {
                Phase::Closing => self.close_if_idle(),
                _ => self.begin_closing(CloseCause::Error(-result), false),
            };
        }
        match (self.phase, self.queue.is_empty()) {
            (Phase::Closing, _) => self.close_if_idle(),
            (Phase::Open | Phase::Draining, false) => self.queued(),
            (Phase::Draining, true) => self.linger(),
            (Phase::Open, true) => Actions::one(Action::Drained),
            _ => Actions::none(),
        }
    }

    /// A receive completion's result, after any bytes it carried were handled. `more`: the
    /// multishot receive goes on.
    pub fn on_recv(&mut self, result: i32, more: bool) -> Actions {
        if !more {
            self.flags.set(Flags::RECV_ARMED, false);
        }
        let mut actions = match result {
            0 => self.on_peer_fin(),
            _ if self.phase == Phase::Closing => self.close_if_idle(),
            // The ring ran dry, or the receive was cancelled to pause: see below.
            r if -r == libc::ENOBUFS || -r == libc::ECANCELED => Actions::none(),
            r if r < 0 => self.begin_closing(CloseCause::Error(-r), false),
            _ => Actions::none(),
        };
        if !self.flags.get(Flags::RECV_ARMED) && self.wants_recv() {
            actions.push(Action::RearmRecv);
        }
        actions
    }

    /// The peer's FIN: write out what is queued, then close.
    fn on_peer_fin(&mut self) -> Actions {
        self.flags.set(Flags::PEER_CLOSED, true);
        match self.phase {
            Phase::Open => {
                self.cause = CloseCause::PeerClosed;
                self.phase = Phase::Draining;
                if self.queue.is_idle() {
                    return self.begin_closing(CloseCause::PeerClosed, false);
                }
                Actions::one(Action::StartTimer(timer::Kind::Drain))
            }
            Phase::Lingering => self.begin_closing(self.cause, false),
            Phase::Closing => self.close_if_idle(),
            Phase::Draining | Phase::Free => Actions::none(),
        }
    }

    /// A shutdown or setsockopt on the descriptor completed.
    pub fn on_fd_op_done(&mut self) -> Actions {
        self.fd_ops = self.fd_ops.saturating_sub(1);
        self.close_if_idle()
    }

    /// One of the runtime's deadlines for this connection passed; `reset` as for
    /// [`Slot::abort`].
    pub fn on_timer(&mut self, kind: timer::Kind, reset: bool) -> Actions {
        match (kind, self.phase) {
            (timer::Kind::Drain, Phase::Draining) | (timer::Kind::Linger, Phase::Lingering) => {
                self.begin_closing(CloseCause::TimedOut, reset)
            }
            (timer::Kind::Cancel, Phase::Closing) if !self.flags.get(Flags::CLOSE_SUBMITTED) => {
                // Something did not end when cancelled: end everything on the socket.
                let mut actions = Actions::none();
                if self.flags.get(Flags::RECV_ARMED) {
                    actions.push(Action::CancelRecv);
                }
                if self.queue.is_sending() {
                    actions.push(Action::CancelSend);
                }
                self.fd_ops += 1;
                actions.push(Action::ShutdownBoth);
                actions
            }
            _ => Actions::none(),
        }
    }

    /// The descriptor is closed: the slot is free for the next connection. Returns why the
    /// connection ended.
    pub fn on_closed(&mut self) -> CloseCause {
        let failed = self
            .extras
            .as_ref()
            .and_then(|extras| extras.tls.as_ref()?.failure());
        let cause = failed.map_or(self.cause, CloseCause::Tls);
        *self = Self {
            generation: self.generation,
            ..Self::default()
        };
        cause
    }
}

#[cfg(test)]
mod tests;
