//! Receive buffers lent out as [`Bytes`]: a handler can send bytes it was handed straight
//! from the provided buffer they arrived in (an echo, a forward), without copying them.
//!
//! A lent buffer stays out of the ring until every `Bytes` cut from it is dropped (its send
//! completed, or its connection went away); then it is handed back at the next
//! [`BufRing::reclaim`](super::buf_ring::BufRing::reclaim). At most half of a ring's buffers
//! are out at once, so lending never starves the receives: past that, callers copy.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::buf_ring::Mapping;

/// One ring's receive buffers, shared by the ring and every loan of them.
pub(crate) struct Pool {
    memory: Mapping,
    buffer_size: usize,
    /// Per buffer: live loans, plus one while it is being delivered after its first loan.
    loans: Box<[AtomicU32]>,
    /// Buffers whose last loan was dropped, waiting to go back into the ring.
    returned: Mutex<Vec<u16>>,
    /// Buffers out of the ring on loan, counted by the shard's thread alone.
    out: AtomicU32,
    /// Most buffers out at once.
    limit: u32,
}

impl Pool {
    pub fn new(memory: Mapping, count: u16, buffer_size: usize) -> Self {
        Self {
            memory,
            buffer_size,
            loans: (0..count).map(|_| AtomicU32::new(0)).collect(),
            returned: Mutex::new(Vec::new()),
            out: AtomicU32::new(0),
            limit: u32::from(count / 2),
        }
    }

    /// The start of buffer `id`, below the buffer count.
    pub fn buffer(&self, id: u16) -> NonNull<u8> {
        debug_assert!(usize::from(id) < self.loans.len());
        // SAFETY: callers pass ids below the buffer count, so the offset lies in the mapping.
        unsafe { self.memory.start().add(usize::from(id) * self.buffer_size) }
    }

    /// Takes the buffers whose loans have all ended; each counts as out no more.
    ///
    /// Called every turn: with nothing out (messages under the lending size, the usual
    /// case) it reads one word and takes no lock, whose locked instructions would wait
    /// for the turn's stores to drain.
    pub fn take_returned(&self, into: &mut Vec<u16>) {
        if self.out.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut returned = self.returned.lock().unwrap_or_else(PoisonError::into_inner);
        if !returned.is_empty() {
            self.out.fetch_sub(returned.len() as u32, Ordering::Relaxed);
            into.append(&mut returned);
        }
    }

    /// Ends one loan of buffer `id`; true when it was the last.
    fn release(&self, id: u16) -> bool {
        self.loans[usize::from(id)].fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// The owner behind lent [`Bytes`]: a slice of one receive buffer.
struct Loan {
    pool: Arc<Pool>,
    id: u16,
    start: NonNull<u8>,
    len: usize,
}

// SAFETY: a loan is a read-only view of memory the pool owns (kept alive by the `Arc`) and
// no one writes while the loan lives (see `as_ref`); releasing it goes through atomics and
// a mutex, so it may be dropped on any thread.
unsafe impl Send for Loan {}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range lies inside one buffer of the pool's mapping, which the `Arc`
        // keeps mapped. While any loan of the buffer lives it is out of the ring, so the
        // kernel does not write it; the handler it was delivered to only writes (unmasks)
        // bytes it has not yet handed out, and the lent range was handed out.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if self.pool.release(self.id) {
            self.pool
                .returned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.id);
        }
    }
}

/// The buffer being delivered to a handler now, and whether any of it was lent.
struct Delivery {
    ring: usize,
    id: u16,
    start: usize,
    len: usize,
    lent: bool,
}

/// What the shard's [`Io`](super::Io) lends from: every ring's pool and the buffer being
/// delivered.
#[derive(Default)]
pub(crate) struct Lending {
    pools: Vec<Arc<Pool>>,
    delivering: Option<Delivery>,
}

impl Lending {
    pub fn new(pools: Vec<Arc<Pool>>) -> Self {
        Self {
            pools,
            delivering: None,
        }
    }

    /// `data`, the first bytes of buffer `id` of ring `ring`, is being handed to a handler.
    pub fn begin(&mut self, ring: usize, id: u16, data: &[u8]) {
        self.delivering = Some(Delivery {
            ring,
            id,
            start: data.as_ptr() as usize,
            len: data.len(),
            lent: false,
        });
    }

