//! The settings of `ringws serve`: flags, the `--config` file, and how they combine.
//!
//! One struct, [`ServeArgs`], is both the command line (clap) and the file (serde), so a
//! setting is declared once: its flag, its key, its type and its default. A file is read as
//! a table, the flags given on the command line are laid over it key by key, and the result
//! is read into [`ServeArgs`] once, which refuses unknown keys and bad values by name.

mod convert;
mod file;
#[cfg(test)]
mod tests;

pub use file::{check_file, resolve};

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, FromArgMatches, ValueEnum};
use serde::{Deserialize, Serialize};

use ringws::runtime::defaults as runtime_defaults;
use ringws::server::admission::IpNet;
use ringws::server::cluster::defaults as cluster_defaults;
use ringws::server::config::{Size, Span, defaults};

/// Every setting of `ringws serve`: a flag each, and a key each in the `--config` file (the
/// flag's name without the dashes in front: `idle-timeout = "30s"`).
#[derive(Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// Read settings from this TOML file; flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable) [default: 127.0.0.1:9001 unless --tls-listen is
    /// given].
    #[arg(long = "listen", value_name = "HOST:PORT")]
    listen: Vec<SocketAddr>,
    /// Address to listen on with TLS, for wss:// and https:// (repeatable); needs
    /// --tls-cert and --tls-key.
    #[arg(long = "tls-listen", value_name = "HOST:PORT")]
    tls_listen: Vec<SocketAddr>,
    /// The TLS certificate chain, PEM, the server's certificate first. Read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key, PEM: PKCS#8, RSA or EC. Read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Kernel TLS: after each handshake the kernel encrypts and decrypts the records, where
    /// it offers it with key updates (auto), or never (off); `always` tries even where it
    /// seems not offered.
    #[arg(long, value_enum, default_value_t = TlsKernel::Auto)]
    tls_kernel: TlsKernel,
    /// Shard threads, each pinned to a core [default: one per core].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shards: Option<usize>,
    /// Connections held at once, over all shards.
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Largest message accepted (bytes, or with a unit: 64KiB, 16MiB); larger ones close with 1009.
    #[arg(long, default_value_t = Size(defaults::MAX_MESSAGE_SIZE))]
    max_message_size: Size,
    /// Largest HTTP request head; larger ones get 431.
    #[arg(long, default_value_t = Size(defaults::MAX_HEADER_BYTES))]
    max_header_bytes: Size,
    /// Ping after this much silence, close (1001) when no pong comes within as much again;
    /// also how long queued bytes may make no progress before the connection ends (0 disables).
    #[arg(long, default_value_t = Span(defaults::IDLE_TIMEOUT))]
    idle_timeout: Span,
    /// A client must finish its HTTP handshake within this time, else 408.
    #[arg(long, default_value_t = Span(defaults::HANDSHAKE_TIMEOUT))]
    handshake_timeout: Span,
    /// How long a client has to answer our close frame and read what is queued before the
    /// connection is aborted.
    #[arg(long, default_value_t = Span(defaults::CLOSE_TIMEOUT))]
    close_timeout: Span,
    /// Browser origin allowed to connect (repeatable); others get 403. Default: any.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    #[serde(rename = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Subprotocol the server speaks (repeatable), in order of preference.
    #[arg(long = "subprotocol", value_name = "NAME")]
    #[serde(rename = "subprotocol")]
    subprotocols: Vec<String>,
    /// What one client's send queue may cost before the backpressure policy acts.
    #[arg(long, default_value_t = Size(defaults::MAX_QUEUED_BYTES))]
    max_queued: Size,
    /// What a client whose queue passes --max-queued gets.
    #[arg(long, value_enum, default_value_t = Backpressure::Pause)]
    backpressure: Backpressure,
    /// What a pub/sub subscriber whose queue passes --max-queued gets.
    #[arg(long, value_enum, default_value_t = SlowSubscriber::DropOldest)]
    slow_subscriber: SlowSubscriber,
    /// How far a subscriber may fall behind the newest message queued to it before
    /// --slow-subscriber acts on the older ones (drop them, or close); 0 turns it off.
    #[arg(long, default_value_t = Span(defaults::MAX_DELIVERY_LAG))]
    max_delivery_lag: Span,
    /// Memory one shard may hold in messages still arriving; past it the client holding the
    /// most is closed with 1009.
    #[arg(long, default_value_t = Size(defaults::MAX_INCOMPLETE_BYTES))]
    max_incomplete: Size,
    /// Longest pub/sub topic name, in bytes; longer ones get 400.
    #[arg(long, default_value_t = defaults::MAX_TOPIC_LEN)]
    max_topic_len: usize,
    /// Topics one connection may subscribe to at once (library applications).
    #[arg(long, default_value_t = defaults::MAX_TOPICS_PER_CONNECTION)]
    max_topics_per_connection: usize,
    /// What one shard's queue of messages from other shards may hold; a publisher that
    /// finds it full stops being read until it has room.
    #[arg(long, default_value_t = Size(defaults::MAX_SHARD_BACKLOG))]
    max_shard_backlog: Size,
    /// On SIGTERM, how long /readyz answers 503 while connections are still accepted, so
    /// load balancers take the server out before accepting stops.
    #[arg(long, default_value_t = Span(defaults::DRAIN_DELAY))]
    drain_delay: Span,
    /// Once accepting stops, the window over which connections get their 1001, so their
    /// clients do not all reconnect at once (0: all together).
    #[arg(long, default_value_t = Span(defaults::DRAIN_SPREAD))]
    drain_spread: Span,
    /// How long a graceful shutdown waits, after the last 1001, for clients to answer.
    #[arg(long, default_value_t = Span(defaults::SHUTDOWN_GRACE))]
    shutdown_grace: Span,
    /// Log every connection's open and close, and every refused request, at info level.
    #[arg(long)]
    log_connections: bool,
    /// How log lines look on stderr: text for people, json (one object per line) for a log
    /// pipeline.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TCP_USER_TIMEOUT of accepted sockets: how long sent data may go unacknowledged (a
    /// vanished peer, a zero window) before the kernel drops the connection; 0 keeps the
    /// kernel's default (about 15 minutes).
    #[arg(long, default_value_t = Span(runtime_defaults::TCP_USER_TIMEOUT))]
    tcp_user_timeout: Span,
    /// SO_SNDBUF of accepted sockets: bytes the kernel holds for a connection beyond the
    /// server's own queue. 0 leaves the kernel's autotuning (up to 4 MiB by default), in
    /// which a slow subscriber's backlog is hidden from --max-queued and --max-delivery-lag.
    #[arg(long, default_value_t = Size(0))]
    send_buffer: Size,
    /// Idle time before TCP keepalive probes (then every 10 s, 6 tries); 0 turns keepalive off.
    #[arg(long, default_value_t = Span(runtime_defaults::KEEPALIVE_IDLE))]
    keepalive: Span,
    /// After the server closes, how long it waits for the client's FIN before resetting.
    #[arg(long, default_value_t = Span(runtime_defaults::LINGER))]
    linger: Span,
    /// Listen backlog of each shard's socket (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = runtime_defaults::BACKLOG)]
    backlog: i32,
    /// Submission queue entries of each shard's io_uring (the completion queue has four times
    /// as many).
    #[arg(long, default_value_t = runtime_defaults::RING_ENTRIES)]
    ring_entries: u32,
    /// Receive buffers per shard, a power of two (the kernel picks one for each read).
    #[arg(long, default_value_t = runtime_defaults::RECV_BUFFERS)]
    recv_buffers: u16,
    /// Size of each receive buffer.
    #[arg(long, default_value_t = Size(runtime_defaults::RECV_BUFFER_SIZE))]
    recv_buffer_size: Size,
    /// Do not answer GET / with the live status page.
    #[arg(long)]
    no_status_page: bool,
    /// Do not answer GET /metrics with the server's counters.
    #[arg(long)]
    no_metrics: bool,
    /// permessage-deflate: off; on with neither side keeping context between messages (one
    /// shared compressor per shard, no memory per idle connection); or on with both sides
    /// keeping context (better ratio, ~230-350 KiB per connection).
    #[arg(long, value_enum, default_value_t = Deflate::Off)]
    deflate: Deflate,
    /// With --deflate: messages shorter than this are sent uncompressed.
    #[arg(long, default_value_t = Size(defaults::DEFLATE_MIN_SIZE))]
    deflate_min_size: Size,
    /// Let the allocator back its heap with 2 MiB transparent huge pages (off by default:
    /// with them, memory grows in 2 MiB steps and an idle connection costs more).
    #[arg(long)]
    pub huge_pages: bool,
    /// Share topics with other nodes through this broker: nats://HOST:PORT (repeatable,
    /// the servers of one NATS cluster; tls:// for TLS) or redis://HOST:PORT (rediss:// for
    /// TLS; repeatable, the nodes of a Redis Cluster: sharded pub/sub). Credentials may ride
    /// in the URL: nats://user:pass@host, redis://:pass@host.
    #[arg(long = "cluster", value_name = "URL")]
    #[serde(rename = "cluster")]
    cluster: Vec<String>,
    /// The start of every broker subject (PREFIX.topic) or channel (PREFIX:topic).
    #[arg(long, default_value = cluster_defaults::PREFIX)]
    cluster_prefix: String,
    /// What may wait for a slow or absent broker; past it the oldest messages are dropped
    /// and counted (ringws_cluster_publish_failures_total).
    #[arg(long, default_value_t = Size(cluster_defaults::BUFFER))]
    cluster_buffer: Size,
    /// How long a topic whose last subscriber on this node left keeps its broker
    /// subscription, so that churn does not make it flap.
    #[arg(long, default_value_t = Span(cluster_defaults::UNSUBSCRIBE_DELAY))]
    cluster_unsubscribe_delay: Span,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_credentials: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the broker's TLS.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS with the broker, with --cluster-tls-key.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_tls_key: Option<PathBuf>,
    /// Answer /readyz with 503 while the link to the broker is down (by default it says so
    /// and stays 200: local fan-out still works).
    #[arg(long)]
    cluster_ready_needs_link: bool,
    /// Address to listen on for a load balancer that sends a PROXY protocol header (v1 or
    /// v2) before each connection's bytes; the header names the client (repeatable).
    #[arg(long = "listen-proxy", value_name = "HOST:PORT")]
    #[serde(rename = "listen-proxy")]
    listen_proxy: Vec<SocketAddr>,
    /// A proxy (an address, or a block such as 10.0.0.0/8) whose X-Forwarded-For names the
    /// client (repeatable); from anyone else the header is ignored.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    #[serde(rename = "trusted-proxy")]
    trusted_proxies: Vec<IpNet>,
    /// WebSocket connections one client address (an IPv6 /64) may hold at once; more get
    /// 429 (0: no cap).
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// WebSocket handshakes per second one client address may sustain; more get 429 with
    /// Retry-After (0: no limit).
    #[arg(long, default_value_t = defaults::HANDSHAKE_RATE_PER_IP)]
    handshake_rate_per_ip: f64,
    /// Handshakes one address may make at once before --handshake-rate-per-ip applies.
    #[arg(long, default_value_t = defaults::HANDSHAKE_BURST_PER_IP)]
    handshake_burst_per_ip: u32,
    /// Require a JSON Web Token on every upgrade, signed with this HS256 secret. Prefer
    /// --jwt-secret-file or the environment: ps shows a command line.
    #[arg(
        long,
        env = "RINGWS_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_secret: Option<String>,
    /// Like --jwt-secret, with the secret read from this file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_secret_file: Option<PathBuf>,
    /// Require a JSON Web Token on every upgrade, signed with the private half of this PEM
    /// public key (RSA: RS256...; EC: ES256, ES384; Ed25519: EdDSA).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_public_key: Option<PathBuf>,
    /// A cookie that may carry the token (browsers cannot set headers on a WebSocket; the
    /// Authorization header and the `token` query parameter are always read).
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_cookie: Option<String>,
    /// When set, a token's `aud` claim must name it.
    #[arg(long, value_name = "AUDIENCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_audience: Option<String>,
    /// When set, a token's `iss` claim must be it.
    #[arg(long, value_name = "ISSUER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_issuer: Option<String>,
    /// Clock skew allowed on a token's `exp` and `nbf`.
    #[arg(long, default_value_t = Span(defaults::JWT_LEEWAY))]
    jwt_leeway: Span,
    /// Who may publish from a WebSocket on /pubsub/<topic>: anyone, nobody (subscribe-only
    /// clients; a message closes with 1008), or token (the token's `publish` claim decides).
    #[arg(long, value_enum, default_value_t = Publish::Anyone)]
    publish: Publish,
    /// Turn on the publish API (POST /publish/<topic>, POST /publish) with this key, sent as
    /// Authorization: Bearer KEY. Prefer --publish-key-file or the environment.
    #[arg(
        long,
        env = "RINGWS_PUBLISH_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_key: Option<String>,
    /// Like --publish-key, with the key read from this file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Publish {
    /// Every subscriber may publish to its topic.
    Anyone,
    /// Clients only subscribe; backends publish through the publish API.
    Nobody,
    /// The token's `publish` claim decides.
    Token,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum TlsKernel {
    /// Where the kernel offers kernel TLS with key updates (Linux 6.14); a connection it
    /// cannot carry stays in user space.
    Auto,
    /// Never: records are encrypted in user space.
    Off,
    /// On every connection, even where the startup probe found none (each falls back).
    Always,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Backpressure {
    /// Stop reading from the client until its queue drains.
    Pause,
    /// Close the client with 1008.
    Close,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SlowSubscriber {
    /// Drop its oldest queued pub/sub messages, counted in ringws_pubsub_dropped_total.
    DropOldest,
    /// Close it with 1008.
    Close,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Deflate {
    Off,
    /// No context takeover either way: nothing kept per idle connection.
    Shared,
    /// Context kept both ways: better ratio, a compressor (190-310 KiB) and an inflater
    /// (~37 KiB) per connection.
    Dedicated,
}

impl Default for ServeArgs {
    /// The defaults of the flags: what a file that sets nothing means.
    fn default() -> Self {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let matches = command.get_matches_from(["serve"]);
        ServeArgs::from_arg_matches(&matches).expect("the defaults parse")
    }
}
