//! [`Io`]: what a handler can do to its shard's connections; `executor` carries out what a
//! slot's transitions ask for.

mod executor;
mod offload;

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::lending::Lending;
use super::rings::Rings;
use super::send_queue::{Dropped, SendBuf, Tag};
use super::slot::{Phase, Slot};
use super::timer::{self, TimerWheel};
use super::{CloseCause, ConnId};

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
    /// TLS connections handing their records to the kernel.
    offloads: Vec<ConnId>,
    /// Lends slices of the receive buffer being delivered (see [`Io::lend`]).
    pub(super) lending: Lending,
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
        // Reserved whole, never grown: a grown table would copy itself and leave the old
        // copy to the allocator, and only the pages of slots in use are ever touched.
        let slots = Vec::with_capacity(rings.capacity());
        Self {
            rings,
            slots,
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
            offloads: Vec::new(),
            lending: Lending::default(),
        }
    }

    /// Connections this shard can hold: the slot numbers it hands out are below this.
    pub fn capacity(&self) -> usize {
        self.rings.capacity()
    }

    /// Queues `bytes` for `conn`. They are written in order, with everything else queued for
    /// it, in one sendmsg at the end of the loop turn.
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) {
        self.enqueue(conn, bytes, false, None);
    }

    /// `part`, bytes of what the handler is being handed right now by
    /// [`Handler::on_data`](super::Handler::on_data), as shared bytes without a copy: the
    /// receive buffer they lie in stays out of use until every clone is dropped. `None` when
    /// `part` lies elsewhere, or too many buffers are lent already: copy it then.
    pub fn lend(&mut self, part: &[u8]) -> Option<Bytes> {
        self.lending.lend(part)
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

    /// The tag of `conn`'s oldest message [`Io::drop_stale`] could drop, if tagged.
    pub fn oldest_tag(&self, conn: ConnId) -> Option<Tag> {
        self.slots
            .get(conn.slot as usize)
            .filter(|slot| slot.generation() == conn.generation)
            .and_then(|slot| slot.queue.oldest_tag())
    }

    /// Drops `conn`'s oldest tagged messages not yet being written while `stale` says their
    /// tag is, and stops at the first it keeps: tags given in order make this drop exactly
    /// the stale ones, in work proportional to what it drops.
    pub fn drop_stale(&mut self, conn: ConnId, stale: impl FnMut(Tag) -> bool) -> Dropped {
        slot_of(&mut self.slots, conn)
            .map_or(Dropped::default(), |slot| slot.queue.drop_stale(stale))
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
        self.close_with(conn, false);
    }

    /// Closes like [`Io::close`] a connection whose peer has said its last word (its
    /// WebSocket close frame arrived): once the queue is written, a plain connection's
    /// descriptor closes at once, its FIN following what was queued, without lingering for
    /// the peer's.
    pub fn close_answered(&mut self, conn: ConnId) {
        self.close_with(conn, true);
    }

    fn close_with(&mut self, conn: ConnId, peer_done: bool) {
        let Some(slot) = slot_of(&mut self.slots, conn) else {
            return;
        };
        if slot.phase() == Phase::Open
            && let Some((tls, queue)) = slot.tls()
        {
            executor::seal_for_close(tls, queue, &mut self.seal_scratch);
            if !queue.is_empty() && slot.mark_dirty() {
                self.dirty.push(conn.slot);
            }
        }
        let actions = slot.close(peer_done);
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
    ///
    /// A deadline moved later keeps the wake-up already scheduled, so the handler may hear
    /// `on_deadline` before its deadline and must check what is due; in exchange a
    /// connection has one timer entry however often its deadline moves (a new connection's
    /// handshake deadline is replaced by its idle one, on every connection).
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
        if slot.deadline != 0 && slot.deadline <= self.timers.due_tick(at) {
            return;
        }
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
    /// Whether `conn` is a TLS connection whose records the kernel encrypts and decrypts:
    /// what it receives is plaintext.
    pub(super) fn records_in_kernel(&mut self, conn: ConnId) -> bool {
        slot_of(&mut self.slots, conn)
            .and_then(|slot| slot.tls())
            .is_some_and(|(tls, _)| tls.in_kernel())
    }

    pub fn is_tls(&self, conn: ConnId) -> bool {
        self.slots
            .get(conn.slot as usize)
            .is_some_and(|slot| slot.generation() == conn.generation && slot.is_tls())
    }
}
