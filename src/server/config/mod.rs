//! Server settings: every default in one place ([`defaults`]), checks that refuse a bad
//! configuration at startup, and the sizes and durations people type.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::proto::deflate::DeflateConfig;
use crate::runtime;

use super::admission::{Admission, AdmissionConfig};
use super::cluster::ClusterConfig;
pub use super::tls::{TlsError, TlsFiles, TlsKernelMode};
pub use units::{Size, Span, parse_duration, parse_size};

mod units;

/// The default of every setting; the command line and [`ServerConfig::default`] both read
/// them from here.
pub mod defaults {
    use std::time::Duration;

    pub const LISTEN: &str = "127.0.0.1:9001";
    pub const MAX_CONNECTIONS: usize = 100_000;
    pub const MAX_MESSAGE_SIZE: usize = crate::proto::session::DEFAULT_MAX_MESSAGE_SIZE;
    pub const MAX_HEADER_BYTES: usize = 8 << 10;
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const MAX_QUEUED_BYTES: usize = 4 << 20;
    pub const MAX_DELIVERY_LAG: Duration = Duration::from_secs(2);
    pub const MAX_INCOMPLETE_BYTES: usize = 256 << 20;
    pub const MAX_TOPIC_LEN: usize = 256;
    pub const MAX_TOPICS_PER_CONNECTION: usize = 64;
    pub const MAX_SHARD_BACKLOG: usize = 64 << 20;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    pub const DRAIN_DELAY: Duration = Duration::ZERO;
    pub const DRAIN_SPREAD: Duration = Duration::ZERO;
    pub const DEFLATE_MIN_SIZE: usize = 64;
    /// Admission: no per-address cap, no handshake rate, 10 handshakes at once when a
    /// rate is set, 30 s of clock skew allowed on a token's `exp` and `nbf`.
    pub const MAX_CONNECTIONS_PER_IP: usize = 0;
    pub const HANDSHAKE_RATE_PER_IP: f64 = 0.0;
    pub const HANDSHAKE_BURST_PER_IP: u32 = 10;
    pub const JWT_LEEWAY: Duration = Duration::from_secs(30);
}

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

