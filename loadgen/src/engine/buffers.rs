//! Receive buffers the kernel picks per completion (a provided-buffer ring), shared by every
//! connection of the thread: a connection holds no buffer while nothing arrives for it.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

/// An anonymous, page-aligned memory mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Bytes between the starts of neighbouring buffers beyond their size. Buffers a power of two
/// apart would start in the same few cache sets: the kernel cycles through every buffer of
/// the ring, and with small messages each receive would write, and the engine then read, a
/// line evicted by its neighbours, from memory. One line more staggers them over every set.
const STAGGER: usize = 64;

/// A registered buffer ring and the buffers it hands out.
///
/// The engine drops it only once no receive is in flight (or leaks it, see
/// `Engine::abandon`), so the kernel never writes into unmapped memory.
pub struct Buffers {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    size: usize,
    /// From one buffer's start to the next: `size` and [`STAGGER`].
    stride: usize,
    /// Our copy of the tail; the kernel sees it after [`Buffers::publish`].
    tail: u16,
}

/// The buffer group every receive of the thread selects from.
pub const GROUP: u16 = 0;

impl Buffers {
    /// Maps `count` (a power of two) buffers of `size` bytes and registers them.
    pub fn new(submitter: &Submitter<'_>, count: u16, size: usize) -> io::Result<Buffers> {
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let stride = size + STAGGER;
        let buffers = Mapping::new(usize::from(count) * stride)?;
        // SAFETY: `entries` is a page-aligned mapping of `count` entries that lives as long
        // as this value, which outlives every receive that uses it (see the type's docs).
        unsafe {
            submitter.register_buf_ring_with_flags(entries.ptr.as_ptr() as u64, count, GROUP, 0)?
        };
        let mut ring = Buffers {
            entries,
            buffers,
            count,
            size,
            stride,
            tail: 0,
        };
        for id in 0..count {
            ring.recycle(id);
        }
        ring.publish();
        Ok(ring)
    }

    /// The first `len` bytes of buffer `id`, which the kernel filled for a completion.
    pub fn filled(&mut self, id: u16, len: usize) -> &mut [u8] {
        let id = usize::from(id % self.count);
        let len = len.min(self.size);
        // SAFETY: buffer `id` lies inside the mapping; the kernel handed it over with the
        // completion and does not touch it again until it is recycled and published.
        unsafe {
            std::slice::from_raw_parts_mut(self.buffers.ptr.as_ptr().add(id * self.stride), len)
        }
    }

    /// Gives buffer `id` back; the kernel sees it after the next [`Buffers::publish`].
    pub fn recycle(&mut self, id: u16) {
        let id = id % self.count;
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot` < `count`, inside the entries mapping; the kernel reads entries only
        // up to the published tail, and this slot is past it.
        unsafe {
            let entry = &mut *self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(slot);
            entry.set_addr(self.buffers.ptr.as_ptr().add(usize::from(id) * self.stride) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every recycled buffer visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the tail field overlays the first entry's reserved field, as the kernel
        // defines it, in the page-aligned entries mapping. The release store orders the
        // entry writes before the kernel can see the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>());
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}
