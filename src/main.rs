//! The `ringws` command: `ringws serve` runs the WebSocket server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mimalloc::MiMalloc;

use ringws::proto::deflate::DeflateConfig;
use ringws::server::config::{
    BackpressurePolicy, ServerConfig, SlowSubscriberPolicy, parse_duration, parse_size,
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
    #[arg(
        long = "listen",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9001"
    )]
    listen: Vec<SocketAddr>,
    /// Shard threads, each pinned to a core [default: one per core].
    #[arg(long)]
    shards: Option<usize>,
    /// Connections held at once, over all shards.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Largest message accepted (bytes, or with a unit: 64KiB, 16MiB); larger ones close with 1009.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    max_message_size: usize,
    /// Ping after this much silence, close after as much again (0 disables).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    idle_timeout: Duration,
    /// A client must finish its HTTP handshake within this time.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    handshake_timeout: Duration,
    /// Browser origin allowed to connect (repeatable); others get 403. Default: any.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Subprotocol the server speaks (repeatable), in order of preference.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Bytes queued for one slow client before the backpressure policy acts.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    max_queued: usize,
    /// What a client whose queue passes --max-queued gets.
    #[arg(long, value_enum, default_value_t = Backpressure::Pause)]
    backpressure: Backpressure,
    /// What a pub/sub subscriber whose queue passes --max-queued gets.
    #[arg(long, value_enum, default_value_t = SlowSubscriber::DropOldest)]
    slow_subscriber: SlowSubscriber,
    /// Do not answer GET /metrics with the server's counters.
    #[arg(long)]
    no_metrics: bool,
    /// permessage-deflate: off, or on with the server keeping no context between messages
    /// (one shared compressor per shard), or on with a compressor per connection.
    #[arg(long, value_enum, default_value_t = Deflate::Off)]
    deflate: Deflate,
    /// Let the allocator back its heap with 2 MiB transparent huge pages (off by default:
    /// with them, memory grows in 2 MiB steps and an idle connection costs more).
    #[arg(long)]
    huge_pages: bool,
    /// With --deflate: messages shorter than this are sent uncompressed.
    #[arg(long, value_parser = parse_size, default_value = "64")]
    deflate_min_size: usize,
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
    /// Compress without context takeover: small memory per connection.
    Shared,
    /// Keep compression context per connection: better ratio, 190-310 KiB per connection.
    Dedicated,
}

impl ServeArgs {
    fn into_config(self) -> ServerConfig {
        let defaults = ServerConfig::default();
        ServerConfig {
            listen: self.listen,
            shards: self.shards.unwrap_or(defaults.shards).max(1),
            max_connections: self.max_connections,
            max_message_size: self.max_message_size,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            allowed_origins: self.allowed_origins,
            subprotocols: self.subprotocols,
            max_queued_bytes: self.max_queued,
            backpressure: match self.backpressure {
                Backpressure::Pause => BackpressurePolicy::PauseReading,
                Backpressure::Close => BackpressurePolicy::Close,
            },
            slow_subscriber: match self.slow_subscriber {
                SlowSubscriber::DropOldest => SlowSubscriberPolicy::DropOldest,
                SlowSubscriber::Close => SlowSubscriberPolicy::Close,
            },
            metrics: !self.no_metrics,
            deflate: match self.deflate {
                Deflate::Off => None,
                mode => Some(DeflateConfig {
                    no_context_takeover: matches!(mode, Deflate::Shared),
                    min_size: self.deflate_min_size,
                    ..DeflateConfig::default()
                }),
            },
            ..defaults
        }
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
