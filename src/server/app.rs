//! The application API: callbacks a shard calls for each connection, with no future and no
//! heap allocation per message.
//!
//! Each shard owns its own [`App`] value (created by a factory in the shard's thread), so an
//! application needs no locks for state that stays within a shard.

use std::net::SocketAddr;

use crate::proto::CloseCode;
use crate::proto::handshake::Request;

pub use crate::proto::handshake::Refusal;

pub use super::admission::Grants;

use super::ws::Ws;

/// A message received from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Validated UTF-8.
    Text(&'a str),
    Binary(&'a [u8]),
}

/// An opening handshake waiting for the application's decision.
pub struct Upgrade<'a> {
    /// Path, query, headers, Origin, cookies, offered subprotocols.
    pub request: &'a Request,
    pub peer: SocketAddr,
    /// The subprotocol the server would choose: the first of its configured ones that the
    /// client offered.
    pub protocol: Option<&'a str>,
    /// What the client's token allows, when the server checks tokens
    /// (`ServerConfig::admission`); `None` when it does not.
    pub grants: Option<&'a Grants>,
}

/// The application accepts the connection and attaches its state.
pub struct Accept<S> {
    pub state: S,
    /// Overrides the subprotocol the server chose; it must be one the client offered.
    pub protocol: Option<String>,
}

impl<S> Accept<S> {
    pub fn new(state: S) -> Self {
        Self {
            state,
            protocol: None,
        }
    }
}

/// How a connection ended, as its `on_close` hears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed<'a> {
    /// The close code (1006 when the connection dropped without a close frame).
    pub code: CloseCode,
    pub reason: &'a str,
}

/// A WebSocket application: one value per shard.
pub trait App: 'static {
    /// Per-connection state, attached when the upgrade is accepted.
    type State: 'static;

    /// Decides whether to accept an upgrade, or refuses it with an HTTP status, a message
    /// and any headers. Origin and protocol checks configured on the server have already
    /// passed.
    fn upgrade(&mut self, upgrade: &Upgrade<'_>) -> Result<Accept<Self::State>, Refusal>;

    /// The connection is open; messages may be sent.
    fn on_open(&mut self, _ws: &mut Ws<'_, Self>) {}

    /// A whole message arrived.
    fn on_message(&mut self, ws: &mut Ws<'_, Self>, message: Message<'_>);

    /// The connection's send queue emptied after it had passed the backpressure bound.
    fn on_drain(&mut self, _ws: &mut Ws<'_, Self>) {}

    /// The connection is gone; its state is handed back.
    fn on_close(&mut self, _state: Self::State, _closed: Closed<'_>) {}

    /// The body of the page a plain HTTP GET receives.
    fn http_page(&self) -> &str {
        "ringws: a WebSocket server. Connect with a WebSocket client.\n"
    }
}
