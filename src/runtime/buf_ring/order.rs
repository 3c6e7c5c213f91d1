//! Which receive buffer the kernel fills next.
//!
//! The kernel takes provided buffers in the order they were posted, so a buffer given back
//! at the tail is filled again only after every buffer posted before it: with 256 buffers
//! of 64 KiB, a receive lands in the memory used longest ago, long out of cache (at 16 KiB
//! messages each receive fills a whole buffer, 16 MiB in rotation). The entries between the
//! kernel's head and the tail are read by the kernel only while the shard is inside
//! `io_uring_enter` (deferred task running, a single issuer), so between entries the shard
//! may rewrite them: the buffers given back in a turn, the last given back first, take the
//! places the kernel reads next, and the buffers they displace go to the back. Every buffer
//! stays posted, so a burst finds as many as before; a quiet turn finds the warm ones.
//!
//! The kernel's head is not shared with us. It is counted from completions, each of which
//! names the buffer it took, and trusted only once every completion of the entries since
//! has been reaped (the caller's `settled`); completions that name buffers out of the order
//! posted turn the reordering off for good, leaving the plain order, which needs no count.

/// The ring's order of posted buffers, as this side knows it.
#[derive(Debug)]
pub(crate) struct Order {
    /// The buffer posted at each ring position (by position, masked).
    at: Vec<u16>,
    /// Each buffer's ring position, while it is posted.
    position: Vec<u16>,
    mask: u16,
    /// The kernel's head when last known: the position it takes from next.
    head: u16,
    /// The position the next buffer appended goes to.
    tail: u16,
    /// Buffers handed out since `head` was known.
    taken: u16,
    /// One past the farthest position from `head` of those: equal to `taken` exactly when
    /// the kernel took the buffers in the order posted.
    reach: u16,
    /// Buffers given back since the last turn ended, in the order given back.
    returned: Vec<u16>,
    /// Whether given-back buffers go in front; cleared for good if the count is ever wrong.
    reorder: bool,
}

impl Order {
    /// Every one of `count` buffers posted, buffer 0 first; `count` is a power of two.
    pub fn new(count: u16) -> Self {
        debug_assert!(count.is_power_of_two());
        Self {
            at: (0..count).collect(),
            position: (0..count).collect(),
            mask: count - 1,
            head: 0,
            tail: count,
            taken: 0,
            reach: 0,
            returned: Vec::with_capacity(usize::from(count)),
            reorder: true,
        }
    }

    /// The position the next buffer is posted at: the tail to publish.
    pub fn tail(&self) -> u16 {
        self.tail
    }

    /// The kernel's head as last counted.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The kernel handed out buffer `id` with a completion.
    pub fn handed_out(&mut self, id: u16) {
        let distance = self.position[usize::from(id & self.mask)].wrapping_sub(self.head);
        self.taken = self.taken.wrapping_add(1);
        self.reach = self.reach.max(distance.wrapping_add(1));
    }

    /// Where buffers given back are collected until the turn ends.
    pub fn returned(&mut self) -> &mut Vec<u16> {
        &mut self.returned
    }

    /// Ends a turn: posts every buffer given back, calling `write(position, id)` for each
    /// ring entry written. `settled` says that every completion of the kernel's entries
    /// since the last turn has been reaped and no entry could take a buffer meanwhile; only
    /// then do the given-back buffers go in front. Returns whether anything was written.
    pub fn end_turn(&mut self, settled: bool, mut write: impl FnMut(u16, u16)) -> bool {
        let in_front = settled && self.reorder && self.count_head();
        if self.returned.is_empty() {
            return false;
        }
        let mut returned = std::mem::take(&mut self.returned);
        if in_front {
            let posted = self.tail.wrapping_sub(self.head);
            for (i, &id) in returned.iter().rev().enumerate() {
                let i = i as u16;
                if i < posted {
                    let front = self.head.wrapping_add(i);
                    let displaced = self.at[usize::from(front & self.mask)];
                    self.place(front, id, &mut write);
                    self.append(displaced, &mut write);
                } else {
                    self.append(id, &mut write);
                }
            }
        } else {
            for &id in &returned {
                self.append(id, &mut write);
            }
        }
        returned.clear();
        self.returned = returned;
        true
    }

    /// Moves `head` past the buffers handed out since it was known; false, turning the
    /// reordering off, when they were not the ones posted first.
    fn count_head(&mut self) -> bool {
        if self.reach != self.taken {
            tracing::warn!(
                taken = self.taken,
                reach = self.reach,
                "receive buffers came back out of the order posted: posting them in that order from now on"
            );
            self.reorder = false;
            return false;
        }
        self.head = self.head.wrapping_add(self.taken);
        self.taken = 0;
        self.reach = 0;
        true
    }

    fn append(&mut self, id: u16, write: &mut impl FnMut(u16, u16)) {
        self.place(self.tail, id, write);
        self.tail = self.tail.wrapping_add(1);
    }

