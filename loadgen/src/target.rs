//! The server under test: a `ws://` URL, resolved once, and the opening handshake.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use ringws::proto::handshake::{ClientHandshake, ClientRequest};
use ringws::runtime::socket::{set_int_option, tcp_socket_for, to_sockaddr};
use tokio_uring::net::TcpStream;

use crate::link::Link;
use crate::profile::Profile;

#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The Host header: as written in the URL.
    pub host: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("`{url}`: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{authority}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{authority}` resolves to no address"))?;
        Ok(Target {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Connects (from `source`, when given) and upgrades over `profile`'s link. Returns the link and any bytes that
/// followed the 101 response.
pub async fn open(
    target: &Target,
    source: Option<IpAddr>,
    profile: Option<&Profile>,
) -> Result<(Rc<Link>, Vec<u8>), String> {
    let stream = match source {
        None => TcpStream::connect(target.addr).await,
        Some(source) => connect_from(source, target.addr),
    }
    .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let link = Link::new(stream, profile).map_err(|e| format!("link model: {e}"))?;
    let mut request = Vec::with_capacity(256);
    let mut handshake = ClientHandshake::new(
        &ClientRequest {
            host: &target.host,
            path: &target.path,
            ..ClientRequest::default()
        },
        &mut request,
    );
    let (result, _) = link.write_all(request).await;
    result.map_err(|e| format!("send the upgrade request: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let (result, read) = link.read(buf).await;
        buf = read;
        match result {
            Ok(0) => return Err("the server closed during the handshake".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("read the upgrade response: {e}")),
        }
        if let Some(accepted) = handshake
            .feed(&buf)
            .map_err(|e| format!("handshake: {e}"))?
        {
            return Ok((link, buf[accepted.consumed..].to_vec()));
        }
    }
}

/// Starts a connection from `source` (any free port) without waiting for it: the first write
/// (the upgrade request) waits until the connection is up, or fails with its error.
///
/// tokio-uring can only connect from an address the kernel picks; a client spread over many
/// loopback addresses needs its own socket, bound first.
fn connect_from(source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = tcp_socket_for(to)?;
    // Pick the port at connect time, from the whole four-tuple: each source address then
    // offers the full ephemeral range to every destination. Without it, binding still works.
    let _ = set_int_option(&socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
    let (local, local_len) = to_sockaddr(SocketAddr::new(source, 0));
    // SAFETY: `local` holds a sockaddr of `local_len` bytes for the socket's family.
    if unsafe { libc::bind(socket.as_raw_fd(), (&raw const local).cast(), local_len) } != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("bind {source}: {err}")));
    }
    let (remote, remote_len) = to_sockaddr(to);
    // SAFETY: as for bind.
    if unsafe { libc::connect(socket.as_raw_fd(), (&raw const remote).cast(), remote_len) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}
