//! Accepting connections straight into direct descriptors.
//!
//! Each listening socket keeps 16 single-shot accepts in flight, each with its own address
//! buffer (a direct descriptor cannot be passed to getpeername(2), and a multishot accept has
//! one buffer for every connection). A shard with several rings arms each accept on its first
//! ring whose descriptor table has free slots, so connections fill the first table before the
//! next and a lightly loaded shard runs on one ring. With every table full no accept is
//! armed: one would take a client off the backlog only to drop it. The rest park until a
//! connection closes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use io_uring::opcode;
use io_uring::types::{DestinationSlot, Fd};

use super::io_handle::Io;
use super::socket;
use super::timer;
use super::user_data::{Op, pack};

/// Accepts kept in flight per listening socket.
const ACCEPTS_PER_LISTENER: usize = 16;
/// How long to wait before accepting again after running out of memory or descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Memory an accept in flight writes the peer's address into.
struct AcceptBuf {
    listener: usize,
    address: libc::sockaddr_storage,
    length: libc::socklen_t,
}

pub(crate) struct Acceptor {
    listeners: Vec<OwnedFd>,
    /// A boxed slice, never resized: the buffer of an accept in flight stays put.
    bufs: Box<[AcceptBuf]>,
    /// Accepts waiting for a free descriptor slot.
    parked: Vec<u32>,
    /// Accepts in flight on each ring.
    in_flight: Vec<usize>,
    /// The size of each ring's direct-descriptor table.
    table: usize,
    /// Listeners from this index on accept TLS connections.
    first_tls: usize,
    stopped: bool,
}

impl Acceptor {
    /// Accepts on `listeners`, of which those from `first_tls` on are TLS listeners, into
    /// `rings` tables of `table` descriptors.
    pub fn new(listeners: Vec<OwnedFd>, rings: usize, table: usize, first_tls: usize) -> Self {
        let bufs = (0..listeners.len() * ACCEPTS_PER_LISTENER)
            .map(|i| AcceptBuf {
                listener: i / ACCEPTS_PER_LISTENER,
                // SAFETY: all-zero bytes are a valid sockaddr_storage.
                address: unsafe { std::mem::zeroed() },
                length: 0,
            })
            .collect();
        Self {
            listeners,
            bufs,
            parked: Vec::new(),
            in_flight: vec![0; rings],
            table,
            first_tls,
            stopped: false,
        }
    }

    /// Arms every accept.
    pub fn start(&mut self, io: &mut Io) {
        for index in 0..self.bufs.len() as u32 {
            self.arm(index, io);
        }
    }

    /// Arms accept `index` on the first ring with room, or parks it while every table is
    /// full.
    pub fn arm(&mut self, index: u32, io: &mut Io) {
        if self.stopped {
            return;
        }
        let Some(ring) = (0..self.in_flight.len())
            .find(|&ring| io.rings.live(ring) + self.in_flight[ring] < self.table)
        else {
            self.parked.push(index);
            return;
        };
        self.in_flight[ring] += 1;
        let buf = &mut self.bufs[index as usize];
        buf.length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let listener = self.listeners[buf.listener].as_raw_fd();
        let entry = opcode::Accept::new(
            Fd(listener),
            (&raw mut buf.address).cast(),
            &raw mut buf.length,
        )
        // Direct descriptors are never in the fd table, so there is nothing to close on exec.
        .file_index(Some(DestinationSlot::auto_target()))
        .build()
        .user_data(pack(Op::Accept, index, ring as u32));
        // The listening socket stays open as long as the acceptor, and `bufs[index]` is not
        // touched again before this accept's completion re-arms it.
        // SAFETY: the kernel writes the peer's address into `bufs[index]`, a never-resized
        // boxed slice the shard drops only after its rings, so after every completion.
        unsafe { io.rings.get(ring).push(&entry) };
    }

    /// Accept `index`, armed on ring `ring`, completed; on success, the shard's slot for
    /// the direct descriptor, the peer and the listening socket's index
    /// ([`Acceptor::is_tls`] says whether it speaks TLS). Re-arms or backs off on errors. A
    /// successful caller re-arms with [`Acceptor::arm`].
    pub fn on_complete(
        &mut self,
        index: u32,
        ring: usize,
        result: i32,
        io: &mut Io,
    ) -> Option<(u32, SocketAddr, u8)> {
        self.in_flight[ring] = self.in_flight[ring].saturating_sub(1);
        let Ok(local) = u32::try_from(result) else {
            match -result {
                libc::ECANCELED => {}
                // The table is full after all (slots freed late): wait for a close.
                libc::ENFILE => self.parked.push(index),
                // The peer gave up before we accepted: nothing wrong here.
                libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO | libc::EPERM => {
                    self.arm(index, io)
                }
                // Out of memory or descriptors, or anything unexpected: back off, never spin.
                errno => {
                    let err = io::Error::from_raw_os_error(errno);
                    tracing::warn!(
                        shard = io.shard(),
                        "accept failed: {err}; retrying in {ACCEPT_BACKOFF:?}"
                    );
                    let at = io.now + ACCEPT_BACKOFF;
                    io.timers.schedule(index, 0, timer::Kind::AcceptRetry, at);
                }
            }
            return None;
        };
        let slot = io.rings.slot_of(ring, local);
        let buf = &self.bufs[index as usize];
        let peer =
            socket::from_sockaddr(&buf.address).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let listener = u8::try_from(buf.listener).unwrap_or(u8::MAX);
        Some((slot, peer, listener))
    }

    /// Whether listening socket `listener` accepts TLS connections.
    pub fn is_tls(&self, listener: u8) -> bool {
        usize::from(listener) >= self.first_tls
    }

    /// Arms the parked accepts once descriptors were freed: as many as now fit.
    pub fn arm_parked(&mut self, io: &mut Io) {
        if std::mem::take(&mut io.slots_freed) {
            for parked in std::mem::take(&mut self.parked) {
                self.arm(parked, io);
            }
        }
    }

    /// Stops accepting: cancels the accepts in flight and arms no more.
    pub fn stop(&mut self, io: &mut Io) {
        self.stopped = true;
        for ring in 0..self.in_flight.len() {
            for index in 0..self.bufs.len() as u32 {
                let cancel = opcode::AsyncCancel::new(pack(Op::Accept, index, ring as u32))
                    .build()
                    .user_data(pack(Op::Cancel, 0, 0));
                // SAFETY: a cancel carries no pointers.
                unsafe { io.rings.get(ring).push(&cancel) };
            }
        }
    }
}
