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

    /// Where a timer armed only now and then sits in [`Timers`]'s box; `None` for the two
    /// kept inline.
    fn rare_index(self) -> Option<usize> {
        match self {
            Timer::Idle | Timer::SendStall => None,
            Timer::Handshake => Some(0),
            Timer::Pong => Some(1),
            Timer::Close => Some(2),
            Timer::Backlog => Some(3),
            Timer::Drain => Some(4),
        }
    }
}

/// Each timer's deadline, if set.
///
/// An open connection keeps [`Timer::Idle`] armed, and [`Timer::SendStall`] whenever bytes
/// are queued, so those two are inline; the other five are armed for a handshake, a ping, a
/// close, a backlog or a drain, and live in a box that exists only while one of them is set:
/// 24 bytes in every connection instead of 56.
#[derive(Clone, Debug)]
pub struct Timers {
    idle: u64,
    send_stall: u64,
    rare: Option<Box<[u64; RARE]>>,
}

/// How many timers live in [`Timers::rare`].
const RARE: usize = Timer::COUNT - 2;

impl Default for Timers {
    fn default() -> Self {
        Self {
            idle: Self::UNSET,
            send_stall: Self::UNSET,
            rare: None,
        }
    }
}

impl Timers {
    const UNSET: u64 = u64::MAX;

    pub fn set(&mut self, timer: Timer, at: Time) {
        // A deadline at the end of time is no deadline.
        let at = at.0.min(Self::UNSET - 1);
        match timer.rare_index() {
            None => *self.inline_mut(timer) = at,
            Some(index) => {
                self.rare
                    .get_or_insert_with(|| Box::new([Self::UNSET; RARE]))[index] = at;
            }
        }
    }

    pub fn stop(&mut self, timer: Timer) {
        match timer.rare_index() {
            None => *self.inline_mut(timer) = Self::UNSET,
            Some(index) => {
                if let Some(rare) = self.rare.as_deref_mut() {
                    rare[index] = Self::UNSET;
                    if rare.iter().all(|&at| at == Self::UNSET) {
                        self.rare = None;
                    }
                }
            }
        }
    }

    pub fn stop_all(&mut self) {
        *self = Self::default();
    }

    pub fn get(&self, timer: Timer) -> Option<Time> {
        let at = self.at(timer);
        (at != Self::UNSET).then_some(Time(at))
    }

    pub fn is_set(&self, timer: Timer) -> bool {
        self.at(timer) != Self::UNSET
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Time> {
        let rare = self.rare.as_deref().map_or(Self::UNSET, |rare| {
            rare.iter().copied().min().unwrap_or(Self::UNSET)
        });
        let at = self.idle.min(self.send_stall).min(rare);
        (at != Self::UNSET).then_some(Time(at))
    }

    /// Stops and returns the first timer due at `now`, in [`Timer::ALL`] order.
    pub fn expired(&mut self, now: Time) -> Option<Timer> {
        let timer = Timer::ALL
            .into_iter()
            .find(|&timer| self.at(timer) <= now.0)?;
        self.stop(timer);
        Some(timer)
    }

    fn at(&self, timer: Timer) -> u64 {
        match timer {
            Timer::Idle => self.idle,
            Timer::SendStall => self.send_stall,
            _ => match (self.rare.as_deref(), timer.rare_index()) {
                (Some(rare), Some(index)) => rare[index],
                _ => Self::UNSET,
            },
        }
    }

    /// The field of an inline timer; `timer` is [`Timer::Idle`] or [`Timer::SendStall`].
    fn inline_mut(&mut self, timer: Timer) -> &mut u64 {
        match timer {
            Timer::SendStall => &mut self.send_stall,
            _ => &mut self.idle,
        }
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
    fn rare_timers_hold_a_box_only_while_one_is_set() {
        let mut timers = Timers::default();
        timers.set(Timer::Idle, Time(900));
        timers.set(Timer::SendStall, Time(800));
        assert!(
            timers.rare.is_none(),
            "idle and send-stall deadlines are inline"
        );
        for timer in Timer::ALL {
            timers.set(timer, Time(100 + timer as u64));
        }
        for timer in Timer::ALL {
            assert_eq!(
                timers.get(timer),
                Some(Time(100 + timer as u64)),
                "{timer:?}"
            );
        }
        assert_eq!(timers.next(), Some(Time(100)));
        for timer in [Timer::Handshake, Timer::Pong, Timer::Close, Timer::Backlog] {
            timers.stop(timer);
            assert!(timers.rare.is_some());
        }
        timers.stop(Timer::Drain);
        assert!(
            timers.rare.is_none(),
            "the box goes with the last rare timer"
        );
        assert_eq!(timers.next(), Some(Time(101)), "the idle deadline is kept");
        assert_eq!(timers.expired(Time(1_000)), Some(Timer::SendStall));
        assert_eq!(timers.expired(Time(1_000)), Some(Timer::Idle));
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
