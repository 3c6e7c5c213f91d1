//! How far a subscriber may fall behind: the bound on a queued delivery's age that turns an
//! overloaded server's backlog into dropped messages instead of seconds of latency.
//!
//! Deliveries wait in a subscriber's send queue stamped with their publish time, in
//! microseconds on the shard's clock (a `u32`, so it wraps every 71 minutes). When a new
//! message is queued, those published more than the bound before it are stale: the
//! subscriber is that far behind. Measuring against the newest message, not a wall clock,
//! makes the rule the same on every shard and in every test, and costs no clock read.
//! Once the oldest is stale, every delivery more than half the bound behind goes with it,
//! so the next deliveries need not drop (as the byte bound drops down to half itself).
//!
//! A shard can fall behind too: when publishes arrive faster than it can fan them out, a
//! message waits behind the fan-out of those read with it. Under drop-oldest, a message that
//! waited past the bound before its fan-out began is dropped whole ([`shed_before_fanout`]),
//! at the cost of one clock read instead of a queue operation per subscriber: an
//! overloaded shard spends its time on the messages it can still deliver in time.

use std::time::{Duration, Instant};

use super::super::config::SlowSubscriberPolicy;

/// The longest bound a stamp can measure: ages past half the stamp's range look negative.
pub(crate) const MAX_LAG: Duration = Duration::from_secs(30 * 60);

/// How far behind the newest message a queued delivery may be; none when zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LagBound {
    max_micros: u32,
}

impl LagBound {
    /// The bound for `max` (`None` for zero, which turns it off). `max` is at most
    /// [`MAX_LAG`], as the configuration checks; longer is taken as that.
    pub fn new(max: Duration) -> Option<Self> {
        if max.is_zero() {
            return None;
        }
        let max_micros = max.min(MAX_LAG).as_micros();
        Some(Self {
            max_micros: u32::try_from(max_micros).unwrap_or(u32::MAX),
        })
    }

    /// Whether a delivery stamped `queued` is stale once `newest` is queued behind it. A
    /// stamp after `newest` (messages from different shards cross on the way) is not.
    pub fn is_stale(self, newest: u32, queued: u32) -> bool {
        self.behind(newest, queued) > self.max_micros
    }

    /// Whether a delivery stamped `queued` is more than half the bound behind `newest`:
    /// what goes once the oldest is stale.
    pub fn is_past_half(self, newest: u32, queued: u32) -> bool {
        self.behind(newest, queued) > self.max_micros / 2
    }

    /// How far `queued` is behind `newest`, 0 when it is ahead.
    fn behind(self, newest: u32, queued: u32) -> u32 {
        let age = newest.wrapping_sub(queued);
        if age <= i32::MAX as u32 { age } else { 0 }
    }
}

/// Whether a shard drops a published message whole instead of fanning it out: under
/// drop-oldest with a bound, when it was published more than `max_lag` before `now`.
pub(crate) fn shed_before_fanout(
    policy: SlowSubscriberPolicy,
    max_lag: Duration,
    published_at: Instant,
    now: Instant,
) -> bool {
    policy == SlowSubscriberPolicy::DropOldest
        && !max_lag.is_zero()
        && now.saturating_duration_since(published_at) > max_lag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(ms: u64) -> LagBound {
        LagBound::new(Duration::from_millis(ms)).expect("a bound")
    }

    #[test]
    fn zero_turns_the_bound_off() {
        assert_eq!(LagBound::new(Duration::ZERO), None);
    }

    #[test]
    fn deliveries_older_than_the_bound_are_stale() {
        let b = bound(500);
        let newest = 2_000_000;
        assert!(b.is_stale(newest, 1_000_000), "a second behind");
        assert!(b.is_stale(newest, 1_499_999));
        assert!(!b.is_stale(newest, 1_500_000), "exactly at the bound stays");
        assert!(!b.is_stale(newest, newest));
    }

    #[test]
    fn half_the_bound_goes_once_the_oldest_is_stale() {
        let b = bound(500);
        assert!(b.is_past_half(1_000_000, 749_999));
        assert!(!b.is_past_half(1_000_000, 750_000));
        assert!(!b.is_past_half(1_000_000, 1_100_000), "ahead of the newest");
    }

    #[test]
    fn a_shard_sheds_what_waited_past_the_bound_under_drop_oldest_only() {
        use SlowSubscriberPolicy::{Close, DropOldest};
        let at = Instant::now();
        let later = |ms| at + Duration::from_millis(ms);
        let lag = Duration::from_millis(500);
        assert!(shed_before_fanout(DropOldest, lag, at, later(501)));
        assert!(!shed_before_fanout(DropOldest, lag, at, later(500)));
        assert!(!shed_before_fanout(
            DropOldest,
            Duration::ZERO,
            at,
            later(60_000)
        ));
        assert!(
            !shed_before_fanout(Close, lag, at, later(60_000)),
            "close acts on subscribers, never drops unseen"
        );
        assert!(
            !shed_before_fanout(DropOldest, lag, later(10), at),
            "a clock read early"
        );
    }

    #[test]
    fn a_delivery_newer_than_the_newest_is_not_stale() {
        // A message from another shard, published earlier, queued after a local one.
        assert!(!bound(500).is_stale(1_000_000, 1_200_000));
    }

    #[test]
    fn ages_are_measured_across_the_clock_wrapping() {
        let b = bound(500);
        let before_wrap = u32::MAX - 100_000;
        assert!(
            !b.is_stale(300_000, before_wrap),
            "400 ms behind, across the wrap"
        );
        assert!(
            b.is_stale(500_000, before_wrap),
            "600 ms behind, across the wrap"
        );
    }

    #[test]
    fn bounds_past_the_stamp_range_are_capped() {
        let b = LagBound::new(Duration::from_secs(24 * 3600)).expect("a bound");
        assert_eq!(b, LagBound::new(MAX_LAG).expect("a bound"));
        assert!(b.is_stale(u32::MAX / 2, 0));
    }
}
