//! Sizes and durations as people write them (`64KiB`, `30s`), in flags and files.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A byte size as people type it: `16777216`, `64KiB`, `16MiB`, `1GiB` (also `k`, `m`, `g`;
/// all binary units). Displays in the largest unit that divides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub usize);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (value, unit) = split_number(text, "size (try 16MiB)")?;
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
                ));
            }
        };
        usize::try_from(value)
            .ok()
            .and_then(|value| value.checked_mul(1 << shift))
            .map(Size)
            .ok_or_else(|| format!("size `{}` is too large", text.trim()))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if bytes != 0 && bytes.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", bytes >> shift);
            }
        }
        write!(f, "{bytes}")
    }
}

/// A duration as people type it: `30s`, `500ms`, `2m`, `1h`, or `0` to disable. Displays in
/// the largest unit that divides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (value, unit) = split_number(text, "duration (try 30s)")?;
        let seconds = |factor: u64| {
            value
                .checked_mul(factor)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("duration `{}` is too long", text.trim()))
        };
        Ok(Span(match unit {
            "ms" => Duration::from_millis(value),
            "" | "s" => seconds(1)?,
            "m" => seconds(60)?,
            "h" => seconds(3600)?,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` (use ms, s, m or h)"
                ));
            }
        }))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0");
        }
        for (factor, unit) in [(3_600_000, "h"), (60_000, "m"), (1_000, "s")] {
            if millis.is_multiple_of(factor) {
                return write!(f, "{}{unit}", millis / factor);
            }
        }
        write!(f, "{millis}ms")
    }
}

impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    /// From `"16MiB"` or a plain number of bytes.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HumanVisitor::<Size>::new("a size such as \"16MiB\""))
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    /// From `"30s"` or a plain number of seconds.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HumanVisitor::<Span>::new("a duration such as \"30s\""))
    }
}

/// Reads a [`Size`] or [`Span`] from its text, or from a plain number in its base unit.
struct HumanVisitor<T> {
    expecting: &'static str,
    kind: std::marker::PhantomData<T>,
}

impl<T> HumanVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            kind: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr<Err = String>> serde::de::Visitor<'_> for HumanVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<T, E> {
        self.visit_str(&value.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<T, E> {
        self.visit_str(&value.to_string())
    }
}

/// Splits `64KiB` into `64` and `KiB`.
fn split_number<'a>(text: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a {what}"))?;
    Ok((value, unit.trim()))
}

/// Parses a byte size: see [`Size`].
pub fn parse_size(text: &str) -> Result<usize, String> {
    text.parse::<Size>().map(|size| size.0)
}

/// Parses a duration: see [`Span`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<Span>().map(|span| span.0)
}
