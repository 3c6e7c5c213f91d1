//! One shard's loop: its ring, its connections, and the turn that drives them.
//!
//! Each turn: handle every completion (sendmsg completions first, so what handlers queue
//! after them goes out without a copy), fire due deadlines, take a batch of mail, write out
//! what handlers queued (one sendmsg per connection), give the receive buffers back, then
//! enter the kernel once to submit everything and wait for the next completion or timer tick.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use io_uring::cqueue;
use io_uring::opcode;
use io_uring::types::Fd;

use super::acceptor::Acceptor;
use super::buf_ring::{BUFFER_GROUP, BufRing};
use super::io_handle::Io;
use super::layout::Layout;
use super::lending::Lending;
use super::mailbox::Mailbox;
use super::ring::{Completion, Features};
use super::rings::Rings;
use super::slot::Phase;
use super::timer;
use super::user_data::{Op, pack, unpack};
use super::{Config, ConnId, Handler, Health, TlsAcceptor};

/// How long past the shutdown grace a shard waits for the closes it forced.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A shard's loop state. Field order matters: `io` (holding the rings, whose drop waits for
/// every request) drops before the memory requests point into: receive buffers, accept
/// addresses, the wake-up counters.
struct Shard<H: Handler> {
    io: Io,
    /// Each ring's receive buffers, by ring.
    buffers: Vec<BufRing>,
    acceptor: Acceptor,
    handler: H,
    mailbox: Arc<Mailbox<H::Message>>,
    /// Where the kernel writes the eventfd's counter on a wake-up.
    wake_buf: Box<u64>,
    /// The eventfd the extra rings signal when they have work, and where the first ring
    /// reads its counter.
    rings_wake: OwnedFd,
    rings_wake_buf: Box<u64>,
    mail: Vec<H::Message>,
    /// Mail is waiting: take a batch this turn, and do not block in the kernel.
    mail_ready: bool,
    mail_batch: usize,
    completions: Vec<Completion>,
    fired: Vec<timer::Entry>,
    stopping: Option<Instant>,
    grace: Duration,
    health: Health,
    /// How TLS listeners accept, when there are any.
    tls: Option<TlsAcceptor>,
    /// Plaintext decrypted from one receive of a TLS connection, lent to the handler.
    plain: Vec<u8>,
}

/// The plaintext buffer is kept up to this size between receives.
const PLAIN_KEEP: usize = 256 << 10;

/// What a shard is told about itself at start.
pub(super) struct Setup {
    pub index: usize,
    /// The rings and tables every shard has.
    pub layout: Layout,
    pub features: Features,
    /// Told once the shard's rings exist, or why they could not be made.
    pub ready: mpsc::Sender<io::Result<()>>,
}

/// Runs a shard until it is shut down.
pub(super) fn run<H: Handler>(
    Setup {
        index,
        layout,
        features,
        ready,
    }: Setup,
    config: &Config,
    listeners: Vec<OwnedFd>,
    mailbox: Arc<Mailbox<H::Message>>,
    handler: H,
    health: Health,
) -> io::Result<()> {
    let opened = open_rings(config, layout);
    // The shard is ready to accept: `start` returns (and the server says it listens) only
    // once every shard's rings and buffers exist.
    let _ = ready.send(match &opened {
        Ok(_) => Ok(()),
        Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
    });
    let (rings, buffers, rings_wake) = opened?;
    let mut io = Io::new(rings, index, config, features.setsockopt);
    io.lending = Lending::new(buffers.iter().map(BufRing::pool).collect());
    let mut shard = Shard {
        io,
        buffers,
        acceptor: Acceptor::new(
            listeners,
            layout.rings,
            layout.table as usize,
            config.listen.len(),
        ),
        handler,
        mailbox,
        wake_buf: Box::new(0),
        rings_wake,
        rings_wake_buf: Box::new(0),
        mail: Vec::new(),
        mail_ready: false,
        mail_batch: config.mailbox_batch,
        completions: Vec::with_capacity(1024),
        fired: Vec::new(),
        stopping: None,
        grace: config.shutdown_grace,
        health,
        tls: config.tls.clone(),
        plain: Vec::new(),
    };
    tracing::debug!(
        shard = index,
        rings = layout.rings,
        table = layout.table,
        "shard started"
    );
    shard.run()
}

