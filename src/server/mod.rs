//! The WebSocket server: shards of connections on the io_uring runtime, the application API,
//! pub/sub, and the application of `ringws serve`.
//!
//! The rooms: `connection` is one connection's state machine (sans-io, driven through the
//! `transport` seam, with explicit timers), `handler` adapts it to the runtime, `ws` is what
//! an application callback can do, `frames` writes outgoing frames, `pubsub` routes
//! publishes, `metrics` counts, `config` holds every setting and its default.

pub mod admission;
pub mod app;
pub mod cluster;
pub mod config;
mod connection;
pub mod echo;
mod events;
mod frames;
mod handler;
pub mod metrics;
pub mod notify;
mod publish_api;
pub mod pubsub;
pub mod serve_app;
mod shard_state;
mod tls;
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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use app::{Accept, App, Closed, Message, Refusal, Upgrade};
pub use config::{
    BackpressurePolicy, ConfigError, ServerConfig, SlowSubscriberPolicy, TlsError, TlsFiles,
    TlsKernelMode,
};
pub use metrics::{Metrics, ShardMetrics};
pub use pubsub::{PublishError, Publisher, SubscribeError};
pub use ws::Ws;

/// A connection within its shard.
pub use crate::runtime::ConnId;

use crate::runtime::{self, Runtime};
use admission::Admission;
use connection::Clock;
use handler::ShardHandler;
use metrics::Registry;
use pubsub::{Hub, ShardMessage, ShardTopics, TopicTable};
use shard_state::{Lifecycle, ShardState};

/// A running server.
pub struct Server {
    runtime: Runtime<ShardMessage>,
    publisher: Publisher,
    hub: Arc<Hub>,
    registry: Arc<Registry>,
    lifecycle: Arc<Lifecycle>,
    /// The link to the cluster's broker, when the server is a node of one.
    cluster: Option<cluster::Link>,
    certificates: Option<Arc<tls::Certificates>>,
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
        let admission = Admission::new(&config)
            .map(Arc::new)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let shards = config.shards;
        let mut runtime_config = config.runtime_config();
        let certificates = config
            .tls
            .as_ref()
            .map(tls::Certificates::load)
            .transpose()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        if let Some(certificates) = &certificates {
            let kernel = kernel_tls_line(config.tls_kernel);
            let acceptor = certificates
                .acceptor(kernel)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
            runtime_config.tls = Some(acceptor);
        }
        let config = Arc::new(config);
        let cluster = config
            .cluster
            .clone()
            .map(|c| Arc::new(cluster::Shared::new(c)));
        let hub = Arc::new(Hub::new(cluster.clone()));
        let max_message_size = config.max_message_size;
        let registry = Arc::new(Registry::new(shards));
        let lifecycle = Arc::new(Lifecycle::default());
        let clock = Clock::new(Instant::now());
        let (shard_hub, shard_registry) = (hub.clone(), registry.clone());
        let shard_lifecycle = lifecycle.clone();
        let runtime = runtime::start(runtime_config, move |ctx| {
            let table = TopicTable::new(config.max_topic_len, config.max_topics_per_connection);
            let topics = ShardTopics::new(
                ctx.index,
                shard_hub.clone(),
                shard_registry.clone(),
                ctx.remotes,
                table,
            );
            let lifecycle = shard_lifecycle.clone();
            let shard = ShardState::new(
                config.clone(),
                lifecycle,
                admission.clone(),
                ctx.health,
                clock,
                topics,
            );
            ShardHandler::new(make_app(ctx.index), shard)
        })?;
        let publisher = Publisher::new(hub.clone(), registry.clone(), runtime.remotes().to_vec());
        let cluster = match cluster {
            Some(shared) => {
                let link = cluster::Link::start(shared, &hub, publisher.clone(), max_message_size);
                match link {
                    Ok(link) => Some(link),
                    Err(err) => {
                        runtime.shutdown();
                        let _ = runtime.join();
                        return Err(err);
                    }
                }
            }
            None => None,
        };
        Ok(Self {
            runtime,
            publisher,
            hub,
            registry,
            lifecycle,
            cluster,
            certificates,
        })
    }

    /// Reads the TLS certificate and key files again: new handshakes use the new pair,
    /// connections already open carry on. On an error the old pair stays. Does nothing
    /// without TLS listeners.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.certificates {
            Some(certificates) => certificates.reload(),
            None => Ok(()),
        }
    }

    /// Starts draining: `/readyz` answers 503 from now on, so load balancers take this
    /// server out; connections carry on until [`Server::shutdown`].
    pub fn drain(&self) {
        self.lifecycle.draining.store(true, Ordering::Relaxed);
    }

    /// The shards that have not gone round their loop within `within`: a live server has
    /// none.
    pub fn stalled_shards(&self, within: Duration) -> Vec<usize> {
        self.runtime.health().stalled(within)
    }

    /// A handle that publishes to the server's topics from any thread.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The server's counters, summed over shards.
    pub fn metrics(&self) -> Metrics {
        self.registry.snapshot(self.hub.directory.len() as u64)
    }

    /// The plain addresses being listened on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.runtime.local_addrs()
    }

    /// The TLS addresses being listened on.
    pub fn tls_local_addrs(&self) -> &[SocketAddr] {
        self.runtime.tls_local_addrs()
    }

    /// How connections are laid out over shards, rings and descriptor tables.
    pub fn layout(&self) -> runtime::Layout {
        self.runtime.layout()
    }

    /// Stops accepting and sends 1001 to every client (spread over the drain window), then
    /// waits, boundedly, for them to close. Draining starts too, if it had not.
    pub fn shutdown(&self) {
        self.drain();
        self.runtime.shutdown();
    }

    /// Waits for every shard to end, then ends the cluster link (after sending, for at most
    /// a second, what it still holds).
    pub fn join(mut self) -> io::Result<()> {
        let result = self.runtime.join();
        if let Some(mut link) = self.cluster.take() {
            link.stop();
        }
        result
    }
}

