//! The settings of `ringws serve`: flags, the `--config` file, and how they combine.
//!
//! One struct, [`ServeArgs`], is both the command line (clap) and the file (serde), so a
//! setting is declared once: its flag, its key, its type and its default. A file is read as
//! a table, the flags given on the command line are laid over it key by key, and the result
//! is read into [`ServeArgs`] once, which refuses unknown keys and bad values by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};
use serde::{Deserialize, Serialize};

use ringws::proto::deflate::DeflateConfig;
use ringws::runtime::{Keepalive, defaults as runtime_defaults};
use ringws::server::admission::{IpNet, JwtConfig, JwtKey, PublishMode, Secret};
use ringws::server::cluster::{ClusterConfig, defaults as cluster_defaults};
use ringws::server::config::{
    BackpressurePolicy, ServerConfig, Size, SlowSubscriberPolicy, Span, TlsFiles, defaults,
};

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

impl ServeArgs {
    pub fn into_config(self) -> ServerConfig {
        let mut config = ServerConfig::default();
        if !self.listen.is_empty() || !self.tls_listen.is_empty() {
            config.listen = self.listen;
        }
        config.tls_listen = self.tls_listen;
        config.tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            // One without the other: an empty path, which the server refuses by name.
            (cert, key) => Some(TlsFiles {
                cert: cert.unwrap_or_default(),
                key: key.unwrap_or_default(),
            }),
        };
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        config.max_connections = self.max_connections;
        config.max_message_size = self.max_message_size.0;
        config.max_header_bytes = self.max_header_bytes.0;
        config.handshake_timeout = self.handshake_timeout.0;
        config.idle_timeout = self.idle_timeout.0;
        config.close_timeout = self.close_timeout.0;
        config.allowed_origins = self.allowed_origins;
        config.subprotocols = self.subprotocols;
        config.max_queued_bytes = self.max_queued.0;
        config.backpressure = match self.backpressure {
            Backpressure::Pause => BackpressurePolicy::PauseReading,
            Backpressure::Close => BackpressurePolicy::Close,
        };
        config.slow_subscriber = match self.slow_subscriber {
            SlowSubscriber::DropOldest => SlowSubscriberPolicy::DropOldest,
            SlowSubscriber::Close => SlowSubscriberPolicy::Close,
        };
        config.max_incomplete_bytes = self.max_incomplete.0;
        config.max_topic_len = self.max_topic_len;
        config.max_topics_per_connection = self.max_topics_per_connection;
        config.max_shard_backlog = self.max_shard_backlog.0;
        config.shutdown_grace = self.shutdown_grace.0;
        config.drain_delay = self.drain_delay.0;
        config.drain_spread = self.drain_spread.0;
        config.metrics = !self.no_metrics;
        config.status_page = !self.no_status_page;
        let runtime = &mut config.runtime;
        runtime.tcp_user_timeout = self.tcp_user_timeout.0;
        runtime.keepalive = (!self.keepalive.0.is_zero()).then(|| Keepalive {
            idle: self.keepalive.0,
            ..Keepalive::default()
        });
        runtime.linger = self.linger.0;
        runtime.backlog = self.backlog;
        runtime.ring_entries = self.ring_entries;
        runtime.recv_buffers = self.recv_buffers;
        runtime.recv_buffer_size = self.recv_buffer_size.0;
        config.log_connections = self.log_connections;
        let admission = &mut config.admission;
        admission.proxy_protocol_listen = self.listen_proxy;
        admission.trusted_proxies = self.trusted_proxies;
        admission.max_connections_per_ip = self.max_connections_per_ip;
        admission.handshake_rate_per_ip = self.handshake_rate_per_ip;
        admission.handshake_burst_per_ip = self.handshake_burst_per_ip;
        // `check_choices` made sure at most one key is given.
        let jwt_key = match (self.jwt_secret, self.jwt_secret_file, self.jwt_public_key) {
            (Some(secret), _, _) => Some(JwtKey::Secret(Secret::Value(secret))),
            (_, Some(file), _) => Some(JwtKey::Secret(Secret::File(file))),
            (_, _, Some(file)) => Some(JwtKey::PublicKey(file)),
            _ => None,
        };
        admission.jwt = jwt_key.map(|key| {
            let mut jwt = JwtConfig::new(key);
            jwt.cookie = self.jwt_cookie;
            jwt.audience = self.jwt_audience;
            jwt.issuer = self.jwt_issuer;
            jwt.leeway = self.jwt_leeway.0;
            jwt
        });
        admission.publish = match self.publish {
            Publish::Anyone => PublishMode::Anyone,
            Publish::Nobody => PublishMode::Nobody,
            Publish::Token => PublishMode::Token,
        };
        admission.publish_key = match (self.publish_key, self.publish_key_file) {
            (Some(key), _) => Some(Secret::Value(key)),
            (_, Some(file)) => Some(Secret::File(file)),
            _ => None,
        };
        config.cluster = (!self.cluster.is_empty()).then(|| {
            let mut cluster = ClusterConfig::new(self.cluster);
            cluster.prefix = self.cluster_prefix;
            cluster.buffer = self.cluster_buffer.0;
            cluster.unsubscribe_delay = self.cluster_unsubscribe_delay.0;
            cluster.credentials = self.cluster_credentials;
            cluster.tls_ca = self.cluster_tls_ca;
            cluster.tls_cert = self.cluster_tls_cert;
            cluster.tls_key = self.cluster_tls_key;
            cluster.ready_needs_link = self.cluster_ready_needs_link;
            cluster
        });
        config.deflate = match self.deflate {
            Deflate::Off => None,
            mode => Some(DeflateConfig {
                no_context_takeover: matches!(mode, Deflate::Shared),
                peer_no_context_takeover: matches!(mode, Deflate::Shared),
                min_size: self.deflate_min_size.0,
                ..DeflateConfig::default()
            }),
        };
        config
    }
}

