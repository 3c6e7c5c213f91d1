//! The runtime's settings, their defaults, and the checks [`start`](super::start) makes
//! before anything runs.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Runtime settings. Build it from the defaults:
///
/// ```
/// let mut config = ringws::runtime::Config::default();
/// config.shards = 2;
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Addresses whose connections speak TLS (with `tls`), beside the plain ones in
    /// `listen`.
    pub tls_listen: Vec<SocketAddr>,
    /// How TLS listeners accept: the rustls configuration. Needed when `tls_listen` is not
    /// empty.
    pub tls: Option<super::TlsAcceptor>,
    /// Shards (threads, each with its ring), 1 to 64.
    pub shards: usize,
    /// Connections one shard holds at most (its direct-descriptor table, which the kernel
    /// also caps at the process's open-file limit).
    pub max_connections_per_shard: usize,
    /// Submission queue entries of each shard's ring (1 to 16,384; the completion queue has
    /// four times as many).
    pub ring_entries: u32,
    /// Receive buffers per shard, a power of two up to 32,768.
    pub recv_buffers: u16,
    /// Size of each receive buffer, 1 B to 16 MiB.
    pub recv_buffer_size: usize,
    /// Deadline resolution, 1 ms to 1 s.
    pub timer_tick: Duration,
    /// The listen backlog of each shard's socket (the kernel caps it at somaxconn).
    pub backlog: i32,
    /// How long a shutdown waits for the handler's connections to close.
    pub shutdown_grace: Duration,
    /// How long a closing connection may take to write out its queue before it is aborted.
    pub drain_timeout: Duration,
    /// How long a closed connection waits for the peer's FIN, after sending its own, before
    /// it is aborted.
    pub linger: Duration,
    /// TCP_USER_TIMEOUT of accepted sockets: how long sent data may stay unacknowledged (a
    /// peer that vanished, or keeps a zero window) before the kernel drops the connection.
    /// Zero leaves the kernel's default (about 15 minutes of retransmissions).
    pub tcp_user_timeout: Duration,
    /// TCP keepalive of accepted sockets, so a peer that vanished while idle is noticed.
    pub keepalive: Option<Keepalive>,
    /// SO_SNDBUF of accepted sockets: what the kernel holds of a connection's outgoing
    /// bytes beyond the handler's own queue. Zero leaves the kernel's autotuning (up to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default), where a slow reader's backlog is
    /// out of the handler's sight; the kernel caps a set size at `net.core.wmem_max`.
    pub send_buffer: usize,
    /// Cost a shard's mailbox holds at most before [`Remote::try_send`](super::Remote::try_send)
    /// refuses.
    pub mailbox_bytes: usize,
    /// Messages a shard handles per loop turn at most, so timers, accepts and I/O never
    /// wait behind a backlog.
    pub mailbox_batch: usize,
}

/// The default of every runtime setting, in one place.
pub mod defaults {
    use std::time::Duration;

    pub const MAX_CONNECTIONS_PER_SHARD: usize = 65_536;
    pub const RING_ENTRIES: u32 = 4096;
    /// 16 MiB a shard: few enough buffers that a turn rarely runs out, each large enough
    /// that a client's burst of 16 KiB messages arrives in one completion, not one per buffer.
    pub const RECV_BUFFERS: u16 = 256;
    pub const RECV_BUFFER_SIZE: usize = 64 << 10;
    pub const TIMER_TICK: Duration = Duration::from_millis(10);
    pub const BACKLOG: i32 = 4096;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    pub const LINGER: Duration = Duration::from_secs(2);
    pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
    pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_COUNT: u32 = 6;
    pub const MAILBOX_BYTES: usize = 64 << 20;
    pub const MAILBOX_BATCH: usize = 1024;
}

