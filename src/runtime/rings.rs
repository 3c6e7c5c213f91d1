//! A shard's rings: one it waits on, and as many more as its connections need, each with a
//! direct-descriptor table of the same size.
//!
//! A connection's slot number is global within the shard: ring `slot / table`, descriptor
//! `slot % table` there. The first ring is the one the shard blocks on; the others share an
//! eventfd that the first ring reads, so work on any of them wakes the thread, and each
//! turn enters only those with something to submit or deferred work to run.

use std::io;
use std::os::fd::RawFd;

use io_uring::squeue;
use io_uring::types::Fixed;

use super::ring::{Completion, Ring};

pub(crate) struct Rings {
    /// The first ring is the one the shard waits on.
    list: Vec<Ring>,
    /// Descriptors per ring.
    table: u32,
    /// Connections each ring holds, closing ones included.
    live: Vec<usize>,
}

impl Rings {
    /// `count` rings of `entries` submission entries, each with `table` direct descriptors;
    /// the extra rings signal `wake`.
    pub fn new(count: usize, entries: u32, table: u32, wake: RawFd) -> io::Result<Self> {
        let list = (0..count.max(1))
            .map(|index| Ring::new(entries, table, (index > 0).then_some(wake)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            live: vec![0; list.len()],
            list,
            table,
        })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Connections the shard's tables hold in all.
    pub fn capacity(&self) -> usize {
        self.list.len() * self.table as usize
    }

    /// The ring the shard waits on.
    pub fn first(&mut self) -> &mut Ring {
        &mut self.list[0]
    }

    pub fn get(&mut self, ring: usize) -> &mut Ring {
        &mut self.list[ring]
    }

    /// Which ring slot `index` lives in.
    pub fn ring_of(&self, index: u32) -> usize {
        (index / self.table) as usize
    }

    /// The shard-wide slot of descriptor `local` in ring `ring`.
    pub fn slot_of(&self, ring: usize, local: u32) -> u32 {
        ring as u32 * self.table + local
    }

    /// Queues `entry`, built for slot `index`'s descriptor (see [`Rings::fixed`]), on that
    /// slot's ring.
    ///
    /// # Safety
    ///
    /// As [`Ring::push`].
    pub unsafe fn push_for(&mut self, index: u32, entry: &squeue::Entry) {
        let ring = self.ring_of(index);
        // SAFETY: the caller upholds Ring::push's contract.
        unsafe { self.list[ring].push(entry) };
    }

    /// Slot `index`'s descriptor in its own ring's table.
    pub fn fixed(&self, index: u32) -> Fixed {
        Fixed(index % self.table)
    }

    /// A connection was accepted into slot `index`.
    pub fn opened(&mut self, index: u32) {
        let ring = self.ring_of(index);
        self.live[ring] += 1;
    }

    /// Slot `index`'s descriptor was closed.
    pub fn closed(&mut self, index: u32) {
        let ring = self.ring_of(index);
        self.live[ring] = self.live[ring].saturating_sub(1);
    }

    /// Connections ring `ring` holds.
    pub fn live(&self, ring: usize) -> usize {
        self.live[ring]
    }

    /// Moves every completion of every ring into `into`, the first ring's first; each
    /// ring's own in order.
    pub fn reap(&mut self, into: &mut Vec<Completion>) {
        for (ring, uring) in self.list.iter_mut().enumerate() {
            uring.reap(ring, into);
        }
    }

    /// Hands the extra rings what was pushed to them and runs their deferred work; whether
    /// completions now wait on any of them (then the shard must not block).
    pub fn submit_extra(&mut self) -> io::Result<bool> {
        let mut ready = false;
        for ring in self.list.iter_mut().skip(1) {
            ring.submit_pending()?;
            ready |= ring.has_completions();
        }
        Ok(ready)
    }
}