impl ServeArgs {
    /// Settings that exclude each other: one token key, one publish key.
    fn check_choices(&self) -> Result<(), SettingsError> {
        let keys = [
            ("jwt-secret", self.jwt_secret.is_some()),
            ("jwt-secret-file", self.jwt_secret_file.is_some()),
            ("jwt-public-key", self.jwt_public_key.is_some()),
        ];
        let given: Vec<&str> = keys
            .iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect();
        if given.len() > 1 {
            return Err(SettingsError(format!(
                "{}: give one token key, not several",
                given.join(", ")
            )));
        }
        if self.publish_key.is_some() && self.publish_key_file.is_some() {
            return Err(SettingsError(
                "publish-key, publish-key-file: give one, not both".into(),
            ));
        }
        Ok(())
    }
}

impl Default for ServeArgs {
    /// The defaults of the flags: what a file that sets nothing means.
    fn default() -> Self {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let matches = command.get_matches_from(["serve"]);
        ServeArgs::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// Why the settings could not be read.
#[derive(Debug)]
pub struct SettingsError(pub String);

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The settings from `args` (parsed from `matches`) laid over the file `args.config`
/// names, if any: a flag given on the command line wins over the file's key.
pub fn resolve(args: ServeArgs, matches: &ArgMatches) -> Result<ServeArgs, SettingsError> {
    let Some(path) = args.config.clone() else {
        args.check_choices()?;
        return Ok(args);
    };
    let mut table = read_table(&path)?;
    let mut flags = toml::Table::try_from(&args)
        .map_err(|err| SettingsError(format!("the command line: {err}")))?;
    // A file key is its flag's long name; the command line and the environment win.
    for arg in ServeArgs::augment_args(clap::Command::new("serve")).get_arguments() {
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if let (true, Some(key)) = (given, arg.get_long())
            && let Some(value) = flags.remove(key)
        {
            table.insert(key.to_owned(), value);
        }
    }
    let mut settings = from_table(table, &path)?;
    settings.config = Some(path);
    settings.check_choices()?;
    Ok(settings)
}

/// Reads and checks a settings file on its own, as `ringws check-config` does.
pub fn check_file(path: &Path) -> Result<ServerConfig, SettingsError> {
    let settings = from_table(read_table(path)?, path)?;
    settings
        .check_choices()
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))?;
    let config = settings.into_config();
    config
        .validate()
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))?;
    Ok(config)
}