/// TCP keepalive settings (whole seconds; the kernel takes no less).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (TCP_KEEPIDLE), 1 s to 32,767 s.
    pub idle: Duration,
    /// Time between probes (TCP_KEEPINTVL), 1 s to 32,767 s.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT), 1 to 127.
    pub count: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            idle: defaults::KEEPALIVE_IDLE,
            interval: defaults::KEEPALIVE_INTERVAL,
            count: defaults::KEEPALIVE_COUNT,
        }
    }
}

/// The smallest and largest SO_SNDBUF [`Config::send_buffer`] takes (the kernel doubles it,
/// in a C int).
const MIN_SEND_BUFFER: usize = 4 << 10;
const MAX_SEND_BUFFER: usize = 1 << 30;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 9001))],
            tls_listen: Vec::new(),
            tls: None,
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            max_connections_per_shard: defaults::MAX_CONNECTIONS_PER_SHARD,
            ring_entries: defaults::RING_ENTRIES,
            recv_buffers: defaults::RECV_BUFFERS,
            recv_buffer_size: defaults::RECV_BUFFER_SIZE,
            timer_tick: defaults::TIMER_TICK,
            backlog: defaults::BACKLOG,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            linger: defaults::LINGER,
            tcp_user_timeout: defaults::TCP_USER_TIMEOUT,
            keepalive: Some(Keepalive::default()),
            send_buffer: 0,
            mailbox_bytes: defaults::MAILBOX_BYTES,
            mailbox_batch: defaults::MAILBOX_BATCH,
        }
    }
}

/// The kernel's limits for keepalive settings (include/net/tcp.h).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_COUNT: u32 = 127;

impl Config {
    /// Refuses settings the runtime cannot honour, naming the field and what it allows.
    pub(crate) fn validate(&self) -> io::Result<()> {
        check("shards", (1..=64).contains(&self.shards), "1 to 64")?;
        check(
            "max_connections_per_shard",
            (1..=u32::MAX as usize).contains(&self.max_connections_per_shard),
            "1 to 4,294,967,295",
        )?;
        check(
            "ring_entries",
            (1..=16_384).contains(&self.ring_entries),
            "1 to 16,384",
        )?;
        check(
            "recv_buffers",
            self.recv_buffers.is_power_of_two() && self.recv_buffers <= 1 << 15,
            "a power of two, 1 to 32,768",
        )?;
        check(
            "recv_buffer_size",
            (1..=16 << 20).contains(&self.recv_buffer_size),
            "1 B to 16 MiB",
        )?;
        check(
            "timer_tick",
            (Duration::from_millis(1)..=Duration::from_secs(1)).contains(&self.timer_tick),
            "1 ms to 1 s",
        )?;
        check("backlog", self.backlog >= 1, "at least 1")?;
        for (name, duration) in [
            ("shutdown_grace", self.shutdown_grace),
            ("drain_timeout", self.drain_timeout),
            ("linger", self.linger),
        ] {
            check(
                name,
                fits_an_instant(duration),
                "a duration an Instant can reach",
            )?;
        }
        check(
            "tcp_user_timeout",
            self.tcp_user_timeout.as_millis() <= i32::MAX as u128,
            "0 to 24 days (milliseconds in a C int)",
        )?;
        check(
            "send_buffer",
            self.send_buffer == 0
                || (MIN_SEND_BUFFER..=MAX_SEND_BUFFER).contains(&self.send_buffer),
            "0 (the kernel's autotuning) or 4 KiB to 1 GiB",
        )?;
        if let Some(keepalive) = &self.keepalive {
            let seconds = Duration::from_secs(1)..=Duration::from_secs(MAX_KEEPALIVE_SECS);
            check(
                "keepalive.idle",
                seconds.contains(&keepalive.idle),
                "1 s to 32,767 s",
            )?;
            check(
                "keepalive.interval",
                seconds.contains(&keepalive.interval),
                "1 s to 32,767 s",
            )?;
            check(
                "keepalive.count",
                (1..=MAX_KEEPALIVE_COUNT).contains(&keepalive.count),
                "1 to 127",
            )?;
        }
        check(
            "listen",
            self.listen.len() + self.tls_listen.len() <= MAX_LISTENERS,
            "at most 256 addresses, tls_listen included",
        )?;
        check(
            "tls",
            self.tls_listen.is_empty() || self.tls.is_some(),
            "set when tls_listen is not empty",
        )?;
        check("mailbox_bytes", self.mailbox_bytes >= 1, "at least 1")?;
        check("mailbox_batch", self.mailbox_batch >= 1, "at least 1")?;
        Ok(())
    }
}