/// Everything `ringws serve` and the library's server can be told. Start from
/// [`ServerConfig::default`] and change fields: new fields may be added in any release.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Addresses to accept plain connections on.
    pub listen: Vec<SocketAddr>,
    /// Addresses to accept TLS connections on (`wss://`, `https://`), with `tls`.
    pub tls_listen: Vec<SocketAddr>,
    /// The certificate and key of the TLS listeners.
    pub tls: Option<TlsFiles>,
    /// Whether TLS connections hand their records to the kernel after the handshake.
    pub tls_kernel: TlsKernelMode,
    /// Shard threads, one per core by default.
    pub shards: usize,
    /// Connections held at once across all shards (each shard holds its share).
    pub max_connections: usize,
    /// Largest message accepted, over all its fragments and after inflating; 1009 past it.
    pub max_message_size: usize,
    /// Largest HTTP request head; larger ones get 431.
    pub max_header_bytes: usize,
    /// A connection must finish its handshake within this time (slowloris defence).
    pub handshake_timeout: Duration,
    /// Silence after which the server pings; no pong within as much again closes with 1001.
    /// Also how long queued bytes may go without progress before the connection ends.
    /// Zero disables both.
    pub idle_timeout: Duration,
    /// How long the peer has to answer our close frame, and to read what is queued before
    /// the socket is closed: past it the connection is aborted.
    pub close_timeout: Duration,
    /// Origins allowed to connect; empty allows any. Requests without Origin (non-browser
    /// clients) are allowed either way.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks, in order of preference.
    pub subprotocols: Vec<String>,
    /// What one connection's send queue may cost (bytes plus per-entry overhead) before
    /// `backpressure` acts.
    pub max_queued_bytes: usize,
    pub backpressure: BackpressurePolicy,
    /// What a subscriber gets when published messages pile up past `max_queued_bytes`.
    pub slow_subscriber: SlowSubscriberPolicy,
    /// How far behind the newest message queued to a subscriber its oldest queued delivery
    /// may be before `slow_subscriber` acts on it: drop-oldest drops every delivery that
    /// old, close closes the subscriber. Bounds latency where `max_queued_bytes` bounds
    /// memory: an overloaded server sheds stale messages instead of queueing seconds of
    /// backlog. Zero turns it off; at most 30 minutes.
    pub max_delivery_lag: Duration,
    /// Memory one shard may hold in messages still arriving (fragments and partial frames,
    /// over all its connections); past it the connection holding the most is closed with
    /// 1009.
    pub max_incomplete_bytes: usize,
    /// Longest topic name, in bytes.
    pub max_topic_len: usize,
    /// Topics one connection may subscribe to at once.
    pub max_topics_per_connection: usize,
    /// What one shard's queue of messages from other shards and threads may hold, in bytes;
    /// a publish that finds it full is refused for that shard ([`PublishError`]) and a
    /// publishing connection stops being read until the queue has room again.
    ///
    /// [`PublishError`]: super::pubsub::PublishError
    pub max_shard_backlog: usize,
    /// Log every connection's open and close, and every refusal, at info level (at debug
    /// otherwise).
    pub log_connections: bool,
    /// Answer a plain GET of `/` with a live status page (it reads `/metrics`, so it needs
    /// `metrics` on).
    pub status_page: bool,
    /// Answer a plain GET of `/metrics` with the server's counters (Prometheus text format).
    pub metrics: bool,
    /// On SIGTERM (or [`Server::drain`](super::Server::drain)), how long `/readyz` answers
    /// 503 while connections are still accepted, so load balancers take the server out first.
    pub drain_delay: Duration,
    /// The window over which connections get their 1001 once accepting stops, so their
    /// clients do not all reconnect at once. Zero closes them all together.
    pub drain_spread: Duration,
    /// How long a graceful shutdown waits, after the last 1001 went out, for clients to answer.
    pub shutdown_grace: Duration,
    /// permessage-deflate; `None` turns compression off.
    pub deflate: Option<DeflateConfig>,
    /// Tokens, per-address bounds, proxies, who may publish, the publish API's key.
    pub admission: AdmissionConfig,
    /// Share topics with other nodes through a broker; `None`: this node alone.
    pub cluster: Option<ClusterConfig>,
    /// The I/O runtime's own knobs: ring size, receive buffers, listen backlog, linger, TCP
    /// user timeout and keepalive, mailbox batch. Its `listen`, `shards`,
    /// `max_connections_per_shard`, `shutdown_grace`, `drain_timeout` and `mailbox_bytes`
    /// are set from the fields above when the server starts.
    pub runtime: runtime::Config,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                defaults::LISTEN
                    .parse()
                    .expect("the default address parses"),
            ],
            tls_listen: Vec::new(),
            tls: None,
            tls_kernel: TlsKernelMode::Auto,
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            max_connections: defaults::MAX_CONNECTIONS,
            max_message_size: defaults::MAX_MESSAGE_SIZE,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            close_timeout: defaults::CLOSE_TIMEOUT,
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            max_queued_bytes: defaults::MAX_QUEUED_BYTES,
            backpressure: BackpressurePolicy::PauseReading,
            slow_subscriber: SlowSubscriberPolicy::DropOldest,
            max_delivery_lag: defaults::MAX_DELIVERY_LAG,
            max_incomplete_bytes: defaults::MAX_INCOMPLETE_BYTES,
            max_topic_len: defaults::MAX_TOPIC_LEN,
            max_topics_per_connection: defaults::MAX_TOPICS_PER_CONNECTION,
            max_shard_backlog: defaults::MAX_SHARD_BACKLOG,
            log_connections: false,
            status_page: true,
            metrics: true,
            drain_delay: defaults::DRAIN_DELAY,
            drain_spread: defaults::DRAIN_SPREAD,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            deflate: None,
            admission: AdmissionConfig::default(),
            cluster: None,
            runtime: runtime::Config::default(),
        }
    }
}

/// A setting the server refuses to start with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting, as the command line names it.
    pub setting: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The most shards the topic directory can index (one bit each).
pub const MAX_SHARDS: usize = 64;

