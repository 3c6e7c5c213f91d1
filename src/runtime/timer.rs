//! A hashed timer wheel with coarse ticks: setting or moving a deadline costs a push, and
//! deadlines that moved are dropped lazily when their old bucket comes round.

use std::time::{Duration, Instant};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
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

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Handler,
        Kind::Drain,
        Kind::Linger,
        Kind::Cancel,
        Kind::AcceptRetry,
    ];
}

/// A scheduled deadline: 16 bytes, the due tick and the kind sharing one word, since a
/// large server keeps one or two of these per connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub index: u32,
    pub generation: u32,
    /// The due tick in the low [`DUE_BITS`], the kind above.
    due_and_kind: u64,
}

/// Bits of a due tick: 2^56 ticks of a millisecond are two million years.
const DUE_BITS: u32 = 56;
const DUE_MASK: u64 = (1 << DUE_BITS) - 1;

impl Entry {
    /// The tick it is due at ([`DUE_MASK`] for never).
    pub fn due(&self) -> u64 {
        self.due_and_kind & DUE_MASK
    }

    pub fn kind(&self) -> Kind {
        Kind::ALL[(self.due_and_kind >> DUE_BITS) as usize]
    }
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
        let due = self.due_tick(at);
        self.buckets[(due % Self::BUCKETS as u64) as usize].push(Entry {
            index,
            generation,
            due_and_kind: due | (kind as u64) << DUE_BITS,
        });
        due
    }

    /// The tick [`TimerWheel::schedule`] would make a deadline at `at` due at.
    pub fn due_tick(&self, at: Instant) -> u64 {
        at.checked_add(self.tick - Duration::from_nanos(1))
            .map_or(DUE_MASK, |rounded| self.tick_of(rounded).min(DUE_MASK))
            .max(self.current + 1)
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
                if entry.due() <= target && entry.due() != DUE_MASK {
                    fired.push(*entry);
                    false
                } else {
                    true
                }
            });
            // A burst (a connection storm) leaves a bucket far larger than it stays.
            if bucket.capacity() > 64 && bucket.len() < bucket.capacity() / 4 {
                bucket.shrink_to(bucket.len() * 2);
            }
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
    fn entries_keep_their_kind_and_due_tick() {
        let now = Instant::now();
        let mut wheel = TimerWheel::new(Duration::from_millis(1), now);
        for kind in Kind::ALL {
            let due = wheel.schedule(7, 9, kind, now + Duration::from_millis(3));
            let mut fired = Vec::new();
            wheel.advance(now + Duration::from_millis(10), &mut fired);
            let [entry] = fired[..] else {
                panic!("one entry fires, not {fired:?}");
            };
            assert_eq!((entry.index, entry.generation), (7, 9));
            assert_eq!((entry.kind(), entry.due()), (kind, due));
            wheel = TimerWheel::new(Duration::from_millis(1), now);
        }
        assert_eq!(std::mem::size_of::<Entry>(), 16);
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
        assert_eq!(wheel.schedule(1, 0, Kind::Handler, far), DUE_MASK);
        let mut fired = Vec::new();
        wheel.advance(now + Duration::from_secs(3600), &mut fired);
        assert!(fired.is_empty());
    }
}
