//! Opening a connection over its link (for the task-driven connections and the scenarios
//! that reconnect): connect, the TLS handshake on `wss://`, upgrade, and the record of how it
//! went.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;

use crate::client::Agreed;
use crate::link::Link;
use crate::plan::Plan;
use crate::stats::Stats;
use crate::target::socket_to;
use crate::tls::{self, TlsError};
use crate::upgrade::UpgradeError;

/// An upgraded connection: its link, what the server sent after its 101, and what the
/// upgrade agreed.
pub struct Opened {
    pub link: Rc<Link>,
    pub leftover: Vec<u8>,
    pub agreed: Agreed,
    /// `wss://`: how the TLS handshake went.
    pub tls: Option<TlsOpened>,
}

/// A TLS handshake's time (from the connect's start) and the upgrade's after it.
#[derive(Clone, Copy, Debug)]
pub struct TlsOpened {
    pub handshake: Duration,
    pub resumed: bool,
    pub upgrade: Duration,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("link model: {0}")]
    Link(io::Error),
    #[error("send the upgrade request: {0}")]
    SendRequest(io::Error),
    #[error("read the upgrade response: {0}")]
    ReadResponse(io::Error),
    #[error("the server closed during the handshake")]
    ClosedInHandshake,
    #[error(transparent)]
    Tls(TlsError),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

/// Connects connection `id` to `node` from its source address over its link profile and
/// upgrades.
pub async fn open(plan: &Plan, id: u32, node: usize) -> Result<Opened, OpenError> {
    let target = plan.nodes.target(node);
    // The connect is started here and completes under the upgrade request's write, which
    // waits for it (tokio-uring connects only from an address the kernel picks).
    let socket = socket_to(target.addr, plan.source_ip(id), true).map_err(OpenError::Connect)?;
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket));
    let link = Link::new(stream, plan.profile_of(id).1).map_err(OpenError::Link)?;
    let mut tls_done = None;
    if let Some(connector) = plan.tls_of(node) {
        let done = tls::handshake(&link, connector)
            .await
            .map_err(|error| match error {
                TlsError::Write(error) if refused(&error) => OpenError::Connect(error),
                error => OpenError::Tls(error),
            })?;
        link.start_tls(done.session);
        tls_done = Some((done.took, done.resumed, Instant::now()));
    }
    let mut request = Vec::with_capacity(256);
    let mut pending = plan.upgrade.request(target, &mut request);
    let (result, _) = link.write_all(request).await;
    result.map_err(|error| match refused(&error) {
        true => OpenError::Connect(error),
        false => OpenError::SendRequest(error),
    })?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let (result, read) = link.read(buf).await;
        buf = read;
        match result {
            Ok(0) => return Err(OpenError::ClosedInHandshake),
            Ok(_) => {}
            Err(error) => return Err(OpenError::ReadResponse(error)),
        }
        if let Some((agreed, consumed)) = pending.feed(&buf)? {
            return Ok(Opened {
                link,
                leftover: buf[consumed..].to_vec(),
                agreed,
                tls: tls_done.map(|(handshake, resumed, at)| TlsOpened {
                    handshake,
                    resumed,
                    upgrade: at.elapsed(),
                }),
            });
        }
    }
}

/// Whether a write failed because the connect did.
fn refused(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH)
    )
}

/// Opens connection `id` to its node and records the outcome in `stats`: established, with
/// its handshake latency, or failed, with why.
pub async fn open_recorded(plan: &Plan, id: u32, stats: &RefCell<Stats>) -> Option<Opened> {
    open_recorded_on(plan, id, plan.node_of(id), stats).await
}

/// [`open_recorded`] to `node`.
pub async fn open_recorded_on(
    plan: &Plan,
    id: u32,
    node: usize,
    stats: &RefCell<Stats>,
) -> Option<Opened> {
    let started = Instant::now();
    match open(plan, id, node).await {
        Ok(opened) => {
            let mut stats = stats.borrow_mut();
            record_opened(&mut stats, started, &opened.agreed);
            if let Some(tls) = &opened.tls {
                stats.record_tls(tls);
            }
            drop(stats);
            Some(opened)
        }
        Err(error) => {
            record_failed(&mut stats.borrow_mut(), &error);
            None
        }
    }
}

/// A connection opened, `started` being when its connect began.
pub fn record_opened(stats: &mut Stats, started: Instant, agreed: &Agreed) {
    stats.connections_established += 1;
    stats.record_handshake(started.elapsed().as_micros() as u64);
    if stats.protocol.is_none() {
        stats.protocol.clone_from(&agreed.protocol);
    }
    if stats.extensions.is_none() {
        stats.extensions.clone_from(&agreed.extensions);
    }
}

/// A connection failed to open.
pub fn record_failed(stats: &mut Stats, error: &dyn fmt::Display) {
    stats.connect_errors += 1;
    stats.note_error(error);
}
