//! A connection's outgoing bytes: what they cost, which may be dropped unsent, and which the
//! kernel is reading.
//!
//! The healthy path copies nothing: bytes queued while no sendmsg is in flight are written
//! from the caller's `Bytes`. Bytes queued behind a sendmsg in flight have to wait a turn or
//! more, so the non-droppable ones are copied into buffers the queue owns, coalesced: a flood
//! of tiny frames costs its bytes, not an entry each, and never keeps alive the large shared
//! block a small frame was cut from.
//!
//! A TLS connection's queue is *sealing*: what is queued stays plaintext (costed, droppable)
//! until the flush encrypts a batch of it into records, which wait at the front as *sealed*
//! chunks. Only sealed chunks are ever written, so plaintext is never in the kernel's hands
//! and is never copied on the way in.

use std::collections::VecDeque;

use bytes::Bytes;

/// What one queued chunk costs beyond its payload: the queue entry (40 bytes) and its share
/// of the bookkeeping behind a `Bytes` (reference count, vtable, allocation header).
///
/// [`Io::queued_bytes`](super::Io::queued_bytes) counts this for every chunk, so a bound on
/// queued bytes also bounds the number of entries behind it.
pub const CHUNK_OVERHEAD: usize = 64;

/// Chunks one sendmsg takes at most; more wait for the next.
pub(crate) const MAX_IOV: usize = 64;

/// The tail takes copied bytes until it holds this many; then it joins the queue and a new
/// one starts, so growing never copies much at once.
const OWNED_CHUNK_LIMIT: usize = 64 << 10;

/// The memory of a sendmsg in flight, which must stay put until its completion.
pub(crate) struct SendBuf {
    header: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

impl SendBuf {
    pub fn new() -> Box<Self> {
        // SAFETY: msghdr and iovec are plain C structs for which all-zero bytes are valid
        // (null pointers, zero lengths).
        Box::new(unsafe { std::mem::zeroed() })
    }
}

/// Bytes queued for a connection, written from the caller's `Bytes` without a copy.
struct Chunk {
    bytes: Bytes,
    /// A whole message the sender can afford to lose (pub/sub) when the reader is too slow;
    /// shared by many connections, so never copied.
    droppable: bool,
    /// The sender's tag, handed back once the kernel has taken the whole chunk.
    tag: Option<Tag>,
}

/// An opaque number a sender attaches to a chunk, to hear when the kernel has taken all of
/// it (the server stamps published messages with their publish time).
pub type Tag = std::num::NonZeroU32;

/// What [`Io::drop_oldest`](super::Io::drop_oldest) removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Whole messages dropped.
    pub chunks: usize,
    /// What they cost, as [`Io::queued_bytes`](super::Io::queued_bytes) counts it.
    pub bytes: usize,
}

#[derive(Default)]
pub(crate) struct SendQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes copied behind a sendmsg in flight, after every chunk, never empty: they grow
    /// here, where the kernel never reads, and join `chunks` (sealed) when they must be sent
    /// or something is queued behind them. Boxed: rare, and every idle slot has the field.
    #[allow(clippy::box_collection, reason = "8 bytes in every slot instead of 24")]
    tail: Option<Box<Vec<u8>>>,
    /// Bytes of the front chunk already written.
    head_offset: usize,
    /// What the queue costs, kept as bytes come and go.
    cost: usize,
    /// Front chunks the sendmsg in flight covers: they must stay, unchanged, until it
    /// completes.
    in_flight: u8,
    /// A TLS connection's queue: only sealed chunks are written (see the module's doc).
    sealing: bool,
    /// Front chunks that are sealed records, ready to write (always 0 unless sealing).
    sealed: u32,
    sending: Option<Box<SendBuf>>,
    /// Bytes the kernel has accepted, in total.
    written: u64,
}

impl SendQueue {
    /// A queue for a TLS connection, whose plaintext is sealed before it is written.
    pub fn sealing() -> Self {
        Self {
            sealing: true,
            ..Self::default()
        }
    }

    /// Queues `bytes` behind everything else.
    #[cfg(test)]
    pub fn push(&mut self, bytes: Bytes, droppable: bool) {
        self.push_tagged(bytes, droppable, None);
    }

