//! [`Ws`]: the handle an application uses to act on one connection during a callback.

use std::net::SocketAddr;

use crate::proto::deflate::Compressor;
use crate::proto::session::Writer;
use crate::proto::{CloseCode, OpCode, SendError};

use super::app::{App, Message};
use super::core::ShardCore;
use super::transport::{ConnId, Transport};

/// One connection, lent to an application callback.
pub struct Ws<'a, A: App + ?Sized> {
    pub(crate) id: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) protocol: Option<&'a str>,
    pub(crate) writer: &'a mut Writer,
    pub(crate) state: &'a mut A::State,
    /// This connection's own compressor, when it keeps context between messages.
    pub(crate) compressor: &'a mut Option<Box<Compressor>>,
    pub(crate) core: &'a mut ShardCore,
    pub(crate) io: &'a mut dyn Transport,
}

impl<A: App + ?Sized> Ws<'_, A> {
    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol
    }

    /// The application's state for this connection.
    pub fn state(&mut self) -> &mut A::State {
        self.state
    }

    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send(OpCode::Text, text.as_bytes())
    }

    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send(OpCode::Binary, data)
    }

    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send(OpCode::Ping, payload)
    }

    /// Starts the close handshake; the connection closes when the client answers, or after
    /// the close timeout.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.writer.close(code, reason, self.core.arena.room(128))?;
        self.flush();
        let timeout = self.core.config.close_timeout;
        self.io.set_deadline(self.id, timeout);
        Ok(())
    }

    /// Subscribes this connection to `topic`; returns false when it already was. The
    /// subscription ends with [`Ws::unsubscribe`] or when the connection closes.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.core.topics.subscribe(self.id, topic)
    }

    /// Returns false when the connection was not subscribed to `topic`.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.core.topics.unsubscribe(self.id, topic)
    }

    /// The topics this connection subscribes to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.core.topics.topics_of(self.id)
    }

    /// Publishes `message` to every subscriber of `topic` except this connection; returns
    /// whether any shard had subscribers. Subscribers on this shard receive it when the
    /// current callback returns, others as soon as their shard wakes.
    pub fn publish(&mut self, topic: &str, message: Message<'_>) -> bool {
        self.core.topics.publish(topic, message, Some(self.id))
    }

    /// Bytes queued for this connection and not yet written to its socket.
    pub fn buffered_amount(&self) -> usize {
        self.io.queued_bytes(self.id)
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        send_message(self.writer, self.compressor, self.core, opcode, payload)?;
        self.flush();
        Ok(())
    }

    fn flush(&mut self) {
        if let Some(bytes) = self.core.arena.take() {
            self.io.send(self.id, bytes);
        }
    }
}

/// Writes one message into the shard's arena, compressed when the connection negotiated it
/// and the message is large enough to gain.
pub(crate) fn send_message(
    writer: &mut Writer,
    own_compressor: &mut Option<Box<Compressor>>,
    core: &mut ShardCore,
    opcode: OpCode,
    payload: &[u8],
) -> Result<(), SendError> {
    let out = core.arena.room(payload.len() + 16);
    if let Some(compressor) = own_compressor.as_deref_mut() {
        return writer.send_compressed(opcode, payload, compressor, out);
    }
    let shared = writer
        .own_direction()
        .filter(|_| !opcode.is_control())
        .and_then(|direction| core.compressors.get(direction));
    match shared {
        Some(compressor) => writer.send_compressed(opcode, payload, compressor, out),
        None => writer.send(opcode, payload, out),
    }
}
