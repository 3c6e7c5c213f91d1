//! The shard's provided-buffer ring: receive buffers the kernel picks per completion, so a
//! connection holds no buffer while it has nothing to read.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

use super::lending::Pool;

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
    /// Buffers back from loan, taken from the pool's list by [`BufRing::reclaim`].
    returned: Vec<u16>,
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
            returned: Vec::new(),
        };
        for id in 0..count {
            ring.push(id);
        }
        ring.publish();
        Ok(ring)
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
        let mut returned = std::mem::take(&mut self.returned);
        self.pool.take_returned(&mut returned);
        for id in returned.drain(..) {
            self.recycle(id);
        }
        self.returned = returned;
    }

    /// Gives buffer `id` back; the kernel sees it after the next [`BufRing::publish`].
    pub fn recycle(&mut self, id: u16) {
        self.push(id % self.count);
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

    /// Makes every recycled buffer visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the tail field overlays the first entry's reserved field, as the kernel
        // defines it; the entries mapping is page aligned. The release store orders the entry
        // writes before the kernel can see the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>());
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}