/// `ringws serve`: pub/sub on `/pubsub/<topic>`, echo on every other path, until SIGINT or
/// SIGTERM; SIGHUP reloads the TLS certificate.
pub fn serve(config: ServerConfig) -> io::Result<()> {
    // Shard threads inherit this mask: only `wait_for_signal` sees the signals.
    let signals = block_signals()?;
    let app_config = config.clone();
    let (drain_delay, drain_spread) = (config.drain_delay, config.drain_spread);
    let plain_listeners = config.listen.len();
    let proxy_listeners = config.admission.proxy_protocol_listen.len();
    let max_connections = config.max_connections;
    let server = Server::start(config, move |_| serve_app::ServeApp::new(&app_config))?;
    let mut addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    for (index, addr) in addrs.iter().enumerate() {
        match index >= plain_listeners && index < plain_listeners + proxy_listeners {
            false => println!("ringws: listening on {addr}"),
            true => println!("ringws: listening on {addr} (PROXY protocol)"),
        }
    }
    for addr in server.tls_local_addrs() {
        println!("ringws: listening on {addr} (TLS)");
        addrs.push(format!("{addr} (TLS)"));
    }
    // After the listening lines, which tools read first.
    println!("ringws: {max_connections} connections: {}", server.layout());
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
    if let (Some(interval), Some(notifier)) = (notify::watchdog_interval(), notifier.as_ref()) {
        watch(&server, notifier, interval)?;
    }
    let signal = loop {
        match wait_for_signal(&signals)? {
            libc::SIGHUP => match server.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(err) => tracing::error!("SIGHUP: TLS certificate kept: {err}"),
            },
            signal => break signal,
        }
    };
    tracing::info!(
        "signal {signal}: draining; accepting stops in {drain_delay:?}, connections close over {drain_spread:?}"
    );
    tell("STOPPING=1\nSTATUS=draining");
    server.drain();
    std::thread::sleep(drain_delay);
    server.shutdown();
    server.join()
}

/// Pings systemd's watchdog every `interval` while every shard is turning; a shard that
/// stops turning stops the pings, and systemd restarts the service.
fn watch(server: &Server, notifier: &notify::Notifier, interval: Duration) -> io::Result<()> {
    let health = server.runtime.health();
    let notifier = notifier.try_clone()?;
    std::thread::Builder::new()
        .name("ringws-watchdog".into())
        .spawn(move || {
            loop {
                let stalled = health.stalled(interval);
                if stalled.is_empty() {
                    let _ = notifier.notify("WATCHDOG=1");
                } else {
                    tracing::error!(?stalled, "shards not turning: the watchdog is not fed");
                }
                std::thread::sleep(interval);
            }
        })?;
    Ok(())
}

/// Probes for kernel TLS (unless `mode` is off), says at startup where records will be
/// encrypted, and returns whether connections try the kernel.
fn kernel_tls_line(mode: TlsKernelMode) -> bool {
    if mode == TlsKernelMode::Off {
        tracing::info!(
            "TLS records are encrypted in user space (kernel TLS: off; --tls-kernel auto uses it \
             where the kernel offers it)"
        );
        return false;
    }
    let kernel = runtime::tls::probe_kernel_tls();
    let tries = mode.tries(&kernel);
    match (kernel.available, tries) {
        (true, true) => tracing::info!(
            "TLS records are encrypted by the kernel after each handshake (kernel TLS; {}); \
             a connection it cannot carry stays in user space",
            kernel.detail
        ),
        (true, false) => tracing::info!(
            "TLS records are encrypted in user space: this kernel's TLS cannot update keys \
             ({}); --tls-kernel always offloads anyway, closing a connection whose keys \
             must change",
            kernel.detail
        ),
        (false, true) => tracing::info!(
            "TLS records: kernel TLS tried on every connection (--tls-kernel always) though \
             not offered ({}); each falls back to user space",
            kernel.detail
        ),
        (false, false) => tracing::info!(
            "TLS records are encrypted in user space (kernel TLS: not offered; {})",
            kernel.detail
        ),
    }
    tries
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread it starts, so that
/// only `wait_for_signal` sees them.
fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset/sigaddset; pthread_sigmask
    // changes only the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
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
