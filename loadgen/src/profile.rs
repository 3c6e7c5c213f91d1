//! Network profiles for the link model: named presets, custom values, and a population mix.
//!
//! The mobile presets take their bandwidth and round trip from WebPageTest's connectivity
//! profiles (3G Slow, 3G Fast, 4G, LTE); `wifi`, `satellite` and `rural` are ours, with the
//! reasoning in docs/loadgen.md. Latency here is one way: half the round trip.

use std::time::Duration;

/// Why a `--profile` or `--profile-mix` cannot be used.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile `{0}`; known: {known}", known = names())]
    Unknown(String),
    #[error("`{part}` in `{spec}` is not key=value")]
    NotKeyValue { part: String, spec: String },
    #[error("unknown profile setting `{key}` in `{spec}`")]
    UnknownSetting { key: String, spec: String },
    #[error("stall-every must be above zero")]
    StallEveryZero,
    #[error("`{0}` in --profile-mix is not WEIGHT:PROFILE")]
    NotMixEntry(String),
    #[error("`{0}` is not a whole-number weight")]
    NotWeight(String),
    #[error("--profile-mix gives no profile a weight")]
    NoWeight,
    #[error("`{0}` is not a duration: use a number with ms or s")]
    NotDuration(String),
    #[error("`{0}` is not a bandwidth: use a number with kbit, mbit or gbit")]
    NotBandwidth(String),
    #[error("`{0}` is not a size: use a number with B, KiB or MiB")]
    NotSize(String),
}

/// How one simulated link behaves. Zero bandwidth means unlimited.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub one_way_latency: Duration,
    /// Mean extra delay on top of the latency, uniformly spread over [0, 2 × jitter).
    pub jitter: Duration,
    pub down_bits_per_sec: u64,
    pub up_bits_per_sec: u64,
    /// `SO_RCVBUF` for the client's socket: a small one makes the server meet TCP
    /// backpressure as soon as the client reads slowly.
    pub receive_buffer: Option<usize>,
    /// Mean time between stalls; `None` for a link that never stalls.
    pub stall_every: Option<Duration>,
    pub stall_for: Duration,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const KBIT: u64 = 1_000;
const MBIT: u64 = 1_000_000;

/// (name, round trip, jitter, down, up, receive buffer, stall every, stall for, what it is)
type Preset = (
    &'static str,
    Duration,
    Duration,
    u64,
    u64,
    Option<usize>,
    Option<Duration>,
    Duration,
    &'static str,
);

/// The named profiles, documented in docs/loadgen.md.
pub const PRESETS: &[Preset] = &[
    ("none", ms(0), ms(0), 0, 0, None, None, ms(0), "no shaping"),
    (
        "wifi",
        ms(10),
        ms(2),
        50 * MBIT,
        20 * MBIT,
        None,
        None,
        ms(0),
        "good home Wi-Fi",
    ),
    (
        "lte",
        ms(70),
        ms(5),
        12 * MBIT,
        12 * MBIT,
        Some(256 << 10),
        None,
        ms(0),
        "WebPageTest LTE",
    ),
    (
        "4g",
        ms(170),
        ms(10),
        9 * MBIT,
        9 * MBIT,
        Some(128 << 10),
        None,
        ms(0),
        "WebPageTest 4G",
    ),
    (
        "fast-3g",
        ms(150),
        ms(10),
        1_600 * KBIT,
        768 * KBIT,
        Some(64 << 10),
        None,
        ms(0),
        "WebPageTest 3G Fast",
    ),
    (
        "slow-3g",
        ms(400),
        ms(20),
        400 * KBIT,
        400 * KBIT,
        Some(32 << 10),
        None,
        ms(0),
        "WebPageTest 3G Slow",
    ),
    (
        "satellite",
        ms(600),
        ms(20),
        10 * MBIT,
        2 * MBIT,
        Some(256 << 10),
        None,
        ms(0),
        "geostationary hop",
    ),
    (
        "rural",
        ms(300),
        ms(100),
        MBIT,
        256 * KBIT,
        Some(16 << 10),
        Some(ms(20_000)),
        ms(1_500),
        "lossy rural mobile link",
    ),
];

