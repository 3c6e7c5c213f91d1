//! [`Ws`]: the handle an application uses to act on one connection during a callback.

use std::net::SocketAddr;

use crate::proto::frame::MAX_HEADER_LEN;
use crate::proto::{CloseCode, OpCode, SendError};
use crate::runtime::ConnId;

use super::app::{App, Message};
use super::connection::{Asked, Cx, Parts};
use super::frames::write_message;
use super::pubsub::{PublishError, SubscribeError};
use super::shard_state::ShardState;
use super::transport::Transport;

/// Payloads from this size on are sent from the receive buffer they arrived in when they can
/// be ([`Transport::lend`]); smaller ones are cheaper to copy next to their header.
const LEND_MIN: usize = 4096;

/// One connection, lent to an application callback.
pub struct Ws<'a, A: App + ?Sized> {
    id: ConnId,
    /// Frames sent stay in the shard's arena for the caller to flush once, after a batch of
    /// messages: one queued chunk, and one send, for every reply to one read.
    batched: bool,
    peer: SocketAddr,
    parts: &'a mut Parts<A::State>,
    shard: &'a mut ShardState,
    io: &'a mut dyn Transport,
    asked: &'a mut Asked,
}

impl<'a, A: App + ?Sized> Ws<'a, A> {
    pub(crate) fn new(
        cx: &'a mut Cx<'_>,
        peer: SocketAddr,
        parts: &'a mut Parts<A::State>,
        asked: &'a mut Asked,
    ) -> Self {
        Self {
            id: cx.id,
            batched: false,
            peer,
            parts,
            shard: cx.shard,
            io: cx.io,
            asked,
        }
    }

    /// This [`Ws`], its sends leaving their frames in the shard's arena: the caller flushes
    /// them to this connection before anything else writes there.
    pub(crate) fn batched(mut self) -> Self {
        self.batched = true;
        self
    }
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
        self.parts.protocol()
    }

    /// The application's state for this connection.
    pub fn state(&mut self) -> &mut A::State {
        &mut self.parts.state
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

    /// Starts the close handshake; the connection closes when the client answers, or is
    /// aborted after the close timeout.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        let out = self.shard.arena.room(128);
        self.parts.writer.close(code, reason, out)?;
        self.shard.flush(self.io, self.id);
        self.asked.close_sent = true;
        Ok(())
    }

    /// Subscribes this connection to `topic`; `Ok(false)` when it already was. The
    /// subscription applies to messages published after this returns, and ends with
    /// [`Ws::unsubscribe`] or when the connection closes.
    pub fn subscribe(&mut self, topic: &str) -> Result<bool, SubscribeError> {
        self.shard.topics.subscribe(self.id, topic)
    }

    /// Returns false when the connection was not subscribed to `topic`.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.shard.topics.unsubscribe(self.id, topic)
    }

    /// The topics this connection subscribes to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.shard.topics.topics_of(self.id)
    }

    /// Publishes `message` to every subscriber of `topic` except this connection; returns
    /// whether any shard had subscribers. Subscribers on this shard receive it when the
    /// current callback returns, others as soon as their shard wakes.
    ///
    /// When a shard is too far behind to take the message it is refused there
    /// ([`PublishError`]), and this connection stops being read until that shard has room:
    /// a publisher cannot outrun its subscribers' shards.
    pub fn publish(&mut self, topic: &str, message: Message<'_>) -> Result<bool, PublishError> {
        let result = self.shard.topics.publish(topic, message, Some(self.id));
        if result.is_err() {
            self.asked.publish_refused = true;
        }
        result
    }

    /// The shard's counters, for the server's own applications.
    pub(crate) fn counters(&self) -> &super::metrics::Counters {
        self.shard.counters()
    }

    /// What this connection's send queue costs now: bytes not yet written to its socket,
    /// plus the queue's own overhead.
    pub fn buffered_amount(&self) -> usize {
        let unflushed = if self.batched {
            self.shard.arena.pending()
        } else {
            0
        };
        self.io.queued_bytes(self.id) + unflushed
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if !opcode.is_control() {
            self.shard.counters().message_out();
        }
        if payload.len() >= LEND_MIN && self.send_lent(opcode, payload)? {
            return Ok(());
        }
        let shard = &mut *self.shard;
        if self.batched && shard.arena.pending() > 0 && !shard.arena.fits(payload.len() + 16) {
            // A new block would copy the frames pending in this one: queue them first.
            shard.flush(self.io, self.id);
        }
        let (writer, own_compressor) = self.parts.writer_and_compressor();
        write_message(
            writer,
            own_compressor,
            &mut shard.arena,
            &mut shard.compressors,
            opcode,
            payload,
        )?;
        if !self.batched {
            self.shard.flush(self.io, self.id);
        }
        Ok(())
    }

    /// Sends a payload that lies in the message being delivered straight from where it
    /// lies (the receive buffer, or the reader's assembly): its header from the arena, then
    /// the payload itself, shared. `Ok(false)` when it cannot go that way (it lies
    /// elsewhere, too many buffers are lent, or the connection compresses), and nothing was
    /// written.
    fn send_lent(&mut self, opcode: OpCode, payload: &[u8]) -> Result<bool, SendError> {
        if self.parts.writer.own_direction().is_some() {
            return Ok(false);
        }
        let delivered = self.shard.delivered.as_ref().filter(|whole| {
            let (part, whole) = (payload.as_ptr_range(), whole.as_ptr_range());
            whole.start <= part.start && part.end <= whole.end
        });
        let lent = match delivered {
            Some(whole) => whole.slice_ref(payload),
            None => match self.io.lend(payload) {
                Some(lent) => lent,
                None => return Ok(false),
            },
        };
        let out = self.shard.arena.room(MAX_HEADER_LEN);
        if !self.parts.writer.send_header(opcode, payload.len(), out)? {
            return Ok(false);
        }
        // The header, and any frame written before it, go first.
        self.shard.flush(self.io, self.id);
        self.io.send(self.id, lent);
        Ok(true)
    }
}
