//! The clock every stamp and deadline is read from.

use std::time::Instant;

/// Nanoseconds of the system's monotonic clock: the same on every thread and in every
/// process of the machine, so a stamp written by one worker process is read by another.
#[derive(Clone, Copy, Debug)]
pub struct Clock;

impl Clock {
    pub fn now_ns(self) -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes a timespec into a live local; CLOCK_MONOTONIC always
        // exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    /// The `Instant` at clock reading `ns` (for timers that take one).
    pub fn instant_at(self, ns: u64) -> Instant {
        let (now, now_ns) = (Instant::now(), self.now_ns());
        match ns.checked_sub(now_ns) {
            Some(ahead) => now + std::time::Duration::from_nanos(ahead),
            None => now
                .checked_sub(std::time::Duration::from_nanos(now_ns - ns))
                .unwrap_or(now),
        }
    }
}
