//! The server under test: a `ws://` or `wss://` URL, resolved once; and sockets to it.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};

use ringws::runtime::socket::{set_int_option, tcp_socket_for, to_sockaddr};

#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The Host header: as written in the URL.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// `wss://`: WebSocket over TLS.
    pub tls: bool,
}

/// Why a URL names no server this generator can reach.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}`: only ws:// and wss:// URLs are supported")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("cannot resolve `{host}`: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("`{0}` resolves to no address")]
    NoAddress(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(UrlError::Scheme(url.to_owned())),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(UrlError::NoHost(url.to_owned()));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|source| UrlError::Resolve {
                host: authority.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| UrlError::NoAddress(authority.to_owned()))?;
        Ok(Target {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
            tls,
        })
    }
}

/// A TCP socket to `to`, bound to `source` first when given, its connect started but not
/// waited for (EINPROGRESS), with TCP_NODELAY: messages leave when written.
///
/// Binding picks the port at connect time from the whole four-tuple, so each source address
/// offers the full ephemeral range to every destination.
pub fn socket_to(to: SocketAddr, source: Option<IpAddr>, connect: bool) -> io::Result<OwnedFd> {
    let socket = tcp_socket_for(to)?;
    set_int_option(&socket, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if let Some(source) = source {
        // Without it, binding still works, with fewer ports.
        let _ = set_int_option(&socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        let (local, local_len) = to_sockaddr(SocketAddr::new(source, 0));
        // SAFETY: `local` holds a sockaddr of `local_len` bytes for the socket's family.
        if unsafe { libc::bind(socket.as_raw_fd(), (&raw const local).cast(), local_len) } != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("bind {source}: {err}")));
        }
    }
    if connect {
        let (remote, remote_len) = to_sockaddr(to);
        // SAFETY: as for bind.
        if unsafe { libc::connect(socket.as_raw_fd(), (&raw const remote).cast(), remote_len) } != 0
        {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err);
            }
        }
    }
    Ok(socket)
}
