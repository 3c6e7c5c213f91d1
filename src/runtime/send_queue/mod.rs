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

use std::cell::RefCell;
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

/// A connection's send queue. While idle it holds no heap memory: the queue's state is
/// allocated when bytes are queued and freed once they are all written, so the thousands of
/// idle connections of a large server cost only this struct each.
#[derive(Default)]
pub(crate) struct SendQueue {
    pending: Option<Box<Pending>>,
    /// Bytes the kernel has accepted, in total, below [`SEALING`]; and that bit when this is
    /// a TLS connection's queue, of which only sealed chunks are written (see the module's
    /// doc). One word for both keeps a connection's slot at 48 bytes.
    written_and_sealing: u64,
}

/// The bit of [`SendQueue::written_and_sealing`] that marks a sealing queue: 2^63 bytes are
/// never written.
const SEALING: u64 = 1 << 63;

impl SendQueue {
    /// A queue for a TLS connection, whose plaintext is sealed before it is written.
    pub fn sealing() -> Self {
        Self {
            pending: None,
            written_and_sealing: SEALING,
        }
    }

    fn is_sealing(&self) -> bool {
        self.written_and_sealing & SEALING != 0
    }

    fn pending(&mut self) -> &mut Pending {
        let sealing = self.is_sealing();
        self.pending.get_or_insert_with(|| Pending::new(sealing))
    }

    /// Gives up the queue's state once nothing is queued or in flight.
    fn release_if_idle(&mut self) {
        if let Some(pending) = self.pending.take_if(|pending| pending.is_idle()) {
            pending.recycle();
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
        if !bytes.is_empty() {
            self.pending().push_tagged(bytes, droppable, tag);
        }
    }

    /// What the queue costs: payload not yet written, [`CHUNK_OVERHEAD`] per chunk, and the
    /// whole capacity of the buffers it owns.
    pub fn cost(&self) -> usize {
        self.pending.as_ref().map_or(0, |pending| pending.cost)
    }

    /// Bytes the kernel has accepted since the connection opened.
    pub fn written(&self) -> u64 {
        self.written_and_sealing & !SEALING
    }

    pub fn is_empty(&self) -> bool {
        self.pending
            .as_ref()
            .is_none_or(|pending| pending.is_empty())
    }

    pub fn is_sending(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| pending.sending.is_some())
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.pending
            .as_ref()
            .is_none_or(|pending| pending.is_idle())
    }

