//! What happens to connections, as log events an operator's pipeline can parse: every event
//! names itself (`event`), its shard and its peer; closes carry their code, reason and
//! cause, refusals their HTTP status. At info level when connection logging is on
//! (`--log-connections`), else at debug.

use std::net::SocketAddr;

use crate::proto::CloseCode;

/// Emits one connection event at info when `loud`, at debug otherwise.
macro_rules! event {
    ($loud:expr, $($field:tt)*) => {
        if $loud {
            tracing::info!($($field)*);
        } else {
            tracing::debug!($($field)*);
        }
    };
}

/// A WebSocket connection opened.
pub(crate) fn opened(loud: bool, shard: usize, peer: SocketAddr, path: &str) {
    event!(loud, event = "open", shard, %peer, path, "connection opened");
}

/// An HTTP request was refused.
pub(crate) fn refused(loud: bool, shard: usize, peer: SocketAddr, status: u16, reason: &str) {
    event!(loud, event = "refuse", shard, %peer, status, reason, "request refused");
}

/// A WebSocket connection ended.
pub(crate) fn closed(
    loud: bool,
    shard: usize,
    peer: SocketAddr,
    code: CloseCode,
    reason: &str,
    cause: &dyn std::fmt::Display,
) {
    let code = code.as_u16();
    event!(loud, event = "close", shard, %peer, code, reason, %cause, "connection closed");
}

/// A TLS connection failed (most often in its handshake: not TLS at all, a server name the
/// certificate does not cover, nothing in common, a client that stalled).
pub(crate) fn tls_failed(loud: bool, shard: usize, peer: SocketAddr, kind: &str) {
    event!(loud, event = "tls_failure", shard, %peer, kind, "TLS failed");
}
