//! Listening sockets: one per shard and address, with SO_REUSEPORT so the kernel spreads
//! new connections over the shards.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::Config;
use super::socket::{self, set_int_option};

/// Binds every shard's listening sockets: one per shard and address, the plain ones
/// (`listen`) first, then the TLS ones (`tls_listen`). A port of 0 is chosen by the kernel
/// for the first shard and shared by the rest.
pub(crate) fn bind_all(config: &Config) -> io::Result<Vec<Vec<OwnedFd>>> {
    let mut per_shard: Vec<Vec<OwnedFd>> = (0..config.shards).map(|_| Vec::new()).collect();
    let plain = config.listen.iter().map(|addr| (addr, false));
    let tls = config.tls_listen.iter().map(|addr| (addr, true));
    // The kernel's cap is the same for every socket: said once, not once a socket.
    let mut send_buffer = config.send_buffer;
    for (&addr, tls) in plain.chain(tls) {
        ensure_free(addr)?;
        let first = listen(addr, tls, config, &mut send_buffer)?;
        let bound = local_addr(&first)?;
        per_shard[0].push(first);
        for sockets in per_shard.iter_mut().skip(1) {
            sockets.push(listen(bound, tls, config, &mut send_buffer)?);
        }
    }
    if send_buffer < config.send_buffer {
        tracing::warn!(
            requested = config.send_buffer,
            granted = send_buffer,
            "the kernel caps the send buffer at net.core.wmem_max: raise it with sysctl"
        );
    }
    Ok(per_shard)
}

/// Creates a listening socket bound to `addr` with SO_REUSEPORT, carrying the options
/// accepted sockets inherit. `send_buffer` is lowered to what the kernel granted of
/// `config.send_buffer`, where it granted less.
///
/// A TLS socket also gets TCP_NODELAY: a server's session tickets and its 101 leave in two
/// writes, and Nagle would hold the second until the client's delayed ACK of the first
/// (40 ms on Linux), in every wss handshake.
fn listen(
    addr: SocketAddr,
    tls: bool,
    config: &Config,
    send_buffer: &mut usize,
) -> io::Result<OwnedFd> {
    let socket = bind(addr, true)?;
    if tls {
        set_int_option(&socket, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    if !config.tcp_user_timeout.is_zero() {
        socket::set_user_timeout(&socket, config.tcp_user_timeout)?;
    }
    socket::set_keepalive(&socket, config.keepalive)?;
    if config.send_buffer != 0 {
        let granted = socket::set_send_buffer(&socket, config.send_buffer)?;
        *send_buffer = granted.min(*send_buffer);
    }
    // SAFETY: listen takes no pointers; the descriptor is ours.
    if unsafe { libc::listen(socket.as_raw_fd(), config.backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Fails when something already listens on `addr`. SO_REUSEPORT would otherwise let a
/// second server (of the same user) join the port silently and take half the connections.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    bind(addr, false).map(drop).map_err(|err| {
        if err.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("cannot listen on {addr}: another process is listening there"),
            )
        } else {
            err
        }
    })
}

/// A socket bound to `addr`; `share` sets SO_REUSEPORT so every shard can bind it.
fn bind(addr: SocketAddr, share: bool) -> io::Result<OwnedFd> {
    let socket = socket::tcp_socket_for(addr)?;
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if share {
        set_int_option(&socket, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    if addr.is_ipv6() {
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = socket::to_sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the socket's family.
    if unsafe { libc::bind(socket.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("cannot bind {addr}: {err}"),
        ));
    }
    Ok(socket)
}

/// The address a socket is bound to (to learn the port the kernel chose for port 0).
pub(crate) fn local_addr(socket: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: zeroed sockaddr_storage is a valid value of the type.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `storage`, a live local.
    if unsafe { libc::getsockname(socket.as_raw_fd(), (&raw mut storage).cast(), &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    socket::from_sockaddr(&storage).ok_or_else(|| io::Error::other("unknown address family"))
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::runtime::socket::get_int_option;

    /// Accepted sockets inherit TCP_NODELAY from their listener (Linux copies the listening
    /// socket's options into each child): a TLS listener's connections have it, a plain
    /// one's do not.
    #[test]
    fn tls_listeners_hand_tcp_nodelay_to_their_connections() {
        let config = Config::default();
        for tls in [false, true] {
            let mut send_buffer = 0;
            let socket = listen(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                tls,
                &config,
                &mut send_buffer,
            )
            .expect("a listening socket");
            let addr = local_addr(&socket).expect("its address");
            let listener = TcpListener::from(socket);
            let _client = TcpStream::connect(addr).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            let nodelay = get_int_option(&accepted, libc::IPPROTO_TCP, libc::TCP_NODELAY)
                .expect("read TCP_NODELAY");
            assert_eq!(nodelay != 0, tls, "tls listener: {tls}");
        }
    }
}
