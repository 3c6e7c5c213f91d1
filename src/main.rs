//! The `ringws` command: `ringws serve` runs the WebSocket server.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mimalloc::MiMalloc;

use ringws::proto::deflate::DeflateConfig;
use ringws::server::config::{
    BackpressurePolicy, ServerConfig, Size, SlowSubscriberPolicy, Span, defaults,
};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringws",
    version,
    about = "A thread-per-core io_uring WebSocket server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the WebSocket server: pub/sub on /pubsub/<topic>, echo on every other path.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (repeatable).
    #[arg(long = "listen", value_name = "HOST:PORT", default_value = defaults::LISTEN)]
    listen: Vec<SocketAddr>,
    /// Shard threads, each pinned to a core [default: one per core].
    #[arg(long)]
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
    allowed_origins: Vec<String>,
    /// Subprotocol the server speaks (repeatable), in order of preference.
    #[arg(long = "subprotocol", value_name = "NAME")]
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
    /// How long a graceful shutdown waits for clients to answer the 1001 close.
    #[arg(long, default_value_t = Span(defaults::SHUTDOWN_GRACE))]
    shutdown_grace: Span,
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
    huge_pages: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backpressure {
    /// Stop reading from the client until its queue drains.
    Pause,
    /// Close the client with 1008.
    Close,
}

#[derive(Clone, Copy, ValueEnum)]
enum SlowSubscriber {
    /// Drop its oldest queued pub/sub messages, counted in ringws_pubsub_dropped_total.
    DropOldest,
    /// Close it with 1008.
    Close,
}

#[derive(Clone, Copy, ValueEnum)]
enum Deflate {
    Off,
    /// No context takeover either way: nothing kept per idle connection.
    Shared,
    /// Context kept both ways: better ratio, a compressor (190-310 KiB) and an inflater
    /// (~37 KiB) per connection.
    Dedicated,
}

impl ServeArgs {
    fn into_config(self) -> ServerConfig {
        let mut config = ServerConfig::default();
        config.listen = self.listen;
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
        config.metrics = !self.no_metrics;
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGWS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            if !args.huge_pages {
                disable_transparent_huge_pages();
            }
            serve(args)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    match ringws::server::serve(args.into_config()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringws serve: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps this process's memory off transparent huge pages. mimalloc asks for them where the
/// host allows (`madvise` mode), and then every heap growth is a 2 MiB page: an idle
/// connection measured 1.3-1.7 KiB with them and under 1 KiB without (docs/benchmarks.md).
/// The flag applies to mappings made before this call too.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and changes only this process's
    // memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "cannot turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line and the library agree on every default.
    #[test]
    fn flags_default_to_the_library_defaults() {
        let cli = Cli::try_parse_from(["ringws", "serve"]).expect("parses");
        let Command::Serve(args) = cli.command;
        assert_eq!(args.into_config(), ServerConfig::default());
    }

    #[test]
    fn a_bad_value_names_its_flag() {
        let err = Cli::try_parse_from(["ringws", "serve", "--idle-timeout", "5 fortnights"])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("--idle-timeout"), "{err}");
    }
}
