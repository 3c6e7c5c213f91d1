//! When each shard last went round its loop, readable from any thread: a shard that stops
//! turning (a handler stuck in a loop, a blocked call) shows as stalled, so liveness checks
//! (`/healthz`, systemd's watchdog) see it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Every shard's last turn. Cheap to clone; each shard writes only its own entry, once a
/// turn (a relaxed store), and turns at least once a timer tick even when idle.
#[derive(Clone)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds from `epoch` to each shard's last turn.
    last_turn: Arc<[AtomicU64]>,
}

impl Health {
    pub(crate) fn new(shards: usize, epoch: Instant) -> Self {
        Self {
            epoch,
            last_turn: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Shard `shard` is turning at `now`.
    pub(crate) fn beat(&self, shard: usize, now: Instant) {
        if let Some(last) = self.last_turn.get(shard) {
            let millis = now.saturating_duration_since(self.epoch).as_millis();
            last.store(u64::try_from(millis).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// The shards that have not turned within `within` of now.
    pub fn stalled(&self, within: Duration) -> Vec<usize> {
        let now = Instant::now().saturating_duration_since(self.epoch);
        self.last_turn
            .iter()
            .enumerate()
            .filter(|(_, last)| {
                let last = Duration::from_millis(last.load(Ordering::Relaxed));
                now.saturating_sub(last) > within
            })
            .map(|(shard, _)| shard)
            .collect()
    }

    pub fn shards(&self) -> usize {
        self.last_turn.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_that_stops_turning_shows_as_stalled() {
        let epoch = Instant::now();
        let health = Health::new(2, epoch);
        let now = Instant::now();
        health.beat(0, now);
        health.beat(1, now);
        assert!(health.stalled(Duration::from_secs(60)).is_empty());
        // Shard 1 last turned "long ago": at the epoch, an hour before a beat of shard 0.
        let later = now + Duration::from_secs(3600);
        health.beat(0, later);
        health.last_turn[1].store(0, Ordering::Relaxed);
        let stalled = health.stalled(Duration::ZERO);
        assert!(stalled.contains(&1));
    }
}