    /// Queues `bytes`; `tag`, if any, comes back from [`SendQueue::complete`] once they are
    /// all written (a tagged chunk is never copied, so droppable ones only).
    pub fn push_tagged(&mut self, bytes: Bytes, droppable: bool, tag: Option<Tag>) {
        if bytes.is_empty() {
            return;
        }
        if droppable || self.sending.is_none() || self.sealing {
            if self.tail.is_some() {
                self.seal_tail();
            }
            self.cost += CHUNK_OVERHEAD + bytes.len();
            self.chunks.push_back(Chunk {
                bytes,
                droppable,
                tag: tag.filter(|_| droppable),
            });
            return;
        }
        self.copy_to_tail(&bytes);
    }

    /// Behind a sendmsg in flight: copies `bytes` to the tail, which starts anew once it
    /// holds OWNED_CHUNK_LIMIT.
    fn copy_to_tail(&mut self, bytes: &[u8]) {
        if let Some(tail) = &self.tail
            && tail.len() + bytes.len() > OWNED_CHUNK_LIMIT
        {
            self.seal_tail();
        }
        let tail = match &mut self.tail {
            Some(tail) => tail,
            None => {
                self.cost += CHUNK_OVERHEAD;
                self.tail.insert(Box::default())
            }
        };
        let before = tail.capacity();
        tail.extend_from_slice(bytes);
        self.cost += tail.capacity() - before;
    }

    /// Moves the tail into `chunks`, trimmed to its length (then it costs what a chunk
    /// does).
    fn seal_tail(&mut self) {
        let Some(tail) = self.tail.take() else {
            return;
        };
        let mut tail = *tail;
        self.cost -= tail.capacity();
        tail.shrink_to_fit();
        self.cost += tail.len();
        self.chunks.push_back(Chunk {
            bytes: Bytes::from(tail),
            droppable: false,
            tag: None,
        });
    }

