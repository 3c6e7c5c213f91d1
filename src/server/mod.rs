//! The WebSocket server: shards of connections on the io_uring runtime, the application API,
//! pub/sub, and the application of `ringws serve`.
//!
//! The rooms: `connection` is one connection's state machine (sans-io, driven through the
//! `transport` seam, with explicit timers), `handler` adapts it to the runtime, `ws` is what
//! an application callback can do, `frames` writes outgoing frames, `pubsub` routes
//! publishes, `metrics` counts, `config` holds every setting and its default.

pub mod app;
pub mod config;
mod connection;
pub mod echo;
mod events;
mod frames;
mod handler;
pub mod metrics;
pub mod notify;
pub mod pubsub;
pub mod serve_app;
mod shard_state;
mod transport;
mod ws;

/// One connection driven in memory (a recording transport, a virtual clock, a client-side
/// session reading the output), for fuzzing the connection state machine.
#[cfg(feature = "fuzzing")]
pub mod testing {
    pub use super::connection::harness::{Harness, Seen};
    pub use super::transport::Recording;
}

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use app::{Accept, App, Closed, Message, Refusal, Upgrade};
pub use config::{BackpressurePolicy, ConfigError, ServerConfig, SlowSubscriberPolicy};
pub use metrics::{Metrics, ShardMetrics};
pub use pubsub::{PublishError, Publisher, SubscribeError};
pub use ws::Ws;

/// A connection within its shard.
pub use crate::runtime::ConnId;

use crate::runtime::{self, Runtime};
use connection::Clock;
use handler::ShardHandler;
use metrics::Registry;
use pubsub::{Hub, ShardMessage, ShardTopics, TopicTable};

/// A running server.
pub struct Server {
    runtime: Runtime<ShardMessage>,
    publisher: Publisher,
    hub: Arc<Hub>,
    registry: Arc<Registry>,
}

impl Server {
    /// Checks the configuration, then starts the shards; `make_app` runs once on each
    /// shard's thread.
    pub fn start<A, F>(config: ServerConfig, make_app: F) -> io::Result<Self>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        config
            .validate()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let shards = config.shards;
        let runtime_config = config.runtime_config();
        let config = Arc::new(config);
        let hub = Arc::new(Hub::default());
        let registry = Arc::new(Registry::new(shards));
        let clock = Clock::new(Instant::now());
        let (shard_hub, shard_registry) = (hub.clone(), registry.clone());
        let runtime = runtime::start(runtime_config, move |ctx| {
            let table = TopicTable::new(config.max_topic_len, config.max_topics_per_connection);
            let topics = ShardTopics::new(
                ctx.index,
                shard_hub.clone(),
                shard_registry.clone(),
                ctx.remotes,
                table,
            );
            ShardHandler::new(make_app(ctx.index), config.clone(), clock, topics)
        })?;
        let publisher = Publisher::new(hub.clone(), registry.clone(), runtime.remotes().to_vec());
        Ok(Self {
            runtime,
            publisher,
            hub,
            registry,
        })
    }

    /// A handle that publishes to the server's topics from any thread.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The server's counters, summed over shards.
    pub fn metrics(&self) -> Metrics {
        self.registry.snapshot(self.hub.directory.len() as u64)
    }

    /// The addresses being listened on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.runtime.local_addrs()
    }

    /// Stops accepting, sends 1001 to every client, and waits (boundedly) for them to close.
    pub fn shutdown(&self) {
        self.runtime.shutdown();
    }

    /// Waits for every shard to end.
    pub fn join(self) -> io::Result<()> {
        self.runtime.join()
    }
}

/// `ringws serve`: pub/sub on `/pubsub/<topic>`, echo on every other path, until SIGINT or
/// SIGTERM.
pub fn serve(config: ServerConfig) -> io::Result<()> {
    // Shard threads inherit this mask: only `wait_for_signal` sees the signals.
    let signals = block_termination_signals()?;
    let app_config = config.clone();
    let server = Server::start(config, move |_| serve_app::ServeApp::new(&app_config))?;
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    for addr in &addrs {
        println!("ringws: listening on {addr}");
    }
    use std::io::Write as _;
    io::stdout().flush()?;
    let notifier = notify::Notifier::from_env().unwrap_or_else(|err| {
        tracing::warn!("NOTIFY_SOCKET is set but unusable: {err}");
        None
    });
    let tell = |state: &str| {
        if let Some(Err(err)) = notifier.as_ref().map(|n| n.notify(state)) {
            tracing::warn!("cannot notify the service manager: {err}");
        }
    };
    tell(&format!(
        "READY=1\nSTATUS=listening on {}",
        addrs.join(", ")
    ));
    let signal = wait_for_signal(&signals)?;
    tracing::info!("signal {signal}: closing connections");
    tell("STOPPING=1\nSTATUS=draining");
    server.shutdown();
    server.join()
}

fn block_termination_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset/sigaddset; pthread_sigmask
    // changes only the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> io::Result<i32> {
    let mut signal = 0;
    // SAFETY: sigwait reads the set and writes the signal number into a live i32.
    let rc = unsafe { libc::sigwait(set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}
