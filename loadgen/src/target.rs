//! The server under test: a `ws://` URL, resolved once, and the opening handshake.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;

use ringws::proto::handshake::{ClientHandshake, ClientRequest};
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

/// Connects and upgrades over `profile`'s link. Returns the link and any bytes that
/// followed the 101 response.
pub async fn open(
    target: &Target,
    profile: Option<&Profile>,
) -> Result<(Rc<Link>, Vec<u8>), String> {
    let stream = TcpStream::connect(target.addr)
        .await
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
