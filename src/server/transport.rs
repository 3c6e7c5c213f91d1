//! The socket operations a connection needs from the I/O runtime, and nothing more: the
//! seam between the WebSocket state machine and io_uring. The runtime's `Io` implements it
//! for real; [`Recording`] implements it in memory, so a connection can be driven through
//! handshake, backpressure, deadlines and close without a socket.

use bytes::Bytes;

use crate::runtime::{ConnId, Dropped, Tag};

pub(crate) trait Transport {
    /// Queues bytes; they leave in order, batched with others in one write per loop turn.
    fn send(&mut self, conn: ConnId, bytes: Bytes);
    /// Queues a whole message that [`Transport::drop_oldest`] may drop unsent, with a tag
    /// the handler hears back once the kernel has taken all of it.
    fn send_tagged(&mut self, conn: ConnId, bytes: Bytes, tag: Tag);
    /// Drops the oldest droppable messages not yet being written until the queue costs at
    /// most `low_water`.
    fn drop_oldest(&mut self, conn: ConnId, low_water: usize) -> Dropped;
    /// The tag of the oldest message [`Transport::drop_stale`] could drop, if tagged.
    fn oldest_tag(&self, conn: ConnId) -> Option<Tag>;
    /// Drops the oldest tagged messages not yet being written while `stale` says their tag
    /// is, stopping at the first it keeps.
    fn drop_stale(&mut self, conn: ConnId, stale: &mut dyn FnMut(Tag) -> bool) -> Dropped;
    /// What the queue costs: bytes not yet written, plus its own overhead.
    fn queued_bytes(&self, conn: ConnId) -> usize;
    /// Bytes written to the socket so far, ever: progress shows as this growing.
    fn written_bytes(&self, conn: ConnId) -> u64;
    /// Closes once everything queued has been written (within the runtime's deadlines).
    fn close(&mut self, conn: ConnId);
    /// Closes like [`Transport::close`] when the peer has said its last word: no lingering
    /// for its FIN.
    fn close_answered(&mut self, conn: ConnId);
    /// Closes now, dropping whatever is queued, with a reset.
    fn abort(&mut self, conn: ConnId);
    /// Stops delivering received bytes until [`Transport::resume_recv`].
    fn pause_recv(&mut self, conn: ConnId);
    fn resume_recv(&mut self, conn: ConnId);
    /// `part`, bytes of what the connection is being handed now, as shared bytes without a
    /// copy; `None` when they cannot be lent, and the caller copies them.
    fn lend(&mut self, _part: &[u8]) -> Option<Bytes> {
        None
    }
}

/// An in-memory transport for one connection that records what the connection did. The
/// test plays the kernel: [`Recording::write_out`] takes queued bytes as a reading peer
/// would.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Default)]
pub struct Recording {
    /// Chunks queued and not yet written, each with whether it may be dropped and its tag.
    queue: std::collections::VecDeque<(Bytes, bool, Option<Tag>)>,
    /// Bytes written out so far, in order.
    pub written: Vec<u8>,
    pub written_total: u64,
    pub closing: bool,
    /// The close was [`Transport::close_answered`]: the peer's close frame had arrived.
    pub answered: bool,
    pub aborted: bool,
    pub paused: bool,
    pub dropped: usize,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Recording {
    /// Writes out up to `limit` queued bytes, as a peer reading that much would allow.
    pub fn write_out(&mut self, mut limit: usize) -> usize {
        let mut moved = 0;
        while limit > 0 {
            let Some((front, _, _)) = self.queue.front_mut() else {
                break;
            };
            let take = front.len().min(limit);
            self.written.extend_from_slice(&front.split_to(take));
            if front.is_empty() {
                self.queue.pop_front();
            }
            limit -= take;
            moved += take;
        }
        self.written_total += moved as u64;
        moved
    }

    /// Whether the connection is gone or on its way out.
    pub fn ended(&self) -> bool {
        self.closing || self.aborted
    }

    pub fn queued(&self) -> usize {
        self.queue.iter().map(|(bytes, _, _)| bytes.len()).sum()
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Transport for Recording {
    fn send(&mut self, _conn: ConnId, bytes: Bytes) {
        if !self.aborted && !bytes.is_empty() {
            self.queue.push_back((bytes, false, None));
        }
    }

    fn send_tagged(&mut self, _conn: ConnId, bytes: Bytes, tag: Tag) {
        if !self.aborted && !bytes.is_empty() {
            self.queue.push_back((bytes, true, Some(tag)));
        }
    }

    fn drop_oldest(&mut self, _conn: ConnId, low_water: usize) -> Dropped {
        let mut dropped = Dropped::default();
        let mut queued = self.queued();
        self.queue.retain(|(bytes, droppable, _)| {
            if queued <= low_water || !droppable {
                return true;
            }
            queued -= bytes.len();
            dropped.chunks += 1;
            dropped.bytes += bytes.len();
            false
        });
        self.dropped += dropped.chunks;
        dropped
    }

    fn oldest_tag(&self, _conn: ConnId) -> Option<Tag> {
        self.queue
            .iter()
            .find(|(_, droppable, tag)| *droppable && tag.is_some())
            .and_then(|(_, _, tag)| *tag)
    }

    fn drop_stale(&mut self, _conn: ConnId, stale: &mut dyn FnMut(Tag) -> bool) -> Dropped {
        let mut dropped = Dropped::default();
        let mut at = 0;
        while let Some((bytes, droppable, tag)) = self.queue.get(at) {
            match tag.filter(|_| *droppable) {
                None => at += 1,
                Some(tag) if stale(tag) => {
                    dropped.chunks += 1;
                    dropped.bytes += bytes.len();
                    self.queue.remove(at);
                }
                Some(_) => break,
            }
        }
        self.dropped += dropped.chunks;
        dropped
    }

    fn queued_bytes(&self, _conn: ConnId) -> usize {
        self.queued()
    }

    fn written_bytes(&self, _conn: ConnId) -> u64 {
        self.written_total
    }

    fn close(&mut self, _conn: ConnId) {
        self.closing = true;
    }

    fn close_answered(&mut self, _conn: ConnId) {
        self.closing = true;
        self.answered = true;
    }

    fn abort(&mut self, _conn: ConnId) {
        self.aborted = true;
        self.queue.clear();
    }

    fn pause_recv(&mut self, _conn: ConnId) {
        self.paused = true;
    }

    fn resume_recv(&mut self, _conn: ConnId) {
        self.paused = false;
    }
}