impl Profile {
    /// A preset by name.
    pub fn named(name: &str) -> Option<Profile> {
        PRESETS.iter().find(|p| p.0 == name).map(
            |&(name, rtt, jitter, down, up, rcvbuf, every, length, _)| Profile {
                name: name.to_owned(),
                one_way_latency: rtt / 2,
                jitter,
                down_bits_per_sec: down,
                up_bits_per_sec: up,
                receive_buffer: rcvbuf,
                stall_every: every,
                stall_for: length,
            },
        )
    }

    /// `NAME` or `NAME,key=value,...`: a preset, with any of `rtt`, `jitter`, `down`, `up`,
    /// `rcvbuf`, `stall-every`, `stall-for` changed. `custom` starts from no shaping.
    pub fn parse(spec: &str) -> Result<Profile, ProfileError> {
        let mut parts = spec.split(',');
        let name = parts.next().unwrap_or_default().trim();
        let mut profile = match name {
            "custom" => Profile::named("none").map(|p| Profile {
                name: "custom".to_owned(),
                ..p
            }),
            _ => Profile::named(name),
        }
        .ok_or_else(|| ProfileError::Unknown(name.to_owned()))?;
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ProfileError::NotKeyValue {
                    part: part.to_owned(),
                    spec: spec.to_owned(),
                })?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "rtt" => profile.one_way_latency = duration(value)? / 2,
                "jitter" => profile.jitter = duration(value)?,
                "down" => profile.down_bits_per_sec = bits(value)?,
                "up" => profile.up_bits_per_sec = bits(value)?,
                "rcvbuf" => profile.receive_buffer = Some(bytes(value)?),
                "stall-every" => profile.stall_every = Some(duration(value)?),
                "stall-for" => profile.stall_for = duration(value)?,
                _ => {
                    return Err(ProfileError::UnknownSetting {
                        key: key.to_owned(),
                        spec: spec.to_owned(),
                    });
                }
            }
        }
        if profile.stall_every.is_some_and(|d| d.is_zero()) {
            return Err(ProfileError::StallEveryZero);
        }
        Ok(profile)
    }

    /// A link that changes nothing needs no model at all.
    pub fn is_ideal(&self) -> bool {
        self.one_way_latency.is_zero()
            && self.jitter.is_zero()
            && self.down_bits_per_sec == 0
            && self.up_bits_per_sec == 0
            && self.receive_buffer.is_none()
            && self.stall_every.is_none()
    }

    /// Bytes moved at once: about 10 ms of transfer, at least one small packet, at most 16 KiB.
    pub fn piece_bytes(&self, bits_per_sec: u64) -> usize {
        if bits_per_sec == 0 {
            return 16 << 10;
        }
        ((bits_per_sec / 8 / 100) as usize).clamp(536, 16 << 10)
    }
}

fn names() -> String {
    PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
}

/// A population: profiles with weights, assigned to connections in proportion.
#[derive(Clone, Debug)]
pub struct Mix {
    entries: Vec<(u32, Profile)>,
    total: u32,
    /// Coprime to `total`: consecutive ids land far apart in the weight range.
    stride: u32,
}

impl Mix {
    pub fn single(profile: Profile) -> Mix {
        Mix {
            entries: vec![(1, profile)],
            total: 1,
            stride: 1,
        }
    }

