//! An open loop's schedule: message `n` is due at `start + n × period`, whether or not the
//! server kept up, so a stalled server shows up as latency instead of slowing the sender
//! (no coordinated omission).

/// Nanosecond clock readings throughout.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start_ns: u64,
    period_ns: u64,
    /// Messages handed out so far.
    scheduled: u64,
}

impl Schedule {
    /// `rate` messages a second, the first at `start_ns`.
    pub fn new(rate: f64, start_ns: u64) -> Schedule {
        Schedule {
            start_ns,
            period_ns: ((1e9 / rate) as u64).max(1),
            scheduled: 0,
        }
    }

    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// The messages due by `now_ns` and not handed out yet, at most `max`: after a stall
    /// they go at once, each stamped with the time it was due; what a full socket cannot
    /// take yet stays owed, as a count, not as bytes. (first index, count, when the first
    /// was due)
    pub fn take_due(&mut self, now_ns: u64, max: u64) -> Option<(u64, u64, u64)> {
        let elapsed = now_ns.checked_sub(self.start_ns)?;
        let due = elapsed / self.period_ns + 1;
        let first = self.scheduled;
        let count = due.saturating_sub(first).min(max);
        if count == 0 {
            return None;
        }
        self.scheduled = first + count;
        Some((first, count, self.start_ns + first * self.period_ns))
    }

    /// When the next message falls due.
    pub fn next_at(&self) -> u64 {
        self.start_ns + self.scheduled * self.period_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_message_once_at_its_time() {
        let mut schedule = Schedule::new(1000.0, 5_000_000);
        assert_eq!(schedule.take_due(4_999_999, 100), None);
        assert_eq!(schedule.take_due(5_000_000, 100), Some((0, 1, 5_000_000)));
        assert_eq!(schedule.take_due(5_500_000, 100), None);
        assert_eq!(schedule.next_at(), 6_000_000);
        // A stall: three periods later, three messages at once, stamped when they were due.
        assert_eq!(schedule.take_due(8_100_000, 100), Some((1, 3, 6_000_000)));
        assert_eq!(schedule.next_at(), 9_000_000);
        // A full socket takes two; the third stays owed, still stamped when it was due.
        assert_eq!(schedule.take_due(11_100_000, 2), Some((4, 2, 9_000_000)));
        assert_eq!(schedule.next_at(), 11_000_000, "the debt is due now");
        assert_eq!(schedule.take_due(11_100_000, 2), Some((6, 1, 11_000_000)));
    }
}
