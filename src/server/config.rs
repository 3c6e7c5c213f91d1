//! Server settings, their safe defaults, and parsing of the sizes and durations people type.

use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::deflate::DeflateConfig;
use crate::proto::session::DEFAULT_MAX_MESSAGE_SIZE;

/// What a connection whose send queue passes [`ServerConfig::max_queued_bytes`] gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Stop reading from it until its queue drains: a slow reader slows only itself.
    PauseReading,
    /// Close it with 1008 and a reason naming the cause.
    Close,
}

/// What a pub/sub subscriber whose send queue passes [`ServerConfig::max_queued_bytes`] gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowSubscriberPolicy {
    /// Drop its oldest queued pub/sub messages (not yet being written) and count them.
    DropOldest,
    /// Close it with 1008 and a reason naming the cause.
    Close,
}

/// Everything `ringws serve` and the library's server can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Shard threads, one per core by default.
    pub shards: usize,
    /// Connections held at once across all shards (each shard holds its share).
    pub max_connections: usize,
    pub max_message_size: usize,
    /// Largest HTTP request head; larger ones get 431.
    pub max_header_bytes: usize,
    /// A connection must finish its handshake within this time (slowloris defence).
    pub handshake_timeout: Duration,
    /// Silence after which the server pings; silence for as long again closes. Zero disables.
    pub idle_timeout: Duration,
    /// How long to wait for the peer's close frame after sending ours.
    pub close_timeout: Duration,
    /// Origins allowed to connect; empty allows any. Requests without Origin (non-browser
    /// clients) are allowed either way.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks, in order of preference.
    pub subprotocols: Vec<String>,
    /// Bytes queued for sending to one connection before `backpressure` acts.
    pub max_queued_bytes: usize,
    pub backpressure: BackpressurePolicy,
    /// What a subscriber gets when published messages pile up past `max_queued_bytes`.
    pub slow_subscriber: SlowSubscriberPolicy,
    /// Answer a plain GET of `/metrics` with the server's counters (Prometheus text format).
    pub metrics: bool,
    /// How long a graceful shutdown waits for clients to answer the 1001 close.
    pub shutdown_grace: Duration,
    /// permessage-deflate; `None` turns compression off.
    pub deflate: Option<DeflateConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 9001))],
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            max_connections: 100_000,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_header_bytes: 8 << 10,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            max_queued_bytes: 4 << 20,
            backpressure: BackpressurePolicy::PauseReading,
            slow_subscriber: SlowSubscriberPolicy::DropOldest,
            metrics: true,
            shutdown_grace: Duration::from_secs(5),
            deflate: None,
        }
    }
}

impl ServerConfig {
    /// Whether a browser page from `origin` may connect.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => {
                self.allowed_origins.is_empty()
                    || self
                        .allowed_origins
                        .iter()
                        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            }
        }
    }
}

/// Parses a byte size: `16777216`, `64KiB`, `16MiB`, `1GiB` (also `k`, `m`, `g`, binary units).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: usize = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 16MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
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
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// Parses a duration: `30s`, `500ms`, `2m`, `1h`, or `0` to disable.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 30s)"))?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16777216"), Ok(16 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn origins() {
        let mut config = ServerConfig::default();
        assert!(config.origin_allowed(Some("https://anywhere.example")));
        config.allowed_origins.push("https://app.example".into());
        assert!(config.origin_allowed(Some("https://APP.example")));
        assert!(!config.origin_allowed(Some("https://evil.example")));
        assert!(config.origin_allowed(None));
    }
}