fn read_table(path: &Path) -> Result<toml::Table, SettingsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|err| SettingsError(format!("{}: {err}", path.display())))
}

fn from_table(table: toml::Table, path: &Path) -> Result<ServeArgs, SettingsError> {
    // Keys the file leaves out take the flags' defaults.
    let mut full = toml::Table::try_from(ServeArgs::default())
        .map_err(|err| SettingsError(format!("the defaults: {err}")))?;
    full.extend(table);
    full.try_into()
        .map_err(|err: toml::de::Error| SettingsError(format!("{}: {err}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `serve` flags as the command line would, then lays them over `--config`.
    fn settings(flags: &[&str]) -> Result<ServeArgs, SettingsError> {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied()))
            .map_err(|err| SettingsError(err.to_string()))?;
        let args = ServeArgs::from_arg_matches(&matches).expect("parsed");
        resolve(args, &matches)
    }

    fn file(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    /// A file in the temporary directory, removed on drop.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);

        impl TempFile {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let name = format!(
                    "ringws-settings-{}-{}.toml",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                let path = std::env::temp_dir().join(name);
                std::fs::write(&path, text).expect("write a settings file");
                Self(path)
            }

            pub fn path(&self) -> &str {
                self.0.to_str().expect("a UTF-8 path")
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    /// The command line and the library agree on every default.
    #[test]
    fn flags_default_to_the_library_defaults() {
        assert_eq!(ServeArgs::default().into_config(), ServerConfig::default());
        let config = settings(&[]).expect("no flags").into_config();
        assert_eq!(config, ServerConfig::default());
    }

    /// Every flag is a file key of the same name, and every key a flag.
    #[test]
    fn file_keys_are_the_flags_long_names() {
        let file = Some(PathBuf::from("f.pem"));
        let args = ServeArgs {
            shards: Some(1),
            jwt_secret: Some("s".into()),
            jwt_secret_file: Some("f".into()),
            jwt_public_key: Some("k".into()),
            jwt_cookie: Some("c".into()),
            jwt_audience: Some("a".into()),
            jwt_issuer: Some("i".into()),
            publish_key: Some("p".into()),
            publish_key_file: Some("f".into()),
            cluster_credentials: file.clone(),
            cluster_tls_ca: file.clone(),
            cluster_tls_cert: file.clone(),
            cluster_tls_key: file,
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..ServeArgs::default()
        };
        let keys: std::collections::BTreeSet<String> = toml::Table::try_from(&args)
            .expect("serializes")
            .keys()
            .cloned()
            .collect();
        let flags: std::collections::BTreeSet<String> =
            ServeArgs::augment_args(clap::Command::new("serve"))
                .get_arguments()
                .filter_map(|arg| arg.get_long().map(str::to_owned))
                .filter(|long| long != "config")
                .collect();
        assert_eq!(keys, flags);
    }

    #[test]
    fn the_sample_file_in_contrib_is_valid_and_says_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/ringws.toml");
        let config = check_file(&path).expect("contrib/ringws.toml");
        let defaults = ServerConfig::default();
        assert_eq!(config.listen, ["0.0.0.0:9001".parse().expect("an address")]);
        assert_eq!(
            (config.max_queued_bytes, config.idle_timeout, config.deflate),
            (
                defaults.max_queued_bytes,
                defaults.idle_timeout,
                defaults.deflate
            )
        );
    }

    #[test]
    fn cluster_flags_make_a_cluster_and_bad_ones_are_named() {
        let config = settings(&[
            "--cluster",
            "nats://127.0.0.1:4222",
            "--cluster",
            "nats://127.0.0.1:4223",
            "--cluster-unsubscribe-delay",
            "500ms",
        ])
        .expect("read")
        .into_config();
        let cluster = config.cluster.clone().expect("a cluster");
        assert_eq!(cluster.urls.len(), 2);
        assert_eq!(cluster.prefix, "ringws");
        assert_eq!(
            cluster.unsubscribe_delay,
            std::time::Duration::from_millis(500)
        );
        assert!(config.validate().is_ok());
        let mixed = settings(&["--cluster", "nats://a:4222", "--cluster", "redis://b:6379"])
            .expect("read")
            .into_config();
        let err = mixed.validate().expect_err("refused");
        assert!(err.to_string().starts_with("cluster: "), "{err}");
        let bad_prefix = file("cluster = [\"redis://127.0.0.1\"]\ncluster-prefix = \"a b\"\n");
        let err = check_file(&bad_prefix.0).expect_err("refused");
        assert!(err.0.contains("cluster"), "{err}");
    }

    #[test]
    fn a_bad_flag_value_names_its_flag() {
        let err = settings(&["--idle-timeout", "5 fortnights"])
            .err()
            .expect("refused");
        assert!(err.0.contains("--idle-timeout"), "{err}");
    }

    #[test]
    fn the_file_sets_and_flags_given_override_it() {
        let toml = file(
            "idle-timeout = \"90s\"\nmax-queued = \"8MiB\"\nlisten = [\"127.0.0.1:7000\", \"127.0.0.1:7001\"]\n\
             deflate = \"shared\"\nmax-connections = 5000\n",
        );
        let config = settings(&[
            "--config",
            toml.path(),
            "--max-queued",
            "1MiB",
            "--allowed-origin",
            "https://app.example",
        ])
        .expect("read")
        .into_config();
        assert_eq!(config.idle_timeout, std::time::Duration::from_secs(90));
        assert_eq!(config.max_queued_bytes, 1 << 20, "the flag wins");
        assert_eq!(config.max_connections, 5000);
        assert_eq!(config.listen.len(), 2);
        assert!(config.deflate.is_some());
        assert_eq!(config.allowed_origins, ["https://app.example"]);
        // What neither sets keeps its default.
        let defaults = ServerConfig::default();
        assert_eq!(config.handshake_timeout, defaults.handshake_timeout);
    }

    #[test]
    fn admission_settings_read_from_flags_and_file() {
        let secret = file("  s3cret\n");
        let toml = file(&format!(
            "trusted-proxy = [\"10.0.0.0/8\"]\nmax-connections-per-ip = 5\n\
             handshake-rate-per-ip = 2\njwt-secret-file = \"{}\"\njwt-cookie = \"session\"\n\
             publish = \"token\"\n",
            secret.path()
        ));
        let config = settings(&["--config", toml.path(), "--publish-key", "k"])
            .expect("read")
            .into_config();
        let admission = &config.admission;
        assert_eq!(
            admission.trusted_proxies,
            ["10.0.0.0/8".parse().expect("a block")]
        );
        assert_eq!(admission.max_connections_per_ip, 5);
        assert_eq!(admission.handshake_rate_per_ip, 2.0);
        assert_eq!(admission.publish, PublishMode::Token);
        assert_eq!(admission.publish_key, Some(Secret::Value("k".into())));
        let jwt = admission.jwt.as_ref().expect("tokens on");
        assert_eq!(jwt.cookie.as_deref(), Some("session"));
        assert_eq!(jwt.key, JwtKey::Secret(Secret::File(secret.0.clone())));
        assert_eq!(config.validate(), Ok(()));
        let both = settings(&["--jwt-secret", "a", "--jwt-public-key", "/k.pem"]);
        assert!(both.err().expect("refused").0.contains("one token key"));
        let bad = file("trusted-proxy = [\"10.0.0.0/99\"]\n");
        let err = settings(&["--config", bad.path()]).err().expect("refused");
        assert!(err.0.contains("10.0.0.0/99"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let unknown = file("idel-timeout = \"30s\"\n");
        let err = settings(&["--config", unknown.path()])
            .err()
            .expect("refused");
        assert!(err.0.contains("idel-timeout"), "{err}");
        let bad = file("max-queued = \"lots\"\n");
        let err = settings(&["--config", bad.path()]).err().expect("refused");
        assert!(
            err.0.contains("max-queued") && err.0.contains("lots"),
            "{err}"
        );
        let invalid = file("max-queued = 0\n");
        let err = check_file(&invalid.0).expect_err("refused");
        assert!(
            err.0.contains("max-queued: must be greater than zero"),
            "{err}"
        );
        let good = file("shards = 2\nbackpressure = \"close\"\n");
        assert!(check_file(&good.0).is_ok());
    }
}
