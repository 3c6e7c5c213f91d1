//! The socket operations a shard needs from the I/O runtime, and nothing more.
//!
//! Connections are named by [`ConnId`]; the runtime guarantees an id is never reused while
//! anything may still refer to the connection it named.

use std::time::Duration;

use bytes::Bytes;

use crate::runtime::Dropped;

/// A connection within its shard.
pub use crate::runtime::ConnId;

pub(crate) trait Transport {
    /// Queues bytes; they leave in order, batched with others in one write per loop turn.
    fn send(&mut self, conn: ConnId, bytes: Bytes);
    /// Queues a whole message that [`Transport::drop_oldest`] may drop unsent.
    fn send_droppable(&mut self, conn: ConnId, bytes: Bytes);
    /// Drops the oldest droppable messages not yet being written until at most `limit`
    /// bytes are queued.
    fn drop_oldest(&mut self, conn: ConnId, limit: usize) -> Dropped;
    /// Bytes queued and not yet written to the socket.
    fn queued_bytes(&self, conn: ConnId) -> usize;
    /// Closes once everything queued has been written.
    fn close(&mut self, conn: ConnId);
    /// Closes now, dropping whatever is queued.
    fn abort(&mut self, conn: ConnId);
    /// Stops delivering received bytes until [`Transport::resume_recv`].
    fn pause_recv(&mut self, conn: ConnId);
    fn resume_recv(&mut self, conn: ConnId);
    /// Calls the shard back for this connection after `after` (replacing any earlier deadline).
    fn set_deadline(&mut self, conn: ConnId, after: Duration);
}