/// Direct-descriptor slots each shard keeps beyond its share of `max_connections`, plus
/// an eighth of that share for an uneven spread: a client arriving when the server is full
/// is accepted and told so (503) instead of waiting in the backlog.
const FULL_SERVER_RESERVE: usize = 64;

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

    /// The runtime's settings for this server: its own knobs, with what the server decides.
    pub fn runtime_config(&self) -> runtime::Config {
        let mut config = self.runtime.clone();
        config.listen = self.listen.clone();
        // PROXY protocol listeners come after the plain ones: their index says which.
        config
            .listen
            .extend_from_slice(&self.admission.proxy_protocol_listen);
        config.tls_listen = self.tls_listen.clone();
        config.shards = self.shards;
        let share = self.max_connections.div_ceil(self.shards.max(1));
        config.max_connections_per_shard = share
            .saturating_add(share / 8)
            .saturating_add(FULL_SERVER_RESERVE);
        config.shutdown_grace = self.shutdown_grace.saturating_add(self.drain_spread);
        config.drain_timeout = self.close_timeout;
        config.mailbox_bytes = self.max_shard_backlog;
        config
    }

    /// Checks every setting; the server refuses to start with the first one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |setting, problem: String| Err(ConfigError { setting, problem });
        if self.listen.is_empty() && self.tls_listen.is_empty() {
            return fail("listen", "no address to listen on".into());
        }
        match (&self.tls, self.tls_listen.is_empty()) {
            (None, false) => {
                return fail(
                    "tls-cert",
                    "--tls-listen needs a certificate and key (--tls-cert, --tls-key)".into(),
                );
            }
            (Some(_), true) => {
                return fail(
                    "tls-listen",
                    "a certificate and key are given but no --tls-listen address to use them on"
                        .into(),
                );
            }
            (Some(files), false) => {
                if files.cert.as_os_str().is_empty() {
                    return fail("tls-cert", "a key is given but no certificate".into());
                }
                if files.key.as_os_str().is_empty() {
                    return fail("tls-key", "a certificate is given but no key".into());
                }
            }
            (None, true) => {}
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return fail(
                "shards",
                format!(
                    "{} is outside 1..={MAX_SHARDS} (the topic directory has one bit per shard)",
                    self.shards
                ),
            );
        }
        let positive = [
            ("max-connections", self.max_connections),
            ("max-message-size", self.max_message_size),
            ("max-header-bytes", self.max_header_bytes),
            ("max-queued", self.max_queued_bytes),
            ("max-incomplete", self.max_incomplete_bytes),
            ("max-topic-len", self.max_topic_len),
            ("max-topics-per-connection", self.max_topics_per_connection),
            ("max-shard-backlog", self.max_shard_backlog),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return fail(setting, "must be greater than zero".into());
            }
        }
        // The largest value a frame can carry; beyond it the setting means nothing.
        if self.max_message_size as u64 > i64::MAX as u64 {
            return fail("max-message-size", "larger than a frame can carry".into());
        }
        let now = Instant::now();
        let durations = [
            ("handshake-timeout", self.handshake_timeout),
            ("idle-timeout", self.idle_timeout),
            ("close-timeout", self.close_timeout),
            ("shutdown-grace", self.shutdown_grace),
            ("drain-delay", self.drain_delay),
            ("drain-spread", self.drain_spread),
        ];
        for (setting, value) in durations {
            if now.checked_add(value.saturating_mul(4)).is_none() {
                return fail(setting, format!("{value:?} is too long to keep time with"));
            }
        }
        if self.max_delivery_lag > super::pubsub::MAX_LAG {
            return fail(
                "max-delivery-lag",
                format!(
                    "{:?} is longer than the {:?} a delivery's stamp can measure",
                    self.max_delivery_lag,
                    super::pubsub::MAX_LAG
                ),
            );
        }
        for (setting, value) in [
            ("handshake-timeout", self.handshake_timeout),
            ("close-timeout", self.close_timeout),
        ] {
            if value.is_zero() {
                return fail(setting, "must be greater than zero".into());
            }
        }
        Admission::new(self)?;
        let mut runtime = self.runtime_config();
        // The server pairs TLS listeners with their certificate itself (above); the runtime's
        // acceptor is made from it at start.
        runtime.tls_listen.clear();
        runtime.validate().map_err(|err| ConfigError {
            setting: "runtime",
            problem: err.to_string(),
        })?;
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(|problem| ConfigError {
                setting: "cluster",
                problem,
            })?;
            if now.checked_add(cluster.unsubscribe_delay).is_none() {
                return fail(
                    "cluster-unsubscribe-delay",
                    "too long to keep time with".into(),
                );
            }
        }
        if let Some(deflate) = &self.deflate {
            if !(9..=15).contains(&deflate.max_window_bits) {
                return fail(
                    "deflate",
                    format!("window bits {} outside 9..=15", deflate.max_window_bits),
                );
            }
            if !(8..=15).contains(&deflate.peer_max_window_bits) {
                return fail(
                    "deflate",
                    format!(
                        "peer window bits {} outside 8..=15",
                        deflate.peer_max_window_bits
                    ),
                );
            }
            if deflate.level > 9 {
                return fail("deflate", format!("level {} outside 0..=9", deflate.level));
            }
        }
        Ok(())
    }
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
        assert!(parse_size("17179869184GiB").is_err());
        for size in [0, 1, 1000, 64 << 10, 16 << 20, 3 << 30] {
            assert_eq!(Size(size).to_string().parse(), Ok(Size(size)));
        }
        assert_eq!(Size(16 << 20).to_string(), "16MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
        for millis in [0, 250, 1000, 90_000, 3_600_000] {
            let span = Span(Duration::from_millis(millis));
            assert_eq!(span.to_string().parse(), Ok(span));
        }
        assert_eq!(Span(Duration::from_secs(60)).to_string(), "1m");
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

    #[test]
    fn the_deflate_threshold_default_is_the_codec_default() {
        assert_eq!(
            defaults::DEFLATE_MIN_SIZE,
            DeflateConfig::default().min_size
        );
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
        let refused = |change: fn(&mut ServerConfig)| {
            let mut config = ServerConfig::default();
            change(&mut config);
            config.validate().expect_err("refused").setting
        };
        assert_eq!(refused(|c| c.shards = 65), "shards");
        assert_eq!(refused(|c| c.shards = 0), "shards");
        assert_eq!(refused(|c| c.max_queued_bytes = 0), "max-queued");
        assert_eq!(
            refused(|c| c.idle_timeout = Duration::from_secs(u64::MAX / 2)),
            "idle-timeout"
        );
        assert_eq!(
            refused(|c| c.close_timeout = Duration::ZERO),
            "close-timeout"
        );
        assert_eq!(refused(|c| c.listen.clear()), "listen");
        assert_eq!(
            refused(|c| c.max_delivery_lag = Duration::from_secs(3600)),
            "max-delivery-lag"
        );
    }
}
