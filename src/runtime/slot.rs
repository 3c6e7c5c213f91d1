//! One direct-descriptor slot: the runtime's state for the connection in it.

use std::collections::VecDeque;

use bytes::Bytes;

use super::CloseCause;

/// Chunks one sendmsg takes at most; more wait for the next.
pub(crate) const MAX_IOV: usize = 64;

/// The memory of a sendmsg in flight, which must stay put until its completion.
pub(crate) struct SendBuf {
    pub header: libc::msghdr,
    pub iov: [libc::iovec; MAX_IOV],
}

impl SendBuf {
    pub fn new() -> Box<Self> {
        // SAFETY: msghdr and iovec are plain C structs for which all-zero bytes are valid.
        Box::new(unsafe { std::mem::zeroed() })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Free,
    Open,
    /// Closing was asked for: writing out what is queued first.
    Draining,
    /// Our FIN is sent; waiting for the peer's, or the linger deadline.
    Lingering,
    /// Cancelling what is in flight, then closing the descriptor.
    Closing,
}

/// Bytes queued for a connection, and whether they may be dropped unsent.
pub(crate) struct Chunk {
    pub bytes: Bytes,
    /// A whole message the sender can afford to lose (pub/sub) when the reader is too slow.
    pub droppable: bool,
}

/// What [`Slot::drop_oldest`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub chunks: usize,
    pub bytes: usize,
}

pub(crate) struct Slot {
    pub generation: u32,
    pub phase: Phase,
    pub cause: CloseCause,
    pub recv_armed: bool,
    pub paused: bool,
    pub peer_closed: bool,
    pub close_submitted: bool,
    /// A shutdown(SHUT_WR) is in flight. The close must wait for it: io_uring may run
    /// unlinked requests out of order, and a shutdown that ran after the close would hit
    /// whichever connection the kernel gave the slot to next.
    pub shutdown_in_flight: bool,
    /// Listed for this turn's flush.
    pub dirty: bool,
    /// Chunks of `queue` the sendmsg in flight covers: they must stay until it completes.
    pub in_flight: u8,
    pub queue: VecDeque<Chunk>,
    /// Bytes of `queue[0]` already written.
    pub head_offset: usize,
    pub queued: usize,
    pub written: u64,
    pub sending: Option<Box<SendBuf>>,
    /// The handler's deadline (a timer tick), 0 when none.
    pub deadline: u64,
    /// Bytes received while reading was paused.
    pub stash: Vec<u8>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            generation: 0,
            phase: Phase::Free,
            cause: CloseCause::Local,
            recv_armed: false,
            paused: false,
            peer_closed: false,
            close_submitted: false,
            shutdown_in_flight: false,
            dirty: false,
            in_flight: 0,
            queue: VecDeque::new(),
            head_offset: 0,
            queued: 0,
            written: 0,
            sending: None,
            deadline: 0,
            stash: Vec::new(),
        }
    }
}

impl Slot {
    pub fn push(&mut self, bytes: Bytes, droppable: bool) {
        self.queued += bytes.len();
        self.queue.push_back(Chunk { bytes, droppable });
    }

    /// Drops droppable chunks, oldest first, until at most `limit` bytes stay queued. Chunks
    /// the kernel may be reading, or partly written, are never touched.
    pub fn drop_oldest(&mut self, limit: usize) -> Dropped {
        let mut dropped = Dropped::default();
        let in_flight = if self.sending.is_some() {
            usize::from(self.in_flight)
        } else {
            0
        };
        let protected = in_flight.max(usize::from(self.head_offset > 0));
        let mut index = 0;
        self.queue.retain(|chunk| {
            index += 1;
            let over = self.queued - dropped.bytes > limit;
            if !over || index <= protected || !chunk.droppable {
                return true;
            }
            dropped.chunks += 1;
            dropped.bytes += chunk.bytes.len();
            false
        });
        self.queued -= dropped.bytes;
        dropped
    }

    /// Drops `written` bytes from the front of the queue.
    pub fn consume(&mut self, mut written: usize) {
        self.written += written as u64;
        self.queued -= written.min(self.queued);
        while written > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let left = front.bytes.len() - self.head_offset;
            if written >= left {
                written -= left;
                self.head_offset = 0;
                self.queue.pop_front();
            } else {
                self.head_offset += written;
                written = 0;
            }
        }
    }

    /// Fills `buf` with the queue's front chunks; returns the bytes it covers.
    pub fn fill(&mut self, buf: &mut SendBuf) -> usize {
        let mut total = 0;
        let mut count = 0;
        for (i, chunk) in self.queue.iter().take(MAX_IOV).enumerate() {
            let skip = if i == 0 { self.head_offset } else { 0 };
            let bytes = &chunk.bytes[skip..];
            buf.iov[i] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            total += bytes.len();
            count += 1;
        }
        buf.header.msg_iov = buf.iov.as_mut_ptr();
        buf.header.msg_iovlen = count;
        self.in_flight = count as u8;
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_stays_small() {
        let size = std::mem::size_of::<Slot>();
        println!("runtime slot {size} B");
        assert!(size <= 160, "{size}");
    }

    #[test]
    fn short_writes_resume_where_they_stopped() {
        let mut slot = Slot::default();
        for chunk in [&b"hello "[..], b"big ", b"world"] {
            slot.push(Bytes::from_static(chunk), false);
        }
        let mut buf = SendBuf::new();
        assert_eq!(slot.fill(&mut buf), 15);
        slot.consume(8); // "hello bi"
        assert_eq!(slot.queued, 7);
        assert_eq!(slot.fill(&mut buf), 7);
        // SAFETY: the iovec points into the queue's first chunk, alive in `slot`.
        let first = unsafe {
            std::slice::from_raw_parts(buf.iov[0].iov_base as *const u8, buf.iov[0].iov_len)
        };
        assert_eq!(first, b"g ");
        slot.consume(7);
        assert!(slot.queue.is_empty());
        assert_eq!(slot.queued, 0);
    }

    #[test]
    fn dropping_spares_what_is_in_flight_or_not_droppable() {
        let mut slot = Slot::default();
        slot.push(Bytes::from_static(b"aaaa"), true);
        slot.push(Bytes::from_static(b"bbbb"), false);
        slot.push(Bytes::from_static(b"cccc"), true);
        slot.push(Bytes::from_static(b"dddd"), true);
        let mut buf = SendBuf::new();
        slot.fill(&mut buf);
        // The sendmsg covering all four is in flight: nothing may go.
        slot.sending = Some(buf);
        assert_eq!(slot.drop_oldest(0), Dropped::default());
        let buf = slot.sending.take();
        slot.consume(2); // "aa" written, "aa" left
        assert_eq!(slot.queued, 14);
        // Partly written "aa" and the non-droppable "bbbb" stay; "cccc" goes first.
        assert_eq!(
            slot.drop_oldest(10),
            Dropped {
                chunks: 1,
                bytes: 4
            }
        );
        assert_eq!(slot.queued, 10);
        assert_eq!(
            slot.drop_oldest(0),
            Dropped {
                chunks: 1,
                bytes: 4
            }
        );
        let left: Vec<&[u8]> = slot.queue.iter().map(|c| &c.bytes[..]).collect();
        assert_eq!(left, [&b"aaaa"[..], b"bbbb"]);
        assert_eq!(slot.queued, 6);
        drop(buf);
    }
}
