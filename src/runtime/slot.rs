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
    pub queue: VecDeque<Bytes>,
    /// Bytes of `queue[0]` already written.
    pub head_offset: usize,
    pub queued: usize,
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
            queue: VecDeque::new(),
            head_offset: 0,
            queued: 0,
            sending: None,
            deadline: 0,
            stash: Vec::new(),
        }
    }
}

impl Slot {
    /// Drops `written` bytes from the front of the queue.
    pub fn consume(&mut self, mut written: usize) {
        self.queued -= written.min(self.queued);
        while written > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let left = front.len() - self.head_offset;
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
    pub fn fill(&self, buf: &mut SendBuf) -> usize {
        let mut total = 0;
        let mut count = 0;
        for (i, chunk) in self.queue.iter().take(MAX_IOV).enumerate() {
            let skip = if i == 0 { self.head_offset } else { 0 };
            let bytes = &chunk[skip..];
            buf.iov[i] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            total += bytes.len();
            count += 1;
        }
        buf.header.msg_iov = buf.iov.as_mut_ptr();
        buf.header.msg_iovlen = count;
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
            slot.queued += chunk.len();
            slot.queue.push_back(Bytes::from_static(chunk));
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
}