/// Listening addresses a shard may have: a connection's slot names its listener in a byte.
pub const MAX_LISTENERS: usize = 256;

/// Whether a deadline `duration` from now (or years from now) can be represented.
fn fits_an_instant(duration: Duration) -> bool {
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    Instant::now()
        .checked_add(century)
        .and_then(|later| later.checked_add(duration))
        .is_some()
}

fn check(field: &str, ok: bool, allowed: &str) -> io::Result<()> {
    if ok {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("runtime config: {field} must be {allowed}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(change: impl FnOnce(&mut Config)) -> String {
        let mut config = Config::default();
        change(&mut config);
        let err = config.validate().expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        err.to_string()
    }

    #[test]
    fn the_defaults_pass() {
        Config::default().validate().expect("valid defaults");
    }

    #[test]
    fn each_bad_field_is_named_with_its_range() {
        assert!(refused(|c| c.shards = 0).contains("shards must be 1 to 64"));
        assert!(refused(|c| c.shards = 65).contains("shards"));
        assert!(refused(|c| c.max_connections_per_shard = 0).contains("max_connections_per_shard"));
        assert!(refused(|c| c.ring_entries = 0).contains("ring_entries"));
        assert!(refused(|c| c.ring_entries = 1 << 15).contains("ring_entries"));
        assert!(refused(|c| c.recv_buffers = 1000).contains("recv_buffers must be a power of two"));
        assert!(refused(|c| c.recv_buffers = 0).contains("recv_buffers"));
        assert!(refused(|c| c.send_buffer = 100).contains("send_buffer"));
        assert!(refused(|c| c.send_buffer = 2 << 30).contains("send_buffer"));
        assert!(refused(|c| c.recv_buffer_size = 0).contains("recv_buffer_size"));
        assert!(refused(|c| c.timer_tick = Duration::ZERO).contains("timer_tick"));
        assert!(refused(|c| c.backlog = 0).contains("backlog"));
        let many = vec![SocketAddr::from(([127, 0, 0, 1], 0)); MAX_LISTENERS + 1];
        assert!(refused(|c| c.listen = many).contains("at most 256"));
        assert!(refused(|c| c.linger = Duration::MAX).contains("linger"));
        assert!(refused(|c| c.drain_timeout = Duration::MAX).contains("drain_timeout"));
        assert!(refused(|c| c.shutdown_grace = Duration::MAX).contains("shutdown_grace"));
        let days = Duration::from_secs(25 * 24 * 3600);
        assert!(refused(|c| c.tcp_user_timeout = days).contains("tcp_user_timeout"));
        let keepalive = |change: fn(&mut Keepalive)| {
            move |c: &mut Config| {
                let mut k = Keepalive::default();
                change(&mut k);
                c.keepalive = Some(k);
            }
        };
        assert!(refused(keepalive(|k| k.idle = Duration::ZERO)).contains("keepalive.idle"));
        let long = |k: &mut Keepalive| k.interval = Duration::from_secs(40_000);
        assert!(refused(keepalive(long)).contains("keepalive.interval"));
        assert!(refused(keepalive(|k| k.count = 0)).contains("keepalive.count"));
        assert!(refused(|c| c.mailbox_bytes = 0).contains("mailbox_bytes"));
        assert!(refused(|c| c.mailbox_batch = 0).contains("mailbox_batch"));
    }
}
