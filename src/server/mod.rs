//! The WebSocket server: shards of connections on the io_uring runtime, the application API,
//! pub/sub, and the application of `ringws serve`.

pub mod app;
pub mod config;
mod conn;
mod core;
pub mod echo;
mod handle;
pub mod pubsub;
pub mod serve_app;
mod shard;
mod transport;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use app::{Accept, App, Closed, Message, Reject, Upgrade};
pub use config::{BackpressurePolicy, ServerConfig};
pub use handle::Ws;
pub use pubsub::{Metrics, Publisher};
pub use transport::ConnId;

use crate::runtime::{self, Runtime};
use pubsub::{Hub, ShardMessage, ShardTopics};
use shard::ShardHandler;

/// A running server.
pub struct Server {
    runtime: Runtime<ShardMessage>,
    publisher: Publisher,
}

impl Server {
    /// Starts the shards; `make_app` runs once on each shard's thread.
    pub fn start<A, F>(config: ServerConfig, make_app: F) -> io::Result<Self>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        let shards = config.shards.max(1);
        let runtime_config = runtime::Config {
            listen: config.listen.clone(),
            shards,
            max_connections_per_shard: config.max_connections.div_ceil(shards),
            shutdown_grace: config.shutdown_grace,
            ..runtime::Config::default()
        };
        let config = Arc::new(config);
        let hub = Arc::new(Hub::new(shards));
        let shard_hub = hub.clone();
        let runtime = runtime::start(runtime_config, move |ctx| {
            let topics = ShardTopics::new(ctx.index, shard_hub.clone(), ctx.remotes);
            ShardHandler::new(make_app(ctx.index), config.clone(), topics)
        })?;
        let publisher = Publisher::new(hub, runtime.remotes().to_vec());
        Ok(Self { runtime, publisher })
    }

    /// A handle that publishes to the server's topics from any thread.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The server's counters, summed over shards.
    pub fn metrics(&self) -> Metrics {
        self.publisher.metrics()
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
    let server = Server::start(config, |_| serve_app::ServeApp)?;
    for addr in server.local_addrs() {
        println!("ringws: listening on {addr}");
    }
    use std::io::Write as _;
    io::stdout().flush()?;
    let signal = wait_for_signal(&signals)?;
    tracing::info!("signal {signal}: closing connections");
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
