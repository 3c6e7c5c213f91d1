//! The shard's provided-buffer ring: receive buffers the kernel picks per completion, so a
//! connection holds no buffer while it has nothing to read.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

use super::lending::Pool;
use window::Window;

mod window;

/// Receives that found no buffer posted, over the process.
static RAN_DRY: AtomicU64 = AtomicU64::new(0);

/// Receives that found no receive buffer posted and were started again, over the process:
/// the window of posted buffers widening to a burst, or, when it keeps climbing under steady
/// load, too few `--recv-buffers` for the traffic.
pub fn receives_ran_dry() -> u64 {
    RAN_DRY.load(Ordering::Relaxed)
}

/// The provided-buffer group of every shard's ring (each ring has its own groups).
pub(crate) const BUFFER_GROUP: u16 = 0;

/// An anonymous, page-aligned memory mapping.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain memory with no thread affinity; who reads and writes it, and
// when, is ruled by its users (the ring's buffer discipline and loans).
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` gives out only its address.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn start(&self) -> NonNull<u8> {
        self.ptr
    }

    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`, once; nothing refers to it any
        // more (see `BufRing`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A registered buffer ring and the buffers it hands out.
///
/// Must be dropped after the ring it is registered with (the shard declares its ring first,
/// and dropping the ring waits for its requests), so the kernel never writes into unmapped
/// memory. The buffers themselves live as long as any loan of them (see `lending`).
pub(crate) struct BufRing {
    entries: Mapping,
    pool: Arc<Pool>,
    count: u16,
    buffer_size: usize,
    /// Our copy of the tail; published to the kernel by [`BufRing::publish`].
    tail: u16,
    /// Buffers posted and not yet seen handed out (an upper bound: the kernel may have
    /// taken some whose completions are still to be reaped).
    posted: u16,
    /// How many to keep posted.
    window: Window,
    /// Buffers given back and not posted, the last given back on top: the warmest in cache.
    spare: Vec<u16>,
}

impl BufRing {
    /// Maps `count` buffers of `buffer_size` bytes and registers them as group `group`.
    pub fn new(
        submitter: &Submitter<'_>,
        count: u16,
        buffer_size: usize,
        group: u16,
    ) -> io::Result<Self> {
        if !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two",
            ));
        }
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(count) * buffer_size)?;
        // SAFETY: `entries` is a page-aligned mapping of `count` entries that lives as long as
        // this value, which outlives the ring's use of it (see the type's docs).
        unsafe {
            submitter.register_buf_ring_with_flags(entries.ptr.as_ptr() as u64, count, group, 0)?
        };
        let mut ring = Self {
            entries,
            pool: Arc::new(Pool::new(buffers, count, buffer_size)),
            count,
            buffer_size,
            tail: 0,
            posted: 0,
            window: Window::new(count),
            spare: Vec::with_capacity(usize::from(count)),
        };
        // Buffer 0 is posted first: the kernel takes buffers in the order they are posted.
        ring.spare.extend((0..count).rev());
        ring.publish();
        Ok(ring)
    }

    /// Notes that the kernel handed out a buffer with a completion.
    pub fn handed_out(&mut self) {
        self.posted = self.posted.saturating_sub(1);
        self.window.handed_out();
    }

    /// Notes that a receive ended for want of a posted buffer.
    pub fn ran_dry(&mut self) {
        RAN_DRY.fetch_add(1, Ordering::Relaxed);
        self.posted = 0;
        self.window.ran_dry();
    }

    /// The first `len` bytes of buffer `id`, which the kernel filled for a completion.
    pub fn filled(&mut self, id: u16, len: usize) -> &mut [u8] {
        let id = id % self.count;
        let len = len.min(self.buffer_size);
        // SAFETY: buffer `id` lies inside the mapping; the kernel handed it to us with the
        // completion and will not touch it until we give it back with `recycle`.
        unsafe { std::slice::from_raw_parts_mut(self.pool.buffer(id).as_ptr(), len) }
    }

    /// The pool of this ring's buffers, to lend them from.
    pub fn pool(&self) -> Arc<Pool> {
        Arc::clone(&self.pool)
    }

    /// Gives back every buffer whose loans have all ended.
    pub fn reclaim(&mut self) {
        self.pool.take_returned(&mut self.spare);
    }

    /// Gives buffer `id` back; [`BufRing::publish`] posts it when the window wants it.
    pub fn recycle(&mut self, id: u16) {
        self.spare.push(id % self.count);
    }

    fn push(&mut self, id: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot` < `count`, inside the entries mapping; the kernel reads entries only
        // up to the published tail, and this slot is past it.
        unsafe {
            let entry = &mut *self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(slot);
            entry.set_addr(self.pool.buffer(id).as_ptr() as u64);
            entry.set_len(self.buffer_size as u32);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Ends a turn: posts as many spare buffers as the window wants, warmest first, and makes
    /// them visible to the kernel.
    pub fn publish(&mut self) {
        let target = self.window.end_turn();
        let before = self.tail;
        while self.posted < target {
            let Some(id) = self.spare.pop() else { break };
            self.push(id);
            self.posted += 1;
        }
        if self.tail == before {
            return;
        }
        // SAFETY: the tail field overlays the first entry's reserved field, as the kernel
        // defines it; the entries mapping is page aligned. The release store orders the entry
        // writes before the kernel can see the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>());
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}