    fn place(&mut self, position: u16, id: u16, write: &mut impl FnMut(u16, u16)) {
        let id = id & self.mask;
        self.at[usize::from(position & self.mask)] = id;
        self.position[usize::from(id)] = position;
        write(position & self.mask, id);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The kernel's side: the ring's entries as written, and its head.
    struct Kernel {
        entries: Vec<u16>,
        head: u16,
        tail: u16,
    }

    impl Kernel {
        fn new(order: &Order) -> Self {
            Self {
                entries: order.at.clone(),
                head: 0,
                tail: order.tail(),
            }
        }

        /// Takes the next posted buffer, as a receive does.
        fn take(&mut self) -> Option<u16> {
            if self.head == self.tail {
                return None;
            }
            let id = self.entries[usize::from(self.head) % self.entries.len()];
            self.head = self.head.wrapping_add(1);
            Some(id)
        }

        fn posted(&self) -> Vec<u16> {
            let len = self.entries.len();
            (0..self.tail.wrapping_sub(self.head))
                .map(|i| self.entries[usize::from(self.head.wrapping_add(i)) % len])
                .collect()
        }
    }

    fn end_turn(order: &mut Order, kernel: &mut Kernel, settled: bool) {
        let entries = &mut kernel.entries;
        order.end_turn(settled, |position, id| entries[usize::from(position)] = id);
        kernel.tail = order.tail();
    }

    /// The kernel takes `n` buffers; they are handed out and given back in that order.
    fn turn(order: &mut Order, kernel: &mut Kernel, n: usize, settled: bool) -> Vec<u16> {
        let taken: Vec<u16> = (0..n).map_while(|_| kernel.take()).collect();
        for &id in &taken {
            order.handed_out(id);
            order.returned().push(id);
        }
        end_turn(order, kernel, settled);
        taken
    }

    fn assert_each_buffer_posted_once(kernel: &Kernel, out: &[u16], count: u16) {
        let posted = kernel.posted();
        let mut all: Vec<u16> = posted.iter().chain(out).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..count).collect::<Vec<_>>(),
            "posted {posted:?}, out {out:?}"
        );
    }

    #[test]
    fn the_buffer_given_back_last_is_filled_next() {
        let mut order = Order::new(8);
        let mut kernel = Kernel::new(&order);
        assert_eq!(turn(&mut order, &mut kernel, 2, true), [0, 1]);
        assert_eq!(kernel.posted(), [1, 0, 4, 5, 6, 7, 2, 3]);
        assert_eq!(turn(&mut order, &mut kernel, 1, true), [1]);
        assert_eq!(
            turn(&mut order, &mut kernel, 1, true),
            [1],
            "the same warm buffer"
        );
        assert_each_buffer_posted_once(&kernel, &[], 8);
    }

    #[test]
    fn without_settled_completions_buffers_go_to_the_back_and_the_count_catches_up() {
        let mut order = Order::new(4);
        let mut kernel = Kernel::new(&order);
        // Taken in an entry whose completions are not all reaped yet.
        let first = kernel.take().expect("posted");
        order.handed_out(first);
        order.returned().push(first);
        let unseen = kernel.take().expect("posted");
        end_turn(&mut order, &mut kernel, false);
        assert_eq!(kernel.posted(), [2, 3, 0]);
        // Its completion comes with the next reap.
        order.handed_out(unseen);
        order.returned().push(unseen);
        end_turn(&mut order, &mut kernel, true);
        assert_eq!(order.head(), kernel.head);
        assert_eq!(kernel.posted(), [1, 3, 0, 2]);
    }

    #[test]
    fn a_buffer_kept_past_its_turn_comes_back_in_front_later() {
        let mut order = Order::new(4);
        let mut kernel = Kernel::new(&order);
        let lent = kernel.take().expect("posted");
        order.handed_out(lent);
        end_turn(&mut order, &mut kernel, true);
        turn(&mut order, &mut kernel, 1, true);
        order.returned().push(lent);
        end_turn(&mut order, &mut kernel, true);
        assert_eq!(kernel.take(), Some(lent));
    }

    #[test]
    fn buffers_taken_out_of_order_turn_the_reordering_off_and_lose_none() {
        let mut order = Order::new(4);
        let mut kernel = Kernel::new(&order);
        // A kernel that took the second posted buffer before the first.
        kernel.entries.swap(0, 1);
        let id = kernel.take().expect("posted");
        assert_eq!(id, 1);
        order.handed_out(id);
        order.returned().push(id);
        end_turn(&mut order, &mut kernel, true);
        assert!(!order.reorder);
        assert_eq!(kernel.posted(), [0, 2, 3, 1], "appended, nothing rewritten");
        assert_each_buffer_posted_once(&kernel, &[], 4);
    }

    #[test]
    fn every_buffer_stays_posted_once_through_bursts_loans_and_dry_turns() {
        let count = 16;
        let mut order = Order::new(count);
        let mut kernel = Kernel::new(&order);
        let mut out: Vec<u16> = Vec::new();
        let mut state = 0x2545_f491_u32;
        let mut next = |limit: u32| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state % limit
        };
        for round in 0..5_000 {
            let wanted = [0, 1, 2, 3, 40][next(5) as usize];
            for _ in 0..wanted {
                // A receive finding none posted takes nothing: the dry case.
                let Some(id) = kernel.take() else { break };
                order.handed_out(id);
                out.push(id);
            }
            // Some buffers stay lent for a few turns; the rest come back now.
            let keep = next(3) as usize;
            let back: Vec<u16> = out.drain(keep.min(out.len())..).collect();
            order.returned().extend(&back);
            let settled = round % 7 != 0;
            end_turn(&mut order, &mut kernel, settled);
            assert_each_buffer_posted_once(&kernel, &out, count);
            let distinct: BTreeSet<u16> = kernel.posted().into_iter().collect();
            assert_eq!(distinct.len(), kernel.posted().len());
            if settled {
                assert_eq!(order.head(), kernel.head, "round {round}");
            }
        }
        assert!(order.reorder);
    }
}
