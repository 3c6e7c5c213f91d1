//! The shard's provided-buffer ring: receive buffers the kernel picks per completion, so a
//! connection holds no buffer while it has nothing to read.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use io_uring::types::BufRingEntry;

use super::lending::Pool;
use super::ring::Ring;
use order::Order;

mod order;

/// Receives that found no buffer posted, over the process.
static RAN_DRY: AtomicU64 = AtomicU64::new(0);

/// Receives that found no receive buffer posted and were started again, over the process:
/// every buffer was in use at once, by a burst or by loans; climbing under steady load, it
/// means too few `--recv-buffers` for the traffic.
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
    /// Which buffer is posted where; the given-back ones go in front (see `order`).
    order: Order,
    /// The ring the buffers are registered with, to check the counted head against the
    /// kernel's in debug builds.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    ring_fd: RawFd,
}

impl BufRing {
    /// Maps `count` buffers of `buffer_size` bytes and registers them with `ring` as group
    /// `group`.
    pub fn new(ring: &Ring, count: u16, buffer_size: usize, group: u16) -> io::Result<Self> {
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
            ring.submitter().register_buf_ring_with_flags(
                entries.ptr.as_ptr() as u64,
                count,
                group,
                0,
            )?
        };
        let mut buf_ring = Self {
            entries,
            pool: Arc::new(Pool::new(buffers, count, buffer_size)),
            count,
            buffer_size,
            order: Order::new(count),
            ring_fd: ring.fd(),
        };
        for id in 0..count {
            post(&buf_ring.entries, &buf_ring.pool, buffer_size, id, id);
        }
        buf_ring.store_tail();
        Ok(buf_ring)
    }

    /// Notes that the kernel handed out buffer `id` with a completion.
    pub fn handed_out(&mut self, id: u16) {
        self.order.handed_out(id);
    }

    /// Notes that a receive ended for want of a posted buffer.
    pub fn ran_dry(&mut self) {
        RAN_DRY.fetch_add(1, Ordering::Relaxed);
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
        self.pool.take_returned(self.order.returned());
    }

    /// Gives buffer `id` back; [`BufRing::publish`] posts it.
    pub fn recycle(&mut self, id: u16) {
        self.order.returned().push(id % self.count);
    }

    /// Ends a turn: posts the buffers given back and makes them visible to the kernel.
    ///
    /// `settled` is the ring's word that every completion of its entries so far has been
    /// reaped and it ran with deferred task work, so the kernel took buffers only inside
    /// those entries and the count of what it took is exact: then the buffers given back go
    /// where the kernel reads next, warm in cache.
    pub fn publish(&mut self, settled: bool) {
        let (entries, pool, size) = (&self.entries, &self.pool, self.buffer_size);
        let moved = self
            .order
            .end_turn(settled, |slot, id| post(entries, pool, size, slot, id));
        if moved {
            self.store_tail();
            #[cfg(debug_assertions)]
            if settled {
                self.check_head();
            }
        }
    }

    /// Publishes the tail to the kernel.
    fn store_tail(&mut self) {
        // SAFETY: the tail field overlays the first entry's reserved field, as the kernel
        // defines it; the entries mapping is page aligned. The release store orders the entry
        // writes before the kernel can see the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>());
            (*tail.cast::<AtomicU16>()).store(self.order.tail(), Ordering::Release);
        }
    }

    /// Asserts that the head counted from completions is the kernel's (Linux 6.8 reports
    /// it; older kernels are not checked).
    #[cfg(debug_assertions)]
    fn check_head(&self) {
        #[repr(C)]
        struct Status {
            group: u32,
            head: u32,
            reserved: [u32; 8],
        }
        const IORING_REGISTER_PBUF_STATUS: libc::c_long = 26;
        let mut status = Status {
            group: u32::from(BUFFER_GROUP),
            head: 0,
            reserved: [0; 8],
        };
        // SAFETY: io_uring_register(2) reads the group from and writes the head into
        // `status`, a live struct of the layout the kernel defines, and nothing else.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring_fd,
                IORING_REGISTER_PBUF_STATUS,
                &mut status as *mut Status,
                1,
            )
        };
        if rc == 0 {
            assert_eq!(
                status.head as u16,
                self.order.head(),
                "the receive buffers' counted head differs from the kernel's"
            );
        }
    }
}

/// Writes ring entry `slot` of `entries` to post buffer `id` of `pool`.
fn post(entries: &Mapping, pool: &Pool, buffer_size: usize, slot: u16, id: u16) {
    // SAFETY: `slot` is masked to the ring, inside the entries mapping. The kernel reads
    // entries only up to the published tail, so one past it is ours; and one between its
    // head and the tail only inside `io_uring_enter`, while `Order` rewrites such an entry
    // only between entries of a ring whose every completion was reaped (see `publish`).
    unsafe {
        let entry = &mut *entries
            .ptr
            .as_ptr()
            .cast::<BufRingEntry>()
            .add(usize::from(slot));
        entry.set_addr(pool.buffer(id).as_ptr() as u64);
        entry.set_len(buffer_size as u32);
        entry.set_bid(id);
    }
}
