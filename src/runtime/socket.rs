//! Socket addresses and options as the C API wants them: shared by the listeners and by
//! clients (the load generator) that make their own sockets.
//!
//! TCP_USER_TIMEOUT, the keepalive settings and SO_SNDBUF are inherited: Linux copies them from a
//! listening socket to every socket it accepts (`tests/runtime_bounds.rs` proves it), so the
//! runtime sets them once per listener rather than once per connection.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::Keepalive;

/// A new non-blocking, close-on-exec TCP socket of `addr`'s family.
pub fn tcp_socket_for(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) returns a new descriptor or -1, checked before it is owned.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets an integer socket option.
pub fn set_int_option(socket: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a live i32 of the size given, on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads an integer socket option.
pub fn get_int_option(socket: &impl AsRawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live i32 and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets TCP_USER_TIMEOUT: how long sent data may stay unacknowledged (a peer that vanished,
/// or keeps a zero window) before the kernel drops the connection. Zero keeps the kernel's
/// default. Linux copies it from a listening socket to the sockets it accepts.
pub fn set_user_timeout(socket: &impl AsRawFd, timeout: Duration) -> io::Result<()> {
    let millis = i32::try_from(timeout.as_millis())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user timeout too long"))?;
    set_int_option(socket, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, millis)
}

/// Sets SO_SNDBUF to `bytes` and returns what the kernel granted, in the same terms: it
/// caps the size at `net.core.wmem_max` (and doubles it for its own bookkeeping, which
/// getsockopt reports). Setting it turns off the kernel's send buffer autotuning. Linux
/// copies it from a listening socket to the sockets it accepts.
pub fn set_send_buffer(socket: &impl AsRawFd, bytes: usize) -> io::Result<usize> {
    let requested = i32::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "send buffer too large"))?;
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_SNDBUF, requested)?;
    let granted = get_int_option(socket, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    Ok(usize::try_from(granted / 2).unwrap_or(0))
}

/// Turns TCP keepalive on with `keepalive`'s timing (whole seconds), or off for `None`.
/// Linux copies these from a listening socket to the sockets it accepts.
pub fn set_keepalive(socket: &impl AsRawFd, keepalive: Option<Keepalive>) -> io::Result<()> {
    let Some(keepalive) = keepalive else {
        return set_int_option(socket, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
    };
    let seconds = |d: Duration| {
        i32::try_from(d.as_secs())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "keepalive time too long"))
    };
    let count = i32::try_from(keepalive.count)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "keepalive count too big"))?;
    set_int_option(
        socket,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        seconds(keepalive.idle)?,
    )?;
    set_int_option(
        socket,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        seconds(keepalive.interval)?,
    )?;
    set_int_option(socket, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)?;
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
}

/// `addr` as the C socket API takes it.
pub fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is a valid value of the type.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address in `storage`, if its family is IPv4 or IPv6.
pub fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