    /// What the queue costs: payload not yet written, [`CHUNK_OVERHEAD`] per chunk, and the
    /// whole capacity of the buffers it owns.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Bytes the kernel has accepted since the connection opened.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_none()
    }

    pub fn is_sending(&self) -> bool {
        self.sending.is_some()
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.is_empty() && self.sending.is_none()
    }

    /// Whether sealed records wait at the front.
    pub fn has_sealed(&self) -> bool {
        self.sealed > 0
    }

    /// Whether plaintext waits to be sealed.
    pub fn has_plaintext(&self) -> bool {
        self.chunks.len() > self.sealed as usize || self.tail.is_some()
    }

    /// Queues sealed records behind the sealed ones and in front of any plaintext: what the
    /// TLS handshake answers, a close_notify, an alert.
    pub fn push_sealed(&mut self, bytes: Bytes) {
        self.push_sealed_tagged(bytes, None);
    }

    /// [`SendQueue::push_sealed`], with the tag of the plaintext the records carry.
    fn push_sealed_tagged(&mut self, bytes: Bytes, tag: Option<Tag>) {
        debug_assert!(self.sealing);
        if bytes.is_empty() {
            return;
        }
        self.cost += CHUNK_OVERHEAD + bytes.len();
        let at = self.sealed as usize;
        self.chunks.insert(
            at,
            Chunk {
                bytes,
                droppable: false,
                tag,
            },
        );
        self.sealed += 1;
    }

    /// Seals up to `max` bytes of the plaintext at the front: `seal` encrypts them into
    /// records, which take their place as a sealed chunk. The plaintext is handed over in one
    /// slice, borrowed from the front chunk when that holds enough, else gathered in
    /// `scratch`. Returns how many plaintext bytes were sealed.
    pub fn seal_front<E>(
        &mut self,
        max: usize,
        scratch: &mut Vec<u8>,
        seal: impl FnOnce(&[u8]) -> Result<Bytes, E>,
    ) -> Result<usize, E> {
        debug_assert!(self.sealing);
        self.seal_tail();
        let first = self.sealed as usize;
        let Some(front) = self.chunks.get(first) else {
            return Ok(0);
        };
        let alone = front.bytes.len() >= max || self.chunks.len() == first + 1;
        let (records, taken) = if alone {
            let taken = front.bytes.len().min(max);
            (seal(&front.bytes[..taken])?, taken)
        } else {
            scratch.clear();
            for chunk in self.chunks.range(first..) {
                let room = max - scratch.len();
                if room == 0 {
                    break;
                }
                scratch.extend_from_slice(&chunk.bytes[..chunk.bytes.len().min(room)]);
            }
            (seal(scratch)?, scratch.len())
        };
        let tag = self.consume_plaintext(taken);
        self.push_sealed_tagged(records, tag);
        Ok(taken)
    }

    /// Drops `taken` plaintext bytes from the front of the plaintext (they were sealed).
    /// Returns the oldest tag among the chunks sealed whole: the records carry it, so a
    /// delivery's latency is measured to the kernel taking its records (when one seal takes
    /// several tagged messages, the oldest speaks for them).
    fn consume_plaintext(&mut self, mut taken: usize) -> Option<Tag> {
        let at = self.sealed as usize;
        let mut oldest = None;
        while taken > 0 {
            let Some(chunk) = self.chunks.get_mut(at) else {
                break;
            };
            if taken < chunk.bytes.len() {
                let _ = chunk.bytes.split_to(taken);
                self.cost -= taken;
                return oldest;
            }
            taken -= chunk.bytes.len();
            self.cost -= chunk.bytes.len() + CHUNK_OVERHEAD;
            if let Some(chunk) = self.chunks.remove(at) {
                oldest = oldest.or(chunk.tag);
            }
        }
        oldest
    }

    /// Drops every plaintext byte (a TLS connection that failed, or closed before its
    /// handshake finished, can seal nothing more), keeping the sealed records.
    pub fn discard_plaintext(&mut self) {
        self.tail = None;
        self.chunks.truncate(self.sealed as usize);
        self.recount_cost();
    }

    /// Points `buf` at the front chunks and keeps it as the sendmsg in flight; returns the
    /// header to hand the kernel.
    ///
    /// The header, its iovecs and the bytes they point to stay valid and unchanged until
    /// [`SendQueue::complete`]: `buf` is boxed and held here, covered chunks are neither
    /// dropped nor consumed before, `Bytes` never change, and their heap memory does not
    /// move when the deque does.
    pub fn start_send(&mut self, mut buf: Box<SendBuf>) -> *const libc::msghdr {
        debug_assert!(self.sending.is_none(), "one sendmsg at a time");
        self.seal_tail();
        let mut count = 0;
        let ready = if self.sealing {
            (self.sealed as usize).min(MAX_IOV)
        } else {
            MAX_IOV
        };
        for (i, chunk) in self.chunks.iter().take(ready).enumerate() {
            let skip = if i == 0 { self.head_offset } else { 0 };
            let bytes = &chunk.bytes[skip..];
            buf.iov[i] = libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            };
            count += 1;
        }
        buf.header.msg_iov = buf.iov.as_mut_ptr();
        buf.header.msg_iovlen = count;
        self.in_flight = count as u8;
        let header: *const libc::msghdr = &buf.header;
        self.sending = Some(buf);
        header
    }

    /// The sendmsg in flight completed with `result`: drops what it wrote (adding the tags
    /// of the chunks it finished to `tags`), and gives its buffer back for reuse.
    pub fn complete(&mut self, result: i32, tags: &mut Vec<Tag>) -> Option<Box<SendBuf>> {
        self.in_flight = 0;
        if let Ok(written) = usize::try_from(result) {
            self.written += written as u64;
            self.consume(written, tags);
        }
        self.sending.take()
    }

    /// Drops `written` bytes from the front.
    fn consume(&mut self, mut written: usize, tags: &mut Vec<Tag>) {
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes.len() - self.head_offset;
            if written < left {
                self.cost -= written;
                self.head_offset += written;
                return;
            }
            written -= left;
            self.cost -= left + CHUNK_OVERHEAD;
            self.head_offset = 0;
            if let Some(tag) = self.chunks.pop_front().and_then(|chunk| chunk.tag) {
                tags.push(tag);
            }
            self.sealed = self.sealed.saturating_sub(1);
        }
    }

    /// Front chunks that may not be dropped: those the sendmsg in flight covers, and a chunk
    /// partly written (dropping its rest would cut a message in two).
    fn protected(&self) -> usize {
        let in_flight = if self.sending.is_some() {
            usize::from(self.in_flight)
        } else {
            0
        };
        in_flight
            .max(usize::from(self.head_offset > 0))
            .max(self.sealed as usize)
    }

    /// Drops droppable chunks, oldest first, until the queue costs at most `low_water` (or
    /// nothing droppable is left). Walks from the front and stops there: the work is the
    /// chunks it removes plus those it keeps in front of them, never the whole queue.
    pub fn drop_oldest(&mut self, low_water: usize) -> Dropped {
        let mut dropped = Dropped::default();
        let mut at = self.protected();
        while self.cost > low_water && at < self.chunks.len() {
            if !self.chunks[at].droppable {
                at += 1;
                continue;
            }
            if let Some(chunk) = self.chunks.remove(at) {
                let cost = chunk.bytes.len() + CHUNK_OVERHEAD;
                self.cost -= cost;
                dropped.chunks += 1;
                dropped.bytes += cost;
            }
        }
        dropped
    }

    /// Drops everything no sendmsg is reading: the connection is closing and will send
    /// nothing more.
    pub fn discard_unsent(&mut self) {
        self.tail = None;
        if self.sending.is_none() {
            self.chunks.clear();
            self.head_offset = 0;
            self.cost = 0;
            self.sealed = 0;
            return;
        }
        self.chunks.truncate(usize::from(self.in_flight));
        self.sealed = self.sealed.min(u32::from(self.in_flight));
        // What is left is in flight, partly written perhaps.
        self.recount_cost();
    }

    /// Counts the cost afresh from the chunks (no tail).
    fn recount_cost(&mut self) {
        self.cost = self
            .chunks
            .iter()
            .map(|c| c.bytes.len() + CHUNK_OVERHEAD)
            .sum::<usize>()
            - self.head_offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(chunks: &[(&'static [u8], bool)]) -> SendQueue {
        let mut queue = SendQueue::default();
        for &(bytes, droppable) in chunks {
            queue.push(Bytes::from_static(bytes), droppable);
        }
        queue
    }

    /// The bytes of the iovec at `i` of the sendmsg in flight.
    fn iov(queue: &SendQueue, i: usize) -> &[u8] {
        let buf = queue.sending.as_ref().expect("a send in flight");
        // SAFETY: the iovec points into a chunk the queue holds while the send is in flight.
        unsafe { std::slice::from_raw_parts(buf.iov[i].iov_base as *const u8, buf.iov[i].iov_len) }
    }

    /// Every chunk's bytes, then the tail's.
    fn contents(queue: &SendQueue) -> Vec<&[u8]> {
        let chunks = queue.chunks.iter().map(|c| &c.bytes[..]);
        chunks
            .chain(queue.tail.as_deref().map(|t| &t[..]))
            .collect()
    }

    #[test]
    fn cost_counts_payload_and_an_overhead_per_chunk() {
        let mut queue = queue_of(&[(b"hello ", false), (b"world", true)]);
        assert_eq!(queue.cost(), 11 + 2 * CHUNK_OVERHEAD);
        queue.start_send(SendBuf::new());
        queue.complete(8, &mut Vec::new()); // "hello wo"
        assert_eq!(queue.cost(), 3 + CHUNK_OVERHEAD);
        queue.start_send(SendBuf::new());
        queue.complete(3, &mut Vec::new());
        assert_eq!(queue.cost(), 0);
        assert!(queue.is_idle());
        assert_eq!(queue.written(), 11);
    }

    #[test]
    fn short_writes_resume_where_they_stopped() {
        let mut queue = queue_of(&[(b"hello ", false), (b"big ", false), (b"world", false)]);
        queue.start_send(SendBuf::new());
        queue.complete(8, &mut Vec::new()); // "hello bi"
        queue.start_send(SendBuf::new());
        assert_eq!(iov(&queue, 0), b"g ");
        assert_eq!(iov(&queue, 1), b"world");
        queue.complete(7, &mut Vec::new());
        assert!(queue.is_idle());
    }

    #[test]
    fn nothing_is_copied_while_no_send_is_in_flight() {
        let shared = Bytes::from(vec![7u8; 1000]);
        let mut queue = SendQueue::default();
        queue.push(shared.slice(0..10), false);
        queue.start_send(SendBuf::new());
        assert_eq!(iov(&queue, 0).as_ptr(), shared.as_ptr(), "written in place");
    }

    #[test]
    fn tiny_pushes_behind_a_send_in_flight_coalesce_into_owned_bytes() {
        // Two bytes cut from a large block: copied, so the block is not kept alive.
        let block = Bytes::from(vec![0u8; 256 << 10]);
        let mut queue = queue_of(&[(b"first", false)]);
        queue.start_send(SendBuf::new());
        for _ in 0..10_000 {
            queue.push(block.slice(0..2), false);
        }
        drop(block);
        assert_eq!(queue.chunks.len(), 1, "copies wait in the tail");
        let tail = queue.tail.as_ref().expect("a tail");
        assert_eq!(tail.len(), 20_000);
        let expected = 5 + 2 * CHUNK_OVERHEAD + tail.capacity();
        assert_eq!(queue.cost(), expected);
        assert!(queue.cost() < 2 * 20_000 + 3 * CHUNK_OVERHEAD);
        // Sent: one entry for ten thousand frames, trimmed to its length.
        queue.complete(5, &mut Vec::new());
        queue.start_send(SendBuf::new());
        assert_eq!(queue.chunks.len(), 1);
        assert_eq!(iov(&queue, 0).len(), 20_000);
        assert_eq!(queue.cost(), 20_000 + CHUNK_OVERHEAD);
    }

    #[test]
    fn copied_bytes_the_kernel_reads_are_never_appended_to() {
        let mut queue = queue_of(&[(b"a", false)]);
        queue.start_send(SendBuf::new());
        queue.push(Bytes::from_static(b"bb"), false);
        queue.complete(0, &mut Vec::new());
        // The copied "bb" is now in flight, with its address in the kernel's hands.
        queue.start_send(SendBuf::new());
        let address = iov(&queue, 1).as_ptr();
        queue.push(Bytes::from_static(b"cc"), false);
        assert_eq!(iov(&queue, 1), b"bb");
        assert_eq!(iov(&queue, 1).as_ptr(), address);
        assert_eq!(contents(&queue), [&b"a"[..], b"bb", b"cc"]);
    }

    #[test]
    fn order_holds_across_copies_and_shared_bytes() {
        let mut queue = queue_of(&[(b"1", false)]);
        queue.start_send(SendBuf::new());
        queue.push(Bytes::from_static(b"2"), false); // copied
        queue.push(Bytes::from_static(b"3"), true); // shared, behind the copy
        queue.push(Bytes::from_static(b"4"), false); // copied again
        queue.complete(1, &mut Vec::new());
        queue.push(Bytes::from_static(b"5"), false); // nothing in flight: shared
        assert_eq!(contents(&queue), [&b"2"[..], b"3", b"4", b"5"]);
        let mut all = Vec::new();
        queue.start_send(SendBuf::new());
        for i in 0..4 {
            all.extend_from_slice(iov(&queue, i));
        }
        assert_eq!(all, b"2345");
        queue.complete(4, &mut Vec::new());
        assert!(queue.is_idle());
        assert_eq!(queue.cost(), 0);
    }

    #[test]
    fn copies_stop_growing_at_their_limit() {
        let mut queue = queue_of(&[(b"a", false)]);
        queue.start_send(SendBuf::new());
        let piece = Bytes::from(vec![1u8; 1000]);
        for _ in 0..200 {
            queue.push(piece.clone(), false);
        }
        let per_buffer = OWNED_CHUNK_LIMIT / 1000;
        let buffers = contents(&queue).len() - 1;
        assert_eq!(buffers, 200usize.div_ceil(per_buffer));
        let payload: usize = contents(&queue).iter().map(|c| c.len()).sum();
        assert_eq!(payload, 200_001);
    }

    #[test]
    fn droppable_bytes_are_never_copied() {
        let message = Bytes::from_static(b"published");
        let mut queue = queue_of(&[(b"a", false)]);
        queue.start_send(SendBuf::new());
        queue.push(message.clone(), true);
        let chunk = &queue.chunks[1];
        assert!(chunk.droppable && chunk.bytes.as_ptr() == message.as_ptr());
    }

    #[test]
    fn dropping_spares_what_is_in_flight_or_not_droppable() {
        let mut queue = queue_of(&[
            (b"aaaa", true),
            (b"bbbb", false),
            (b"cccc", true),
            (b"dddd", true),
        ]);
        queue.start_send(SendBuf::new());
        // The sendmsg covering all four is in flight: nothing may go.
        assert_eq!(queue.drop_oldest(0), Dropped::default());
        queue.complete(2, &mut Vec::new()); // "aa" written, "aa" left
        let each = 4 + CHUNK_OVERHEAD;
        assert_eq!(queue.cost(), 2 + CHUNK_OVERHEAD + 3 * each);
        // Partly written "aa" and the non-droppable "bbbb" stay; "cccc" goes first.
        let low_water = queue.cost() - 1;
        assert_eq!(
            queue.drop_oldest(low_water),
            Dropped {
                chunks: 1,
                bytes: each
            }
        );
        assert_eq!(contents(&queue), [&b"aaaa"[..], b"bbbb", b"dddd"]);
        assert_eq!(
            queue.drop_oldest(0),
            Dropped {
                chunks: 1,
                bytes: each
            }
        );
        assert_eq!(contents(&queue), [&b"aaaa"[..], b"bbbb"]);
        assert_eq!(queue.cost(), 2 + CHUNK_OVERHEAD + each);
    }

    #[test]
    fn dropping_stops_at_the_low_water_mark_without_walking_the_queue() {
        let mut queue = SendQueue::default();
        for _ in 0..100_000 {
            queue.push(Bytes::from_static(b"0123456789"), true);
        }
        let each = 10 + CHUNK_OVERHEAD;
        // Over the mark by one message: exactly one goes, from the front.
        let dropped = queue.drop_oldest(queue.cost() - 1);
        assert_eq!(dropped.chunks, 1);
        assert_eq!(queue.chunks.len(), 99_999);
        // A slow subscriber's steady state: push one, drop one, each in constant work.
        let low_water = queue.cost();
        for _ in 0..100_000 {
            queue.push(Bytes::from_static(b"0123456789"), true);
            assert_eq!(queue.drop_oldest(low_water).chunks, 1);
        }
        assert_eq!(queue.cost(), 99_999 * each);
    }

    #[test]
    fn discarding_keeps_only_what_the_kernel_reads() {
        let mut queue = queue_of(&[(b"aaaa", false), (b"bbbb", true)]);
        queue.start_send(SendBuf::new());
        queue.push(Bytes::from_static(b"cc"), false);
        queue.discard_unsent();
        assert_eq!(contents(&queue), [&b"aaaa"[..], b"bbbb"]);
        assert_eq!(queue.cost(), 8 + 2 * CHUNK_OVERHEAD);
        queue.complete(2, &mut Vec::new());
        queue.start_send(SendBuf::new());
        queue.discard_unsent();
        assert_eq!(
            queue.cost(),
            6 + 2 * CHUNK_OVERHEAD,
            "partly written, all in flight"
        );
        queue.complete(-libc::ECANCELED, &mut Vec::new());
        queue.discard_unsent();
        assert!(queue.is_idle());
        assert_eq!(queue.cost(), 0);
    }

    #[test]
    fn a_tag_comes_back_once_its_whole_chunk_is_written_and_never_if_dropped() {
        let tag = |n| Tag::new(n).expect("non-zero");
        let mut queue = SendQueue::default();
        queue.push_tagged(Bytes::from_static(b"first"), true, Some(tag(1)));
        queue.push_tagged(Bytes::from_static(b"second"), true, Some(tag(2)));
        queue.push_tagged(Bytes::from_static(b"third"), true, Some(tag(3)));
        let mut tags = Vec::new();
        queue.start_send(SendBuf::new());
        queue.complete(3, &mut tags);
        assert!(tags.is_empty(), "\"first\" is only partly written");
        queue.start_send(SendBuf::new());
        queue.complete(2 + 6, &mut tags);
        assert_eq!(tags, [tag(1), tag(2)]);
        assert_eq!(
            queue.drop_oldest(0).chunks,
            1,
            "\"third\" is dropped unsent"
        );
        assert!(queue.is_empty());
        assert_eq!(tags, [tag(1), tag(2)]);
    }
}
