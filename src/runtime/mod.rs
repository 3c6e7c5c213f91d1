//! The io_uring driver: shards of connections that move bytes. It knows nothing of WebSocket.
//!
//! Each shard is a thread pinned to a core with its own rings (as many as its share of
//! connections needs, each with a direct-descriptor table no larger than the open-file limit
//! allows, and a provided-buffer ring), and listening sockets (SO_REUSEPORT). A [`Handler`] per shard
//! hears about connections and their bytes and acts through [`Io`]. Shards share nothing on
//! the hot path; other threads reach a shard through a [`Remote`], which queues a message
//! and wakes the shard's ring.
//!
//! What a peer can make a shard hold is bounded: a closing connection has a deadline in
//! every phase and is aborted past it ([`Io::close`]); the kernel drops accepted sockets
//! whose peer vanished or keeps a zero window ([`Config::tcp_user_timeout`],
//! [`Config::keepalive`]); [`Io::queued_bytes`] counts what a queue really costs, so a bound
//! on it bounds memory; mailboxes refuse past [`Config::mailbox_bytes`] and are read in
//! batches of [`Config::mailbox_batch`].

mod acceptor;
mod affinity;
mod buf_ring;
mod config;
mod event_loop;
mod health;
mod io_handle;
mod launch;
mod layout;
mod lending;
mod listener;
mod mailbox;
mod ring;
mod rings;
mod send_queue;
mod slot;
pub mod socket;
mod timer;
pub mod tls;
mod user_data;

use std::net::SocketAddr;

pub use buf_ring::receives_ran_dry;
pub use config::{Config, Keepalive, defaults};
pub use health::Health;
pub use io_handle::Io;
pub use launch::{Runtime, ShardContext, start};
pub use layout::Layout;
pub use mailbox::Remote;
pub use send_queue::{CHUNK_OVERHEAD, Dropped, Tag};
pub use tls::{Secured, TlsAcceptor, TlsFailure};

/// A connection within its shard: its direct-descriptor slot and that slot's generation,
/// so an id never names a later connection that reused the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

impl ConnId {
    /// An id for a slot and generation, for handlers driven without a ring (tests).
    pub const fn new(slot: u32, generation: u32) -> Self {
        Self { slot, generation }
    }

    /// The direct-descriptor slot: dense, so it can index a table.
    pub fn slot(self) -> u32 {
        self.slot
    }
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The handler closed it (after its queue was written) or aborted it.
    Local,
    /// The peer closed its side.
    PeerClosed,
    /// A socket error, such as a reset (the errno).
    Error(i32),
    /// The server shut down before the connection finished closing.
    Shutdown,
    /// A closing phase passed its deadline (the queue was not written out, or the peer's
    /// FIN did not come), so the connection was aborted.
    TimedOut,
    /// A TLS connection failed, or was closed before its handshake finished.
    Tls(TlsFailure),
}

/// What a shard hears about. All calls run on the shard's thread.
pub trait Handler: 'static {
    /// What other threads can send to this shard through a [`Remote`].
    type Message: Send + 'static;

    /// A connection was accepted.
    fn on_open(&mut self, io: &mut Io, conn: ConnId, peer: SocketAddr);
    /// The connection sent bytes (decrypted, on a TLS connection). The buffer returns to
    /// the kernel after this call.
    fn on_data(&mut self, io: &mut Io, conn: ConnId, data: &mut [u8]);
    /// A TLS connection finished its handshake; its plaintext follows in `on_data`.
    fn on_secured(&mut self, _io: &mut Io, _conn: ConnId, _secured: Secured) {}
    /// Everything queued for the open connection has been written.
    fn on_drained(&mut self, _io: &mut Io, _conn: ConnId) {}
    /// The kernel has taken the whole of these tagged chunks ([`Io::send_tagged`]), from
    /// any connections; heard once a turn.
    fn on_sent(&mut self, _io: &mut Io, _tags: &[Tag]) {}
    /// The connection's deadline passed.
    fn on_deadline(&mut self, io: &mut Io, conn: ConnId);
    /// The connection is gone; its id will not be used again.
    fn on_closed(&mut self, io: &mut Io, conn: ConnId, cause: CloseCause);
    /// A message from a [`Remote`].
    fn on_message(&mut self, _io: &mut Io, _message: Self::Message) {}
    /// Once a turn, after the turn's events and before its sends are submitted: work the
    /// handler put off to keep turns short. Returns whether some is still left, and the
    /// shard then looks for completions without waiting.
    fn on_turn(&mut self, _io: &mut Io) -> bool {
        false
    }
    /// Shutdown began: accepting stopped. Close connections now; the shard ends when none
    /// is left or the grace period runs out.
    fn on_shutdown(&mut self, _io: &mut Io) {}
}