    /// `90:wifi,10:slow-3g`.
    pub fn parse(spec: &str) -> Result<Mix, ProfileError> {
        let mut entries = Vec::new();
        for part in spec.split(',') {
            let (weight, name) = part
                .split_once(':')
                .ok_or_else(|| ProfileError::NotMixEntry(part.to_owned()))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| ProfileError::NotWeight(weight.to_owned()))?;
            let profile = Profile::named(name.trim())
                .ok_or_else(|| ProfileError::Unknown(name.trim().to_owned()))?;
            if weight > 0 {
                entries.push((weight, profile));
            }
        }
        let common = entries.iter().fold(0, |g, e| gcd(g, e.0));
        if common == 0 {
            return Err(ProfileError::NoWeight);
        }
        for entry in &mut entries {
            entry.0 /= common;
        }
        let total: u32 = entries.iter().map(|e| e.0).sum();
        // Near the golden section of the range, so that any run of consecutive ids samples
        // every profile about in proportion.
        let mut stride = ((f64::from(total) * 0.618) as u32).max(1);
        while gcd(stride, total) != 1 {
            stride += 1;
        }
        Ok(Mix {
            entries,
            total,
            stride,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.entries.iter().map(|e| &e.1)
    }

    /// The profile index of connection `index`: every run of `total` consecutive ids (the
    /// weights' sum, reduced) holds each profile exactly its weight's worth, and shorter runs
    /// come close.
    pub fn assign(&self, index: u32) -> usize {
        let slot = (u64::from(index) * u64::from(self.stride) % u64::from(self.total)) as u32;
        let mut upto = 0;
        for (i, (weight, _)) in self.entries.iter().enumerate() {
            upto += weight;
            if slot < upto {
                return i;
            }
        }
        self.entries.len() - 1
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `100ms`, `1.5s`, `250us`; a bare number is seconds.
pub fn duration(value: &str) -> Result<Duration, ProfileError> {
    let bad = || ProfileError::NotDuration(value.to_owned());
    let (number, unit) = split_unit(value);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "us" | "µs" => n / 1e6,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

fn bits(value: &str) -> Result<u64, ProfileError> {
    let bad = || ProfileError::NotBandwidth(value.to_owned());
    let (number, unit) = split_unit(value);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "bit" | "" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad()),
    };
    Ok((n * scale) as u64)
}

fn bytes(value: &str) -> Result<usize, ProfileError> {
    let bad = || ProfileError::NotSize(value.to_owned());
    let (number, unit) = split_unit(value);
    let n: usize = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => return Err(bad()),
    };
    Ok(n * scale)
}

fn split_unit(value: &str) -> (&str, &str) {
    let at = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    (&value[..at], &value[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_overrides_parse() {
        let slow = Profile::parse("slow-3g").expect("a preset");
        assert_eq!(slow.one_way_latency, ms(200));
        assert_eq!(slow.down_bits_per_sec, 400_000);
        let custom = Profile::parse("custom,rtt=100ms,down=2mbit,rcvbuf=16KiB").expect("custom");
        assert_eq!(custom.one_way_latency, ms(50));
        assert_eq!(custom.down_bits_per_sec, 2_000_000);
        assert_eq!(custom.receive_buffer, Some(16 << 10));
        assert!(Profile::parse("custom").expect("custom").is_ideal());
        assert_eq!(
            Profile::parse("dial-up"),
            Err(ProfileError::Unknown("dial-up".to_owned()))
        );
        assert!(Profile::parse("wifi,rtt").is_err());
        assert_eq!(
            Profile::parse("custom,rtt=fast"),
            Err(ProfileError::NotDuration("fast".to_owned()))
        );
    }

    #[test]
    fn a_mix_assigns_exact_shares() {
        let mix = Mix::parse("90:wifi,10:slow-3g").expect("a mix");
        let slow = (0..1000).filter(|&i| mix.assign(i) == 1).count();
        assert_eq!(slow, 100);
        let even = Mix::parse("50:wifi,50:rural").expect("a mix");
        let rural = (0..20).filter(|&i| even.assign(i) == 1).count();
        assert_eq!(rural, 10);
        assert!(Mix::parse("0:wifi").is_err());
        assert!(Mix::parse("wifi").is_err());
    }
}