impl<H: Handler> Shard<H> {
    fn run(&mut self) -> io::Result<()> {
        self.acceptor.start(&mut self.io);
        self.arm_wake();
        if self.io.rings.len() > 1 {
            self.arm_rings_wake();
        }
        loop {
            self.io.now = Instant::now();
            self.health.beat(self.io.shard(), self.io.now);
            self.handle_completions();
            if !self.io.sent_tags.is_empty() {
                let tags = std::mem::take(&mut self.io.sent_tags);
                self.handler.on_sent(&mut self.io, &tags);
                self.io.sent_tags = tags;
                self.io.sent_tags.clear();
            }
            self.fire_deadlines();
            self.acceptor.arm_parked(&mut self.io);
            self.read_mail();
            if self.check_stop() {
                return Ok(());
            }
            for conn in std::mem::take(&mut self.io.rearm) {
                self.resume(conn);
            }
            for conn in std::mem::take(&mut self.io.drained) {
                if self.io.is_open(conn) {
                    self.handler.on_drained(&mut self.io, conn);
                }
            }
            let more_work = self.handler.on_turn(&mut self.io);
            self.io.advance_offloads();
            self.io.flush();
            for (ring, buffers) in self.buffers.iter_mut().enumerate() {
                buffers.reclaim();
                buffers.publish(self.io.rings.get(ring).settled());
            }
            let extra_ready = self.io.rings.submit_extra()?;
            let wait = if self.mail_ready || extra_ready || more_work {
                Duration::ZERO
            } else {
                self.io.timers.tick()
            };
            self.io.rings.first().enter(wait)?;
        }
    }

    fn handle_completions(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        self.io.rings.reap(&mut completions);
        // Sends first: a connection whose last sendmsg is done queues its new bytes without
        // a copy (see `SendQueue`).
        for completion in &completions {
            if let Some((Op::Send, index, generation)) = unpack(completion.user_data) {
                self.io.on_send(index, generation, completion.result);
            }
        }
        for &Completion {
            ring,
            user_data,
            result,
            flags,
        } in &completions
        {
            let Some((op, index, generation)) = unpack(user_data) else {
                continue;
            };
            match op {
                Op::Send | Op::Cancel => {}
                Op::Accept => self.on_accept(index, ring, result),
                Op::Recv => self.on_recv(index, generation, result, flags),
                Op::Close => {
                    if let Some((conn, cause)) = self.io.on_closed_fd(index, generation) {
                        self.handler.on_closed(&mut self.io, conn, cause);
                    }
                }
                Op::Shutdown | Op::SockOpt | Op::TlsCloseNotify => {
                    self.io.on_fd_op_done(index, generation)
                }
                Op::TlsOffload => self.io.on_offload_op(index, generation, result),
                Op::TlsControl => self.io.on_control_record(index, generation, result),
                Op::TlsRxKey => self.io.on_rx_key(index, generation, result),
                Op::TlsTxKey => self.io.on_tx_key(index, generation, result),
                Op::Wake => {
                    self.mail_ready = true;
                    self.arm_wake();
                }
                // The extra rings are looked at every turn; this only woke the shard.
                Op::RingWake => self.arm_rings_wake(),
            }
        }
        completions.clear();
        self.completions = completions;
    }

    fn on_accept(&mut self, index: u32, ring: usize, result: i32) {
        let Some((slot, peer, listener)) =
            self.acceptor.on_complete(index, ring, result, &mut self.io)
        else {
            return;
        };
        let tls = self.tls.as_ref().filter(|_| self.acceptor.is_tls(listener));
        let conn = self.io.open(slot, listener, tls);
        self.acceptor.arm(index, &mut self.io);
        if let Some(conn) = conn {
            tracing::debug!(shard = self.io.shard(), slot, %peer, "accepted");
            self.handler.on_open(&mut self.io, conn, peer);
        }
    }