    /// The delivery ended; true when the buffer must stay out of the ring because loans of
    /// it live on (it comes back through its pool's returned list).
    pub fn end(&mut self) -> bool {
        let Some(delivery) = self.delivering.take() else {
            return false;
        };
        if !delivery.lent {
            return false;
        }
        let pool = &self.pools[delivery.ring];
        if pool.release(delivery.id) {
            // Every loan already ended: the buffer goes back now, with the ring's own.
            pool.out.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// `part` as shared bytes without a copy, when it lies in the buffer being delivered
    /// and the pool may lend one more buffer; else `None`, and the caller copies.
    pub fn lend(&mut self, part: &[u8]) -> Option<Bytes> {
        let delivery = self.delivering.as_mut()?;
        let start = part.as_ptr() as usize;
        let offset = start.checked_sub(delivery.start)?;
        if part.is_empty() || offset + part.len() > delivery.len {
            return None;
        }
        let pool = &self.pools[delivery.ring];
        let loans = &pool.loans[usize::from(delivery.id)];
        if !delivery.lent {
            if pool.out.load(Ordering::Relaxed) >= pool.limit {
                return None;
            }
            pool.out.fetch_add(1, Ordering::Relaxed);
            // The delivery's own hold: no loan dropped before the delivery ends can send the
            // buffer back while the handler still reads it.
            loans.fetch_add(1, Ordering::Relaxed);
            delivery.lent = true;
        }
        loans.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `offset` lies inside the filled part of the buffer being delivered.
        let start = unsafe { pool.buffer(delivery.id).add(offset) };
        Some(Bytes::from_owner(Loan {
            pool: Arc::clone(pool),
            id: delivery.id,
            start,
            len: part.len(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 4096;

    fn lending(count: u16) -> (Lending, Arc<Pool>) {
        let memory = Mapping::new(usize::from(count) * SIZE).expect("map buffers");
        let pool = Arc::new(Pool::new(memory, count, SIZE));
        (Lending::new(vec![Arc::clone(&pool)]), pool)
    }

    /// Buffer `id`'s first `len` bytes, as the event loop hands them to a handler.
    fn filled(pool: &Pool, id: u16, len: usize) -> &'static mut [u8] {
        // SAFETY: inside the test's mapping, which the returned pool keeps alive for the
        // test; each test uses a buffer through one such slice at a time.
        unsafe { std::slice::from_raw_parts_mut(pool.buffer(id).as_ptr(), len) }
    }

    fn returned(pool: &Pool) -> Vec<u16> {
        let mut ids = Vec::new();
        pool.take_returned(&mut ids);
        ids
    }

    #[test]
    fn a_buffer_comes_back_once_its_last_loan_ends() {
        let (mut lending, pool) = lending(4);
        let data = filled(&pool, 1, 100);
        data.fill(7);
        lending.begin(0, 1, data);
        let first = lending.lend(&data[10..20]).expect("lend");
        let second = lending.lend(&data[50..100]).expect("lend again");
        assert!(lending.end(), "loans live on: the buffer stays out");
        assert_eq!(&first[..], &[7; 10]);
        drop(first);
        assert!(returned(&pool).is_empty());
        drop(second);
        assert_eq!(returned(&pool), [1]);
        assert_eq!(pool.out.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn loans_ended_during_the_delivery_leave_the_buffer_to_the_ring() {
        let (mut lending, pool) = lending(4);
        let data = filled(&pool, 2, 64);
        lending.begin(0, 2, data);
        drop(lending.lend(&data[..8]).expect("lend"));
        drop(lending.lend(&data[8..]).expect("lend"));
        assert!(!lending.end(), "no loan left: the ring takes it back now");
        assert!(returned(&pool).is_empty(), "and not a second time");
        assert_eq!(pool.out.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_what_is_being_delivered_is_lent() {
        let (mut lending, pool) = lending(4);
        let elsewhere = vec![1u8; 16];
        assert!(
            lending.lend(&elsewhere).is_none(),
            "nothing is being delivered"
        );
        let data = filled(&pool, 0, 32);
        lending.begin(0, 0, &data[..16]);
        assert!(lending.lend(&elsewhere).is_none());
        assert!(
            lending.lend(&data[8..24]).is_none(),
            "past what was received"
        );
        assert!(lending.lend(&data[..0]).is_none());
        assert!(!lending.end());
    }

    #[test]
    fn at_most_half_the_buffers_are_out() {
        let (mut lending, pool) = lending(4);
        let mut loans = Vec::new();
        for id in 0..3 {
            let data = filled(&pool, id, 32);
            lending.begin(0, id, data);
            loans.push(lending.lend(data));
            lending.end();
        }
        assert!(loans[0].is_some() && loans[1].is_some());
        assert!(
            loans[2].is_none(),
            "a third of four would be past the bound"
        );
        loans.clear();
        assert_eq!(returned(&pool).len(), 2);
        let data = filled(&pool, 3, 32);
        lending.begin(0, 3, data);
        let again = lending.lend(data);
        assert!(again.is_some(), "lending again once they are back");
        assert!(lending.end());
        drop(again);
        assert_eq!(returned(&pool), [3]);
    }
}
