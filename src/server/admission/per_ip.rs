//! Per-address bounds shared by every shard: WebSocket connections held at once, and a
//! token bucket of handshakes. A client's connections land on any shard, so the table is
//! shared; it is sharded by address, each part behind its own lock, and touched only when a
//! handshake completes and when a counted connection closes, never while messages flow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::super::connection::Time;

/// Locks the table is split over, so shards handshaking at once rarely wait for each other.
const PARTS: usize = 64;
/// Entries a part holds before it first looks for ones it can forget.
const SWEEP_FLOOR: usize = 256;

/// Why a handshake was turned away.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Limited {
    /// The address holds its cap of connections.
    Connections { max: usize },
    /// The address used up its handshakes for now; the next is due in this many seconds.
    Rate { retry_after_secs: u64 },
}

/// The bounds one address is held to; zero turns a bound off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bounds {
    pub max_connections: usize,
    /// Handshakes per second, sustained.
    pub rate: f64,
    /// Handshakes allowed at once before the rate applies.
    pub burst: u32,
}

impl Bounds {
    pub fn any(&self) -> bool {
        self.max_connections > 0 || self.rate > 0.0
    }
}

pub(crate) struct PerIp {
    bounds: Bounds,
    parts: Box<[Mutex<Part>]>,
}

#[derive(Default)]
struct Part {
    entries: HashMap<IpAddr, Entry>,
    /// The size past which the next insert sweeps forgettable entries out.
    sweep_at: usize,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    connections: u32,
    /// Handshakes in the bucket, as of `refilled`.
    tokens: f64,
    refilled: Time,
}

impl PerIp {
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            parts: (0..PARTS).map(|_| Mutex::new(Part::default())).collect(),
        }
    }

    /// Counts a handshake from `ip` at `now` and, if the bounds allow it, a connection it
    /// will hold until [`PerIp::release`].
    pub fn admit(&self, ip: IpAddr, now: Time) -> Result<(), Limited> {
        if !self.bounds.any() {
            return Ok(());
        }
        let key = key(ip);
        let burst = f64::from(self.bounds.burst.max(1));
        let mut part = self.part(key);
        if !part.entries.contains_key(&key) {
            part.sweep(now, &self.bounds);
        }
        let entry = part.entries.entry(key).or_insert(Entry {
            connections: 0,
            tokens: burst,
            refilled: now,
        });
        if self.bounds.rate > 0.0 {
            entry.refill(now, self.bounds.rate, burst);
            if entry.tokens < 1.0 {
                let wait = (1.0 - entry.tokens) / self.bounds.rate;
                return Err(Limited::Rate {
                    retry_after_secs: (wait.ceil() as u64).max(1),
                });
            }
            entry.tokens -= 1.0;
        }
        let max = self.bounds.max_connections;
        if max > 0 {
            if entry.connections as usize >= max {
                return Err(Limited::Connections { max });
            }
            entry.connections += 1;
        }
        Ok(())
    }

    /// A connection [`PerIp::admit`] counted has closed.
    pub fn release(&self, ip: IpAddr) {
        if self.bounds.max_connections == 0 {
            return;
        }
        let key = key(ip);
        let mut part = self.part(key);
        let Some(entry) = part.entries.get_mut(&key) else {
            return;
        };
        entry.connections = entry.connections.saturating_sub(1);
        if entry.connections == 0 && self.bounds.rate == 0.0 {
            part.entries.remove(&key);
        }
    }

    /// Addresses the table holds now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.parts.iter().map(|p| lock(p).entries.len()).sum()
    }

    fn part(&self, key: IpAddr) -> std::sync::MutexGuard<'_, Part> {
        use std::hash::{Hash, Hasher};
        let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
        key.hash(&mut hasher);
        lock(&self.parts[(hasher.finish() as usize) % PARTS])
    }
}

