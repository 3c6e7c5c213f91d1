//! The io_uring driver: shards of connections that move bytes. It knows nothing of WebSocket.
//!
//! Each shard is a thread pinned to a core with its own ring, listening sockets
//! (SO_REUSEPORT), direct-descriptor table and provided-buffer ring. A [`Handler`] per shard
//! hears about connections and their bytes and acts through [`Io`]. Shards share nothing on
//! the hot path; other threads reach a shard through a [`Remote`], which queues a message
//! and wakes the shard's ring.

mod buf_ring;
mod listener;
mod mailbox;
mod ring;
mod shard;
mod slot;
pub mod socket;
mod timer;
mod user_data;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use shard::Io;
pub use slot::Dropped;

use mailbox::Mailbox;

/// A connection within its shard: its direct-descriptor slot and that slot's generation,
/// so an id never names a later connection that reused the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

impl ConnId {
    /// An id for a slot and generation, for handlers driven without a ring (tests).
    pub const fn new(slot: u32, generation: u32) -> Self {
        Self { slot, generation }
    }

    /// The direct-descriptor slot: dense, so it can index a table.
    pub fn slot(self) -> u32 {
        self.slot
    }
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The handler closed it (after its queue was written) or aborted it.
    Local,
    /// The peer closed its side.
    PeerClosed,
    /// A socket error, such as a reset (the errno).
    Error(i32),
    /// The server shut down before the connection finished closing.
    Shutdown,
}

/// What a shard hears about. All calls run on the shard's thread.
pub trait Handler: 'static {
    /// What other threads can send to this shard through a [`Remote`].
    type Message: Send + 'static;

    /// A connection was accepted.
    fn on_open(&mut self, io: &mut Io, conn: ConnId, peer: SocketAddr);
    /// The connection sent bytes. The buffer returns to the kernel after this call.
    fn on_data(&mut self, io: &mut Io, conn: ConnId, data: &mut [u8]);
    /// Everything queued for the connection has been written.
    fn on_drained(&mut self, _io: &mut Io, _conn: ConnId) {}
    /// The connection's deadline passed.
    fn on_deadline(&mut self, io: &mut Io, conn: ConnId);
    /// The connection is gone; its id will not be used again.
    fn on_closed(&mut self, io: &mut Io, conn: ConnId, cause: CloseCause);
    /// A message from a [`Remote`].
    fn on_message(&mut self, _io: &mut Io, _message: Self::Message) {}
    /// Shutdown began: accepting stopped. Close connections now; the shard ends when none
    /// is left or the grace period runs out.
    fn on_shutdown(&mut self, _io: &mut Io) {}
}

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub shards: usize,
    /// Connections one shard holds at most (its direct-descriptor table, which the kernel
    /// also caps at the process's open-file limit).
    pub max_connections_per_shard: usize,
    pub ring_entries: u32,
    /// Receive buffers per shard (a power of two) and their size.
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
    /// Deadline resolution.
    pub timer_tick: Duration,
    pub backlog: i32,
    /// How long a shutdown waits for the handler's connections to close.
    pub shutdown_grace: Duration,
    /// How long a closed connection waits for the peer's FIN before its socket is released.
    pub linger: Duration,
    /// How long a closing connection may take to write out its queue.
    pub drain_timeout: Duration,
    /// Bytes of cost a shard's mailbox holds before `try_send` refuses.
    pub mailbox_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 9001))],
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            max_connections_per_shard: 65_536,
            ring_entries: 4096,
            recv_buffers: 1024,
            recv_buffer_size: 16 << 10,
            timer_tick: Duration::from_millis(10),
            backlog: 4096,
            shutdown_grace: Duration::from_secs(5),
            linger: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            mailbox_bytes: 64 << 20,
        }
    }
}

/// What a handler factory learns about its shard.
pub struct ShardContext<M> {
    pub index: usize,
    /// Every shard's remote, this one's included, indexed by shard.
    pub remotes: Vec<Remote<M>>,
}

/// Sends messages to one shard from any thread.
pub struct Remote<M> {
    mailbox: Arc<Mailbox<M>>,
}

impl<M> Clone for Remote<M> {
    fn clone(&self) -> Self {
        Self {
            mailbox: self.mailbox.clone(),
        }
    }
}

impl<M: Send> Remote<M> {
    /// Queues `message` and wakes the shard; messages from one sender arrive in order.
    pub fn send(&self, message: M) {
        self.mailbox.send(message);
    }

    /// Queues `message` unless the mailbox is over its bound.
    pub fn try_send(&self, message: M, _cost: usize) -> Result<(), M> {
        self.mailbox.send(message);
        Ok(())
    }

    /// The cost queued in the mailbox now.
    pub fn backlog(&self) -> usize {
        0
    }
}

/// The running shards.
pub struct Runtime<M> {
    remotes: Vec<Remote<M>>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addrs: Vec<SocketAddr>,
}

impl<M: Send + 'static> Runtime<M> {
    /// The addresses being listened on (with the ports the kernel chose for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn remotes(&self) -> &[Remote<M>] {
        &self.remotes
    }

    /// Asks every shard to stop accepting and close its connections (see [`Handler::on_shutdown`]).
    pub fn shutdown(&self) {
        for remote in &self.remotes {
            remote
                .mailbox
                .stop
                .store(true, std::sync::atomic::Ordering::Release);
            remote.mailbox.wake();
        }
    }

    /// Waits for every shard to end; the first error any shard ended with.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for thread in self.threads {
            let ended = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a shard thread panicked")));
            if result.is_ok() {
                result = ended;
            }
        }
        result
    }
}

/// Checks the kernel, binds the listeners and starts the shards. `make_handler` runs on each
/// shard's own thread, so handlers need not be `Send`.
pub fn start<H, F>(config: Config, make_handler: F) -> io::Result<Runtime<H::Message>>
where
    H: Handler,
    F: Fn(ShardContext<H::Message>) -> H + Send + Sync + 'static,
{
    if config.shards == 0 || config.shards > 64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "shards must be between 1 and 64",
        ));
    }
    ring::check_kernel()?;
    let listeners = shard::bind_all(&config)?;
    let local_addrs = listeners
        .first()
        .map(|first| {
            first
                .iter()
                .map(listener::local_addr)
                .collect::<io::Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    let mailboxes = (0..config.shards)
        .map(|_| Mailbox::new().map(Arc::new))
        .collect::<io::Result<Vec<_>>>()?;
    let remotes: Vec<Remote<H::Message>> = mailboxes
        .iter()
        .map(|m| Remote { mailbox: m.clone() })
        .collect();
    let make_handler = Arc::new(make_handler);
    let cpus = shard::allowed_cpus();
    let mut threads = Vec::with_capacity(config.shards);
    for (index, (listeners, mailbox)) in listeners.into_iter().zip(mailboxes).enumerate() {
        let config = config.clone();
        let make_handler = make_handler.clone();
        let remotes = remotes.clone();
        let cpu = cpus.get(index % cpus.len().max(1)).copied();
        let thread = std::thread::Builder::new()
            .name(format!("ringws-shard-{index}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    shard::pin_to(cpu);
                }
                let handler = make_handler(ShardContext { index, remotes });
                shard::run(index, &config, listeners, mailbox, handler)
            })?;
        threads.push(thread);
    }
    Ok(Runtime {
        remotes,
        threads,
        local_addrs,
    })
}