    fn on_recv(&mut self, index: u32, generation: u32, result: i32, flags: u32) {
        let buffer = cqueue::buffer_select(flags);
        let conn = ConnId::new(index, generation);
        let state = self
            .io
            .slot_for(index, generation)
            .map(|s| (s.phase(), s.is_paused()));
        let ring = self.io.rings.ring_of(index);
        let buffers = &mut self.buffers[ring];
        if result == -libc::ENOBUFS {
            buffers.ran_dry();
        }
        if let Some(id) = buffer {
            buffers.handed_out(id);
            let mut lent = false;
            if let (Some(state), Ok(len @ 1..)) = (state, usize::try_from(result)) {
                let data = buffers.filled(id, len);
                match state {
                    (Phase::Open, false) => {
                        self.io.lending.begin(ring, id, data);
                        deliver(
                            &mut self.io,
                            &mut self.handler,
                            self.tls.as_ref(),
                            &mut self.plain,
                            conn,
                            data,
                        );
                        lent = self.io.lending.end();
                    }
                    (Phase::Open, true) => self.io.slots[index as usize].stash(data),
                    // Closing: whatever comes now is discarded.
                    _ => {}
                }
            }
            // A lent buffer comes back once its last loan ends (`BufRing::reclaim`).
            if !lent {
                buffers.recycle(id);
            }
        }
        // Kernel TLS met a record that is not data: read it, the receive stopped meanwhile.
        let result = if result == -libc::EIO && self.io.read_control_record(conn) {
            -libc::ECANCELED
        } else {
            result
        };
        // The handler may have closed the connection, but not freed its slot: that waits for
        // the close's completion.
        if let Some(slot) = self.io.slot_for(index, generation) {
            let actions = slot.on_recv(result, cqueue::more(flags));
            self.io.apply(index, actions);
        }
    }

    /// Starts a connection's receive again, handing over what arrived while it was paused.
    fn resume(&mut self, conn: ConnId) {
        let Some(slot) = self.io.slot_for(conn.slot, conn.generation) else {
            return;
        };
        if slot.is_paused() {
            return;
        }
        if let Some(mut stash) = slot.take_stash()
            && slot.phase() == Phase::Open
        {
            deliver(
                &mut self.io,
                &mut self.handler,
                self.tls.as_ref(),
                &mut self.plain,
                conn,
                &mut stash,
            );
        }
        if let Some(slot) = self.io.slot_for(conn.slot, conn.generation) {
            let actions = slot.arm_recv();
            self.io.apply(conn.slot, actions);
        }
    }

    fn fire_deadlines(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.io.timers.advance(self.io.now, &mut fired);
        let mut overran = 0usize;
        for entry in fired.drain(..) {
            let conn = ConnId::new(entry.index, entry.generation);
            match entry.kind() {
                timer::Kind::AcceptRetry => self.acceptor.arm(entry.index, &mut self.io),
                timer::Kind::Handler => {
                    let Some(slot) = self.io.slot_for(conn.slot, conn.generation) else {
                        continue;
                    };
                    if slot.deadline == entry.due() && slot.phase() == Phase::Open {
                        slot.deadline = 0;
                        self.handler.on_deadline(&mut self.io, conn);
                    }
                }
                kind => {
                    overran += usize::from(self.io.on_closing_timer(
                        entry.index,
                        entry.generation,
                        kind,
                    ));
                }
            }
        }
        // One line per turn: a stuck kernel would otherwise log once per connection.
        if overran > 0 {
            tracing::warn!(
                shard = self.io.shard(),
                connections = overran,
                "cancelled requests outlived their bound: shutting those sockets down"
            );
        }
        self.fired = fired;
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let read = opcode::Read::new(Fd(self.mailbox.wake_fd()), buf.cast(), 8)
            .build()
            .user_data(pack(Op::Wake, 0, 0));
        // SAFETY: the kernel writes 8 bytes into `wake_buf`, a box the shard owns and drops
        // after its ring, and reads it nowhere else; it is re-armed only after this read
        // completes. The eventfd belongs to the mailbox the shard holds as long.
        unsafe { self.io.rings.first().push(&read) };
    }