/// A part's lock, even if a thread panicked holding it (the process ends then anyway).
fn lock(part: &Mutex<Part>) -> std::sync::MutexGuard<'_, Part> {
    part.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// FNV-1a: picks a part from an address; no need to resist collisions here.
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Part {
    /// Forgets addresses that hold no connection and whose bucket is full again: they are
    /// as good as new. Runs when the part has doubled since the last sweep, so its cost is
    /// spread over the inserts that grew it.
    fn sweep(&mut self, now: Time, bounds: &Bounds) {
        if self.entries.len() < self.sweep_at.max(SWEEP_FLOOR) {
            return;
        }
        let burst = f64::from(bounds.burst.max(1));
        self.entries.retain(|_, entry| {
            entry.refill(now, bounds.rate, burst);
            entry.connections > 0 || (bounds.rate > 0.0 && entry.tokens < burst)
        });
        self.sweep_at = self.entries.len() * 2;
    }
}

impl Entry {
    fn refill(&mut self, now: Time, rate: f64, burst: f64) {
        let elapsed = now.as_millis().saturating_sub(self.refilled.as_millis()) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
    }
}

/// The key an address is counted under: IPv4 as it is, IPv6 by its /64 (one host's usual
/// allocation, which it can fill with addresses at will).
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(millis: u64) -> Time {
        Time::ZERO.after(Duration::from_millis(millis))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn connections_are_capped_per_address_and_released() {
        let table = PerIp::new(Bounds {
            max_connections: 2,
            rate: 0.0,
            burst: 0,
        });
        let (a, b) = (ip("127.0.0.2"), ip("127.0.0.3"));
        assert_eq!(table.admit(a, at(0)), Ok(()));
        assert_eq!(table.admit(a, at(0)), Ok(()));
        assert_eq!(table.admit(a, at(0)), Err(Limited::Connections { max: 2 }));
        assert_eq!(
            table.admit(b, at(0)),
            Ok(()),
            "another address has its own cap"
        );
        table.release(a);
        assert_eq!(table.admit(a, at(0)), Ok(()));
        for _ in 0..3 {
            table.release(a);
        }
        table.release(b);
        assert_eq!(table.len(), 0, "addresses with nothing held are forgotten");
    }

    #[test]
    fn handshakes_refill_at_the_rate_up_to_the_burst() {
        let table = PerIp::new(Bounds {
            max_connections: 0,
            rate: 2.0,
            burst: 3,
        });
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(table.admit(a, at(0)), Ok(()));
        }
        assert_eq!(
            table.admit(a, at(0)),
            Err(Limited::Rate {
                retry_after_secs: 1
            })
        );
        assert_eq!(
            table.admit(a, at(499)),
            Err(Limited::Rate {
                retry_after_secs: 1
            })
        );
        assert_eq!(
            table.admit(a, at(500)),
            Ok(()),
            "one more every half second"
        );
        assert!(table.admit(a, at(600)).is_err());
        // A long pause refills the bucket only up to the burst.
        for _ in 0..3 {
            assert_eq!(table.admit(a, at(60_000)), Ok(()));
        }
        assert!(table.admit(a, at(60_000)).is_err());
        assert_eq!(table.admit(ip("10.0.0.2"), at(60_000)), Ok(()));
    }

    #[test]
    fn ipv6_hosts_are_counted_by_their_slash_64() {
        let table = PerIp::new(Bounds {
            max_connections: 1,
            rate: 0.0,
            burst: 0,
        });
        assert_eq!(table.admit(ip("2001:db8:1:2::1"), at(0)), Ok(()));
        assert!(table.admit(ip("2001:db8:1:2:ffff::9"), at(0)).is_err());
        assert_eq!(table.admit(ip("2001:db8:1:3::1"), at(0)), Ok(()));
        assert_eq!(key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn forgettable_addresses_are_swept_as_the_table_grows() {
        let table = PerIp::new(Bounds {
            max_connections: 0,
            rate: 1.0,
            burst: 1,
        });
        // Many addresses, one handshake each: their buckets refill within a second.
        for n in 0..20_000u32 {
            let addr = IpAddr::V4(n.into());
            assert_eq!(table.admit(addr, at(u64::from(n))), Ok(()));
        }
        assert!(table.len() < 20_000 / 2, "held {}", table.len());
    }
}
