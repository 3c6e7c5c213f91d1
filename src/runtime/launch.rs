//! Starting the shards, and what ends them: a shutdown, an error, or a panic.

use std::any::Any;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use super::layout::{self, Layout};
use super::mailbox::{Mailbox, Remote};
use super::{Config, Handler, Health, affinity, event_loop, listener, ring};

/// The exit code of a process whose shard panicked (EX_SOFTWARE).
const PANIC_EXIT_CODE: i32 = 70;

/// What a handler factory learns about its shard.
pub struct ShardContext<M> {
    pub index: usize,
    /// Every shard's remote, this one's included, indexed by shard.
    pub remotes: Vec<Remote<M>>,
    /// When every shard last turned, for liveness checks.
    pub health: Health,
}

/// The running shards.
pub struct Runtime<M> {
    remotes: Vec<Remote<M>>,
    health: Health,
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addrs: Vec<SocketAddr>,
    tls_local_addrs: Vec<SocketAddr>,
    layout: Layout,
}

impl<M: Send + 'static> Runtime<M> {
    /// The addresses being listened on (with the ports the kernel chose for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The TLS addresses being listened on (`Config::tls_listen`, ports chosen).
    pub fn tls_local_addrs(&self) -> &[SocketAddr] {
        &self.tls_local_addrs
    }

    /// How the shards' connections are laid out over rings and descriptor tables.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn remotes(&self) -> &[Remote<M>] {
        &self.remotes
    }

    /// When every shard last went round its loop.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Asks every shard to stop accepting and close its connections (see
    /// [`Handler::on_shutdown`]).
    pub fn shutdown(&self) {
        for remote in &self.remotes {
            remote.mailbox.stop.store(true, Ordering::Release);
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

/// Checks the configuration and the kernel, binds the listeners and starts the shards.
/// `make_handler` runs on each shard's own thread, so handlers need not be `Send`.
///
/// # Errors
///
/// A bad [`Config`] is refused with [`io::ErrorKind::InvalidInput`] and a message naming the
/// field and what it allows; a kernel without what the runtime needs, with
/// [`io::ErrorKind::Unsupported`].
///
/// # Panics
///
/// A shard that panics (in a handler, say) takes the process down: it prints
/// `ringws: shard N panicked: <message>` on stderr, logs it as an error, and exits with code
/// 70, so a supervisor restarts a whole server rather than keep a half-alive one whose
/// listener and connections died with the shard.
pub fn start<H, F>(config: Config, make_handler: F) -> io::Result<Runtime<H::Message>>
where
    H: Handler,
    F: Fn(ShardContext<H::Message>) -> H + Send + Sync + 'static,
{
    config.validate()?;
    let features = ring::check_kernel()?;
    let layout = Layout::plan(
        config.shards,
        config.max_connections_per_shard,
        layout::descriptor_cap(),
    );
    let listeners = listener::bind_all(&config)?;
    let mut local_addrs = listeners
        .first()
        .map(|first| {
            first
                .iter()
                .map(listener::local_addr)
                .collect::<io::Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    let tls_local_addrs = local_addrs.split_off(config.listen.len().min(local_addrs.len()));
    let mailboxes = (0..config.shards)
        .map(|_| Mailbox::new(config.mailbox_bytes).map(Arc::new))
        .collect::<io::Result<Vec<_>>>()?;
    let remotes: Vec<Remote<H::Message>> = mailboxes
        .iter()
        .map(|m| Remote { mailbox: m.clone() })
        .collect();
    let health = Health::new(config.shards, std::time::Instant::now());
    let make_handler = Arc::new(make_handler);
    let cpus = affinity::allowed_cpus();
    let mut threads = Vec::with_capacity(config.shards);
    let (ready, shards_ready) = std::sync::mpsc::channel();
    for (index, (listeners, mailbox)) in listeners.into_iter().zip(mailboxes).enumerate() {
        let config = config.clone();
        let make_handler = make_handler.clone();
        let remotes = remotes.clone();
        let health = health.clone();
        let ready = ready.clone();
        let cpu = cpus.get(index % cpus.len().max(1)).copied();
        let thread = std::thread::Builder::new()
            .name(format!("ringws-shard-{index}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    affinity::pin_to(cpu);
                }
                let ran = panic::catch_unwind(AssertUnwindSafe(|| {
                    let context = ShardContext {
                        index,
                        remotes,
                        health: health.clone(),
                    };
                    let handler = make_handler(context);
                    let setup = event_loop::Setup {
                        index,
                        layout,
                        features,
                        ready,
                    };
                    event_loop::run(setup, &config, listeners, mailbox, handler, health)
                }));
                ran.unwrap_or_else(|payload| exit_on_panic(index, payload.as_ref()))
            })?;
        threads.push(thread);
    }
    drop(ready);
    let runtime = Runtime {
        remotes,
        health,
        threads,
        local_addrs,
        tls_local_addrs,
        layout,
    };
    // Every shard has its rings before anyone is told the server listens.
    for _ in 0..config.shards {
        let setup = shards_ready
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("a shard ended before it was ready")));
        if let Err(err) = setup {
            runtime.shutdown();
            let _ = runtime.join();
            return Err(err);
        }
    }
    Ok(runtime)
}

/// A shard died: say which and why, and end the process.
fn exit_on_panic(shard: usize, payload: &(dyn Any + Send)) -> ! {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(shard, "shard panicked: {message}");
    let _ = writeln!(io::stderr(), "ringws: shard {shard} panicked: {message}");
    std::process::exit(PANIC_EXIT_CODE);
}