    /// Whether sealed records wait at the front.
    pub fn has_sealed(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| pending.sealed > 0)
    }

    /// The connection's records are now the kernel's (kernel TLS): what is queued goes out
    /// as it is. Only when no sealed record waits or is being written.
    pub fn stop_sealing(&mut self) {
        debug_assert!(!self.has_sealed() && !self.is_sending());
        self.written_and_sealing &= !SEALING;
        if let Some(pending) = &mut self.pending {
            pending.sealing = false;
        }
    }

    /// Whether plaintext waits to be sealed.
    pub fn has_plaintext(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| pending.has_plaintext())
    }

    /// Queues sealed records behind the sealed ones and in front of any plaintext: what the
    /// TLS handshake answers, a close_notify, an alert.
    pub fn push_sealed(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.pending().push_sealed_tagged(bytes, None);
        }
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
        match &mut self.pending {
            Some(pending) => pending.seal_front(max, scratch, seal),
            None => Ok(0),
        }
    }

    /// Drops every plaintext byte (a TLS connection that failed, or closed before its
    /// handshake finished, can seal nothing more), keeping the sealed records.
    pub fn discard_plaintext(&mut self) {
        if let Some(pending) = &mut self.pending {
            pending.discard_plaintext();
        }
        self.release_if_idle();
    }

    /// Points `buf` at the front chunks and keeps it as the sendmsg in flight; returns the
    /// header to hand the kernel.
    ///
    /// The header, its iovecs and the bytes they point to stay valid and unchanged until
    /// [`SendQueue::complete`]: `buf` is boxed and held here, covered chunks are neither
    /// dropped nor consumed before, `Bytes` never change, and their heap memory does not
    /// move when the deque does (nor the queue's state, boxed and kept while sending).
    pub fn start_send(&mut self, buf: Box<SendBuf>) -> *const libc::msghdr {
        self.pending().start_send(buf)
    }

    /// The sendmsg in flight completed with `result`: drops what it wrote (adding the tags
    /// of the chunks it finished to `tags`), and gives its buffer back for reuse.
    pub fn complete(&mut self, result: i32, tags: &mut Vec<Tag>) -> Option<Box<SendBuf>> {
        let pending = self.pending.as_mut()?;
        if let Ok(written) = usize::try_from(result) {
            self.written_and_sealing += written as u64;
        }
        let buf = pending.complete(result, tags);
        self.release_if_idle();
        buf
    }

    /// Drops droppable chunks, oldest first, until the queue costs at most `low_water` (or
    /// nothing droppable is left). Walks from the front and stops there: the work is the
    /// chunks it removes plus those it keeps in front of them, never the whole queue.
    pub fn drop_oldest(&mut self, low_water: usize) -> Dropped {
        let Some(pending) = &mut self.pending else {
            return Dropped::default();
        };
        let dropped = pending.drop_oldest(low_water);
        self.release_if_idle();
        dropped
    }

    /// The tag of the oldest droppable chunk [`SendQueue::drop_stale`] could drop, if it is
    /// tagged; untagged and non-droppable chunks in front of it are walked past.
    pub fn oldest_tag(&self) -> Option<Tag> {
        self.pending
            .as_ref()
            .and_then(|pending| pending.oldest_tag())
    }

    /// Drops tagged droppable chunks, oldest first, while `stale` says their tag is; stops
    /// at the first one it keeps. Untagged and non-droppable chunks stay and are walked
    /// past, as are those [`SendQueue::drop_oldest`] protects.
    pub fn drop_stale(&mut self, stale: impl FnMut(Tag) -> bool) -> Dropped {
        let Some(pending) = &mut self.pending else {
            return Dropped::default();
        };
        let dropped = pending.drop_stale(stale);
        self.release_if_idle();
        dropped
    }

    /// Drops everything no sendmsg is reading: the connection is closing and will send
    /// nothing more.
    pub fn discard_unsent(&mut self) {
        if let Some(pending) = &mut self.pending {
            pending.discard_unsent();
        }
        self.release_if_idle();
    }
}

thread_local! {
    /// States of queues that went idle on this thread, for the next queue to take: an echo
    /// would otherwise allocate a state and its chunk list for every burst it answers and
    /// free both once the burst is written. The boxes are what is kept, so they stay boxed.
    #[allow(clippy::vec_box)]
    static SPARE_STATES: RefCell<Vec<Box<Pending>>> = const { RefCell::new(Vec::new()) };
}

/// Spare states a thread keeps at most.
const SPARE_STATES_MAX: usize = 64;

/// A spare state keeps its chunk list's room up to this many chunks; a larger list is freed,
/// so a spare stays under a kilobyte and a thread's spares under 64 KiB.
const SPARE_CHUNK_ROOM: usize = 16;

/// What a queue holds while anything is queued or in flight.
#[derive(Default)]
struct Pending {
    chunks: VecDeque<Chunk>,
    /// Bytes copied behind a sendmsg in flight, after every chunk, never empty: they grow
    /// here, where the kernel never reads, and join `chunks` (sealed) when they must be sent
    /// or something is queued behind them.
    tail: Option<Vec<u8>>,
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
}

