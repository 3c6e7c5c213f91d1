//! A hashed timer wheel with coarse ticks: setting or moving a deadline costs a push, and
//! deadlines that moved are dropped lazily when their old bucket comes round.

use std::time::{Duration, Instant};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The handler's deadline for the connection.
    Handler,
    /// How long a closing connection may take to write out its queue.
    Drain,
    /// How long a closing connection waits for the peer's FIN after sending its own.
    Linger,
    /// How long cancelled requests may take before the socket is shut down under them.
    Cancel,
    /// Retry accepting after a resource error.
    AcceptRetry,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub index: u32,
    pub generation: u32,
    pub due: u64,
    pub kind: Kind,
}

pub(crate) struct TimerWheel {
    start: Instant,
    tick: Duration,
    /// The last tick processed.
    current: u64,
    buckets: Vec<Vec<Entry>>,
}

impl TimerWheel {
    const BUCKETS: usize = 512;

    pub fn new(tick: Duration, now: Instant) -> Self {
        Self {
            start: now,
            tick: tick.max(Duration::from_millis(1)),
            current: 0,
            buckets: (0..Self::BUCKETS).map(|_| Vec::new()).collect(),
        }
    }

    pub fn tick(&self) -> Duration {
        self.tick
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let ticks = at.saturating_duration_since(self.start).as_nanos() / self.tick.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Schedules an entry for `at`; returns its due tick (never the current one, so it fires
    /// on a later turn, rounded up to a whole tick). A time too far to represent never fires.
    pub fn schedule(&mut self, index: u32, generation: u32, kind: Kind, at: Instant) -> u64 {
        let due = at
            .checked_add(self.tick - Duration::from_nanos(1))
            .map_or(u64::MAX, |rounded| self.tick_of(rounded))
            .max(self.current + 1);
        self.buckets[(due % Self::BUCKETS as u64) as usize].push(Entry {
            index,
            generation,
            due,
            kind,
        });
        due
    }

    /// Moves time to `now`, handing over every entry that came due.
    pub fn advance(&mut self, now: Instant, fired: &mut Vec<Entry>) {
        let target = self.tick_of(now);
        // After a long stall, one pass over every bucket covers everything.
        let first = self.current + 1;
        let last = target.min(self.current + Self::BUCKETS as u64);
        for tick in first..=last {
            let bucket = &mut self.buckets[(tick % Self::BUCKETS as u64) as usize];
            bucket.retain(|entry| {
                if entry.due <= target {
                    fired.push(*entry);
                    false
                } else {
                    true
                }
            });
        }
        self.current = self.current.max(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_after_rounds() {
        let now = Instant::now();
        let mut wheel = TimerWheel::new(Duration::from_millis(10), now);
        wheel.schedule(1, 0, Kind::Handler, now + Duration::from_millis(25));
        wheel.schedule(2, 0, Kind::Handler, now + Duration::from_secs(10)); // beyond one round
        let mut fired = Vec::new();
        wheel.advance(now + Duration::from_millis(20), &mut fired);
        assert!(fired.is_empty());
        wheel.advance(now + Duration::from_millis(30), &mut fired);
        assert_eq!(fired.iter().map(|e| e.index).collect::<Vec<_>>(), [1]);
        fired.clear();
        wheel.advance(now + Duration::from_millis(9_990), &mut fired);
        assert!(
            fired.is_empty(),
            "a deadline a round away must not fire early"
        );
        wheel.advance(now + Duration::from_millis(10_010), &mut fired);
        assert_eq!(fired.iter().map(|e| e.index).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_long_stall_fires_everything_due() {
        let now = Instant::now();
        let mut wheel = TimerWheel::new(Duration::from_millis(10), now);
        for i in 0..100 {
            let at = now + Duration::from_millis(u64::from(i) * 100);
            wheel.schedule(i, 0, Kind::Handler, at);
        }
        let mut fired = Vec::new();
        wheel.advance(now + Duration::from_secs(60), &mut fired);
        assert_eq!(fired.len(), 100);
    }

    #[test]
    fn a_time_too_far_to_represent_never_fires() {
        let now = Instant::now();
        let mut wheel = TimerWheel::new(Duration::from_millis(10), now);
        let far = now + Duration::from_secs(u64::MAX / 4);
        assert_eq!(wheel.schedule(1, 0, Kind::Handler, far), u64::MAX);
        let mut fired = Vec::new();
        wheel.advance(now + Duration::from_secs(3600), &mut fired);
        assert!(fired.is_empty());
    }
}
