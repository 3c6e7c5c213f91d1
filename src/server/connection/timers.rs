//! A connection's deadlines, one per [`Timer`], on a clock the caller passes in.
//!
//! The connection decides what each deadline means; the runtime only sleeps until the earliest
//! ([`Timers::next`]) and calls back. Times are milliseconds on the shard's clock ([`Time`]), so
//! tests drive a connection through hours of virtual time without waiting.

use std::time::{Duration, Instant};

/// A point on a shard's clock: milliseconds since the clock's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    #[cfg(any(test, feature = "fuzzing"))]
    pub const ZERO: Time = Time(0);

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + after`, saturating: a deadline too far away never fires.
    pub fn after(self, after: Duration) -> Self {
        let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Converts between [`Instant`]s and a shard's [`Time`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    pub fn time(&self, at: Instant) -> Time {
        let millis = at.saturating_duration_since(self.epoch).as_millis();
        Time(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// Microseconds from the epoch to `at`, modulo 2^32 (71 minutes): enough to measure
    /// short intervals with a wrapping subtraction.
    pub fn micros(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch).as_micros() as u32
    }

    /// The instant of `time`, or `None` when it lies beyond what an [`Instant`] can hold.
    pub fn instant(&self, time: Time) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_millis(time.0))
    }
}

/// What a connection waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The HTTP request must be complete (slowloris defence): 408 when it fires.
    Handshake,
    /// Check for silence: ping the peer once it has been silent for the idle timeout.
    Idle,
    /// The peer must answer our ping with its pong: 1001 when it fires.
    Pong,
    /// The peer must answer our close frame: abort when it fires.
    Close,
    /// Bytes are queued: they must make progress within the idle timeout, or the peer is
    /// not reading and the connection ends.
    SendStall,
    /// Publishing was refused by a shard that is behind: check again whether reading may
    /// resume.
    Backlog,
    /// The server is draining: this connection's turn to be closed with 1001, spread over
    /// the drain window so that clients do not all reconnect at once.
    Drain,
}

impl Timer {
    pub const COUNT: usize = 7;
    /// In the order [`Timers::expired`] hands them out when several are due at once: the
    /// ones that end the connection first, so nothing is sent to a connection already ending.
    pub const ALL: [Timer; Self::COUNT] = [
        Timer::Close,
        Timer::Handshake,
        Timer::SendStall,
        Timer::Pong,
        Timer::Drain,
        Timer::Idle,
        Timer::Backlog,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Each timer's deadline, if set.
#[derive(Clone, Debug)]
pub struct Timers {
    at: [u64; Timer::COUNT],
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            at: [Self::UNSET; Timer::COUNT],
        }
    }
}

impl Timers {
    const UNSET: u64 = u64::MAX;

    pub fn set(&mut self, timer: Timer, at: Time) {
        // A deadline at the end of time is no deadline.
        self.at[timer.index()] = at.0.min(Self::UNSET - 1);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = Self::UNSET;
    }

    pub fn stop_all(&mut self) {
        self.at = [Self::UNSET; Timer::COUNT];
    }

    pub fn get(&self, timer: Timer) -> Option<Time> {
        let at = self.at[timer.index()];
        (at != Self::UNSET).then_some(Time(at))
    }

    pub fn is_set(&self, timer: Timer) -> bool {
        self.at[timer.index()] != Self::UNSET
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Time> {
        let at = *self.at.iter().min()?;
        (at != Self::UNSET).then_some(Time(at))
    }

    /// Stops and returns the first timer due at `now`, in [`Timer::ALL`] order.
    pub fn expired(&mut self, now: Time) -> Option<Timer> {
        let timer = Timer::ALL
            .into_iter()
            .find(|&timer| self.at[timer.index()] <= now.0)?;
        self.stop(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_deadline_leads_and_expired_timers_come_out_once() {
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::Idle, Time(500));
        timers.set(Timer::Close, Time(300));
        assert_eq!(timers.next(), Some(Time(300)));
        assert_eq!(timers.expired(Time(299)), None);
        assert_eq!(timers.expired(Time(600)), Some(Timer::Close));
        assert_eq!(timers.expired(Time(600)), Some(Timer::Idle));
        assert_eq!(timers.expired(Time(600)), None);
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn times_saturate_instead_of_overflowing() {
        let far = Time(u64::MAX - 1).after(Duration::from_secs(10));
        assert_eq!(far, Time(u64::MAX));
        let mut timers = Timers::default();
        timers.set(Timer::Idle, far);
        assert!(timers.is_set(Timer::Idle));
        assert_eq!(timers.expired(Time(u64::MAX - 2)), None);
        assert_eq!(Time(5).since(Time(9)), Duration::ZERO);
        let clock = Clock::new(Instant::now());
        let soon = clock.instant(Time(1_000)).expect("an instant");
        assert_eq!(clock.time(soon), Time(1_000));
    }
}
