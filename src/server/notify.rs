//! The systemd notification protocol (`Type=notify`): one datagram per state change to the
//! socket in `$NOTIFY_SOCKET`. Outside systemd the variable is unset and nothing is sent.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where state changes go, if the service manager asked for them.
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`: a path, or an abstract name after `@`. `None` when unset.
    pub fn from_env() -> io::Result<Option<Self>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().into_owned();
        let target = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&path)?,
        };
        Ok(Some(Self {
            socket: UnixDatagram::unbound()?,
            target,
        }))
    }

    /// Another handle on the same socket, for a thread of its own.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            target: self.target.clone(),
        })
    }

    /// Sends `state` (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`, newline-separated).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.target)?;
        Ok(())
    }
}

/// How often to tell the watchdog we are alive: half its timeout, from `$WATCHDOG_USEC`,
/// if the watchdog is on and meant for this process (`$WATCHDOG_PID`, when set).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