impl Pending {
    /// A state for a queue, a spare one if this thread has one.
    fn new(sealing: bool) -> Box<Self> {
        let mut pending = SPARE_STATES
            .try_with(|spares| spares.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        pending.sealing = sealing;
        pending
    }

    /// Keeps this idle state as a spare, its chunk list's room with it, or frees it.
    fn recycle(mut self: Box<Self>) {
        debug_assert!(self.is_idle());
        if self.chunks.capacity() > SPARE_CHUNK_ROOM {
            return;
        }
        let chunks = std::mem::take(&mut self.chunks);
        *self = Pending {
            chunks,
            ..Pending::default()
        };
        // A thread that is ending has no spares left to keep: the state is freed.
        let _ = SPARE_STATES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < SPARE_STATES_MAX {
                spares.push(self);
            }
        });
    }

    fn push_tagged(&mut self, bytes: Bytes, droppable: bool, tag: Option<Tag>) {
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
                self.tail.insert(Vec::new())
            }
        };
        let before = tail.capacity();
        tail.extend_from_slice(bytes);
        self.cost += tail.capacity() - before;
    }

    /// Moves the tail into `chunks`, trimmed to its length (then it costs what a chunk
    /// does).
    fn seal_tail(&mut self) {
        let Some(mut tail) = self.tail.take() else {
            return;
        };
        self.cost -= tail.capacity();
        tail.shrink_to_fit();
        self.cost += tail.len();
        self.chunks.push_back(Chunk {
            bytes: Bytes::from(tail),
            droppable: false,
            tag: None,
        });
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_none()
    }

    /// Nothing queued and nothing in flight.
    fn is_idle(&self) -> bool {
        self.is_empty() && self.sending.is_none()
    }

    fn has_plaintext(&self) -> bool {
        self.chunks.len() > self.sealed as usize || self.tail.is_some()
    }

    /// [`SendQueue::push_sealed`], with the tag of the plaintext the records carry.
    fn push_sealed_tagged(&mut self, bytes: Bytes, tag: Option<Tag>) {
        debug_assert!(self.sealing);
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
    fn seal_front<E>(
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
    fn discard_plaintext(&mut self) {
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
    fn start_send(&mut self, mut buf: Box<SendBuf>) -> *const libc::msghdr {
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
    fn complete(&mut self, result: i32, tags: &mut Vec<Tag>) -> Option<Box<SendBuf>> {
        self.in_flight = 0;
        if let Ok(written) = usize::try_from(result) {
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
    fn drop_oldest(&mut self, low_water: usize) -> Dropped {
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

    /// [`SendQueue::oldest_tag`].
    fn oldest_tag(&self) -> Option<Tag> {
        self.chunks
            .range(self.protected()..)
            .find(|chunk| chunk.droppable && chunk.tag.is_some())
            .and_then(|chunk| chunk.tag)
    }

    /// [`SendQueue::drop_stale`]: each run of stale chunks goes in one drain, so the chunks
    /// kept in front (a sendmsg's, up to [`MAX_IOV`]) move once per run, not once per chunk.
    fn drop_stale(&mut self, mut stale: impl FnMut(Tag) -> bool) -> Dropped {
        let mut dropped = Dropped::default();
        let mut at = self.protected();
        loop {
            let mut end = at;
            while let Some(chunk) = self.chunks.get(end) {
                match chunk.tag.filter(|_| chunk.droppable) {
                    Some(tag) if stale(tag) => {
                        let cost = chunk.bytes.len() + CHUNK_OVERHEAD;
                        self.cost -= cost;
                        dropped.chunks += 1;
                        dropped.bytes += cost;
                        end += 1;
                    }
                    _ => break,
                }
            }
            self.chunks.drain(at..end);
            match self.chunks.get(at) {
                // Not droppable or untagged: kept, and walked past.
                Some(chunk) if chunk.tag.filter(|_| chunk.droppable).is_none() => at += 1,
                _ => return dropped,
            }
        }
    }

    /// Drops everything no sendmsg is reading: the connection is closing and will send
    /// nothing more.
    fn discard_unsent(&mut self) {
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
mod tests;