    fn arm_rings_wake(&mut self) {
        let buf: *mut u64 = &mut *self.rings_wake_buf;
        let read = opcode::Read::new(Fd(self.rings_wake.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(pack(Op::RingWake, 0, 0));
        // SAFETY: the kernel writes 8 bytes into `rings_wake_buf`, a box the shard owns and
        // drops after its rings, and reads it nowhere else; it is re-armed only after this
        // read completes. The eventfd is owned by the shard as long.
        unsafe { self.io.rings.first().push(&read) };
    }

    /// Handles one batch of mail; more waits for the next turn.
    fn read_mail(&mut self) {
        if !self.mail_ready {
            return;
        }
        self.mail_ready = self.mailbox.take(&mut self.mail, self.mail_batch);
        for message in self.mail.drain(..) {
            self.handler.on_message(&mut self.io, message);
        }
    }

    /// Handles a shutdown request; returns whether the shard is done.
    fn check_stop(&mut self) -> bool {
        let Some(since) = self.stopping else {
            if self.mailbox.stop.load(Ordering::Acquire) {
                self.stopping = Some(self.io.now);
                self.acceptor.stop(&mut self.io);
                self.handler.on_shutdown(&mut self.io);
            }
            return false;
        };
        if self.io.live == 0 {
            return true;
        }
        let waited = self.io.now.saturating_duration_since(since);
        if waited >= self.grace {
            self.io.close_all();
        }
        waited >= self.grace + FORCED_CLOSE_WAIT
    }
}

/// A shard's rings, the receive buffers of each, and the eventfd the extra rings signal.
fn open_rings(config: &Config, layout: Layout) -> io::Result<(Rings, Vec<BufRing>, OwnedFd)> {
    let rings_wake = eventfd()?;
    let mut rings = Rings::new(
        layout.rings,
        config.ring_entries,
        layout.table,
        rings_wake.as_raw_fd(),
    )?;
    let buffers = (0..rings.len())
        .map(|ring| {
            BufRing::new(
                rings.get(ring),
                recv_buffers_of(ring, config.recv_buffers),
                config.recv_buffer_size,
                BUFFER_GROUP,
            )
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok((rings, buffers, rings_wake))
}

/// Receive buffers of a shard's ring: the configured count on the first ring, which carries
/// all the traffic of a shard holding no more than one table, and a quarter of it (at least
/// one) on each extra ring, so extra tables cost connections' worth of memory, not traffic's.
fn recv_buffers_of(ring: usize, configured: u16) -> u16 {
    if ring == 0 {
        configured
    } else {
        (configured / 4).max(1)
    }
}

/// A non-blocking eventfd.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) returns a new descriptor or -1, checked before it is owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Hands what an open connection received to its handler: as it came, or, on a TLS
/// connection, decrypted into `plain` (and nothing until the handshake is done).
fn deliver<H: Handler>(
    io: &mut Io,
    handler: &mut H,
    tls: Option<&TlsAcceptor>,
    plain: &mut Vec<u8>,
    conn: ConnId,
    data: &mut [u8],
) {
    if !io.is_tls(conn) || io.records_in_kernel(conn) {
        handler.on_data(io, conn, data);
        return;
    }
    let no_reply = bytes::Bytes::new();
    let not_tls_reply = tls.map_or(&no_reply, |tls| tls.not_tls_reply());
    if let Some(secured) = io.receive_tls(conn, data, plain, not_tls_reply) {
        if tls.is_some_and(TlsAcceptor::offloads) {
            io.start_offload(conn);
        }
        handler.on_secured(io, conn, secured);
    }
    if !plain.is_empty() && io.is_open(conn) {
        handler.on_data(io, conn, plain);
    }
    plain.clear();
    if plain.capacity() > PLAIN_KEEP {
        *plain = Vec::new();
    }
}
