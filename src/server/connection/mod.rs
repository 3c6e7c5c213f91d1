//! One connection's life in a shard: HTTP handshake, WebSocket session, deadlines, close.
//!
//! The connection is a state machine that never touches a socket: the shard hands it what
//! the runtime reported (bytes, drained, a deadline) with the current [`Time`], and it acts
//! through a [`Transport`]. Its deadlines are explicit [`Timer`]s; the shard only asks for
//! the earliest ([`Connection::poll_timeout`]) and calls [`Connection::handle_timeout`]
//! when it passes, so the ping and close policy runs the same on a virtual clock in tests.
//!
//! Once the server has decided to end a connection it always ends: a close frame we sent
//! must be answered within the close timeout ([`Timer::Close`]), bytes queued must make
//! progress within the idle timeout ([`Timer::SendStall`]), and once the runtime is told to
//! close, its own deadlines bound the rest.

mod deadlines;
mod flow;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod harness;
mod http;
mod timers;
mod upgrade;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::proto::deflate::Compressor;
use crate::proto::handshake::{Refusal, RequestParser};
use crate::proto::session::{Reader, Writer};
use crate::proto::{CloseCode, Event};
use crate::runtime::{CHUNK_OVERHEAD, ConnId, Tag};

use super::admission::proxy::{self, ProxyReader};
use super::app::{App, Closed, Message};
use super::config::SlowSubscriberPolicy;
use super::events;
use super::frames::write_message;
use super::publish_api::PublishBody;
use super::pubsub::{LagBound, Published};
use super::shard_state::ShardState;
use super::transport::Transport;
use super::ws::Ws;

pub use timers::{Clock, Time, Timer, Timers};

/// How often a connection paused behind a full shard queue checks whether it may read again.
const BACKLOG_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// What a connection's calls need from its shard, lent for one call.
pub(crate) struct Cx<'a> {
    pub id: ConnId,
    pub now: Time,
    pub shard: &'a mut ShardState,
    pub io: &'a mut dyn Transport,
}

/// A client's address in 18 bytes, 14 fewer than a `SocketAddr` in every connection: IPv4
/// as its IPv4-mapped IPv6 form (an IPv6 flow label and scope id are not kept).
#[derive(Clone, Copy, Debug)]
struct Peer {
    ip: [u8; 16],
    port: [u8; 2],
}

impl Peer {
    fn addr(self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip).to_canonical();
        SocketAddr::new(ip, u16::from_ne_bytes(self.port))
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Self {
            ip: ip.octets(),
            port: addr.port().to_ne_bytes(),
        }
    }
}

/// A connection's state, kept in the shard's table.
pub(crate) struct Connection<S> {
    peer: Peer,
    stage: Stage<S>,
    timers: Timers,
    /// When the peer last sent anything; idle pings count from here.
    last_seen: Time,
    /// Why reading is paused, if it is.
    paused: Option<Pause>,
    /// How the connection ended, for `on_close`: the first cause recorded.
    ending: Option<Box<(CloseCode, Box<str>)>>,
    /// Bytes of incomplete messages counted in the shard's budget.
    incomplete: usize,
    /// The low 32 bits of the bytes written when [`Timer::SendStall`] was armed: progress
    /// is measured from here (a stall is missed only if exactly a multiple of 4 GiB was
    /// written in one idle timeout, and then the next check catches it).
    stall_mark: u32,
    /// Counted in the server's WebSocket connections and its address's (see `admission`)
    /// until it closes.
    admitted: bool,
}

enum Stage<S> {
    /// Nothing of a request yet: a new connection, or one kept open between publish API
    /// requests (`kept_alive`).
    Waiting {
        kept_alive: bool,
    },
    /// Reading the PROXY protocol header a load balancer sends first.
    Proxy(Box<ProxyReader>),
    /// Reading the HTTP request; the parser holds the head until it is complete.
    Handshake(Box<RequestParser>),
    /// Reading the body of a publish API request.
    Body(Box<PublishBody>),
    Open(Open<S>),
    /// An HTTP response (a page or a refusal) is on its way; the connection closes after it.
    Responded,
}

/// An open WebSocket connection: the reader, and the parts a callback may use.
pub(crate) struct Open<S> {
    reader: Reader,
    parts: Parts<S>,
}

/// What an application callback borrows of an open connection.
pub(crate) struct Parts<S> {
    pub writer: Writer,
    pub state: S,
    /// What few connections have, boxed: one word in every open connection instead of three.
    extras: Option<Box<Extras>>,
}

/// An open connection's rarer parts.
struct Extras {
    protocol: Option<Box<str>>,
    /// A compressor of this connection's own, when it keeps context between messages.
    compressor: Option<Box<Compressor>>,
}

impl<S> Parts<S> {
    pub fn new(
        writer: Writer,
        state: S,
        protocol: Option<Box<str>>,
        compressor: Option<Box<Compressor>>,
    ) -> Self {
        let extras = (protocol.is_some() || compressor.is_some()).then(|| {
            Box::new(Extras {
                protocol,
                compressor,
            })
        });
        Self {
            writer,
            state,
            extras,
        }
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.extras.as_ref()?.protocol.as_deref()
    }

    /// The writer, and the connection's own compressor when it keeps context between
    /// messages.
    pub fn writer_and_compressor(&mut self) -> (&mut Writer, Option<&mut Compressor>) {
        let compressor = self
            .extras
            .as_mut()
            .and_then(|extras| extras.compressor.as_deref_mut());
        (&mut self.writer, compressor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// The send queue passed its bound; reading resumes once it drains.
    Backpressure,
    /// A publish found another shard's queue full; reading resumes once it has room.
    Backlog,
}

/// What a callback asked of the connection beyond sending, applied when it returns.
#[derive(Default)]
pub(crate) struct Asked {
    /// The application started the close handshake.
    pub close_sent: bool,
    /// A publish was refused by a shard that is behind.
    pub publish_refused: bool,
}

impl<S> Connection<S> {
    /// A connection from `peer`; one accepted on a listener that expects a PROXY header
    /// (`proxied`) reads it first, and takes the client's address from it.
    pub fn new(peer: SocketAddr, proxied: bool, cx: &mut Cx<'_>) -> Self {
        let config = &cx.shard.config;
        let mut timers = Timers::default();
        timers.set(Timer::Handshake, cx.now.after(config.handshake_timeout));
        let stage = match proxied {
            true => Stage::Proxy(Box::new(ProxyReader::new(config.max_header_bytes))),
            false => Stage::Waiting { kept_alive: false },
        };
        Self {
            peer: peer.into(),
            stage,
            timers,
            last_seen: cx.now,
            paused: None,
            ending: None,
            incomplete: 0,
            stall_mark: 0,
            admitted: false,
        }
    }

    /// The earliest deadline: the runtime should call [`Connection::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    /// Bytes of incomplete messages this connection holds.
    pub fn incomplete_bytes(&self) -> usize {
        self.incomplete
    }

    /// The peer sent `data`.
    pub fn on_data<A: App<State = S>>(&mut self, cx: &mut Cx<'_>, app: &mut A, data: &mut [u8]) {
        self.last_seen = cx.now;
        let mut data = data;
        // Each stage takes what is its own and hands the rest to the next: a PROXY header,
        // a request head, a body, more requests on a kept-alive connection, frames.
        loop {
            match &mut self.stage {
                Stage::Waiting { kept_alive } => {
                    if data.is_empty() {
                        return;
                    }
                    if proxy::looks_like_header(data) {
                        let refusal = Refusal::new(
                            400,
                            "a PROXY protocol header on a listener that does not expect one \
                             (see --listen-proxy)",
                        );
                        return self.refuse(cx, &refusal);
                    }
                    if *kept_alive {
                        let deadline = cx.now.after(cx.shard.config.handshake_timeout);
                        self.timers.set(Timer::Handshake, deadline);
                    }
                    self.stage = Stage::Handshake(http::request_parser(&cx.shard.config));
                }
                Stage::Proxy(reader) => match reader.feed(data) {
                    Ok(None) => return,
                    Err(problem) => return self.refuse(cx, &Refusal::new(400, problem)),
                    Ok(Some((header, used))) => {
                        if let Some(client) = header.source {
                            self.peer = client.into();
                        }
                        self.stage = Stage::Handshake(http::request_parser(&cx.shard.config));
                        data = &mut std::mem::take(&mut data)[used..];
                    }
                },
                Stage::Handshake(parser) => match parser.feed(data) {
                    Ok(None) => return,
                    Err(refusal) => return self.refuse(cx, &refusal),
                    Ok(Some(consumed)) => {
                        self.timers.stop(Timer::Handshake);
                        data = &mut std::mem::take(&mut data)[consumed..];
                        match self.answer(cx, app, data.is_empty()) {
                            // Frames may follow the request in the same read.
                            http::Answered::Open => break,
                            http::Answered::Body => {}
                            http::Answered::Done => return,
                        }
                    }
                },
                Stage::Body(body) => {
                    let used = body.feed(data);
                    data = &mut std::mem::take(&mut data)[used..];
                    if !body.is_complete() {
                        self.account_incomplete(cx);
                        return;
                    }
                    if !self.publish(cx) {
                        return;
                    }
                }
                Stage::Open(_) => break,
                // Anything after an HTTP response is ignored until the close.
                Stage::Responded => return,
            }
        }
        self.read_frames(cx, app, data);
    }

    /// Decodes frames and hands whole messages to the application.
    fn read_frames<A: App<State = S>>(&mut self, cx: &mut Cx<'_>, app: &mut A, data: &mut [u8]) {
        let Stage::Open(Open { reader, parts }) = &mut self.stage else {
            return;
        };
        // Once a read, not once a message: unpacking the stored address is not free.
        let peer = self.peer.addr();
        cx.shard.arena.rewind();
        let mut asked = Asked::default();
        let mut data = data;
        let mut ended = false;
        // The peer's close frame arrived: it has nothing more to send.
        let mut answered = false;
        while !data.is_empty() && !ended {
            // Replies the protocol writes (pong, the close reply, the failing close frame)
            // and the application's sends stay in the arena until the read ends, so a burst
            // of messages is answered in one queued chunk, not one each.
            let (arena, delivered) = (cx.shard.arena.room(256), &mut cx.shard.delivered);
            let result = reader.read_sharing(data, &mut parts.writer, arena, Some(delivered));
            let (used, event) = match result {
                Ok(read) => read,
                Err(err) => {
                    tracing::debug!(peer = %peer, code = u16::from(err.code), reason = err.reason, "protocol error");
                    note_ending(&mut self.ending, err.code, err.reason);
                    ended = true;
                    continue;
                }
            };
            match event {
                Some(Event::Text(text)) => {
                    cx.shard.counters().message_in();
                    let mut ws = Ws::new(cx, peer, parts, &mut asked).batched();
                    app.on_message(&mut ws, Message::Text(text));
                }
                Some(Event::Binary(bytes)) => {
                    cx.shard.counters().message_in();
                    let mut ws = Ws::new(cx, peer, parts, &mut asked).batched();
                    app.on_message(&mut ws, Message::Binary(bytes));
                }
                Some(Event::Close(frame)) => {
                    let (code, reason) =
                        frame.map_or((CloseCode::NO_STATUS, ""), |f| (f.code, f.reason));
                    note_ending(&mut self.ending, code, reason);
                    ended = true;
                    answered = true;
                }
                Some(Event::Pong(payload)) => {
                    if deadlines::answers_ping(&self.timers, payload, cx.shard.config.idle_timeout)
                    {
                        self.timers.stop(Timer::Pong);
                        let idle = cx.shard.config.idle_timeout;
                        self.timers.set(Timer::Idle, cx.now.after(idle));
                    }
                }
                Some(Event::Ping(_)) | None => {}
            }
            // The shared payload was for this event's callback only.
            cx.shard.delivered = None;
            data = &mut data[used..];
        }
        reader.release_delivered();
        cx.shard.flush(cx.io, cx.id);
        self.account_incomplete(cx);
        if ended {
            // The close handshake is done, or the connection failed: the reply or the
            // failing close frame is queued, and the runtime closes once it is written.
            if answered {
                return self.finish_answered(cx);
            }
            return self.finish(cx);
        }
        self.apply(cx, asked);
    }

    /// Queues a published message to this subscriber, then applies the slow-subscriber
    /// policy if its queue has grown past the bound. `stamp` is its publish time on the
    /// shard's clock (made once for all subscribers).
    pub fn deliver(&mut self, cx: &mut Cx<'_>, published: &Published, stamp: Tag) {
        let Stage::Open(open) = &mut self.stage else {
            return;
        };
        let parts = &mut open.parts;
        if !parts.writer.is_open() {
            return;
        }
        let (id, shard) = (cx.id, &mut *cx.shard);
        let limit = shard.config.max_queued_bytes;
        let policy = shard.config.slow_subscriber;
        let (writer, own_compressor) = parts.writer_and_compressor();
        let frame_cost = if let Some(compressor) = own_compressor {
            // This connection's compressor keeps context: the message must pass through it,
            // and the frame it makes can never be dropped (later ones depend on it).
            let (opcode, payload) = (published.opcode(), published.payload());
            let (arena, shared) = (&mut shard.arena, &mut shard.compressors);
            if write_message(writer, Some(compressor), arena, shared, opcode, payload).is_err() {
                return;
            }
            let Some(frame) = shard.arena.take() else {
                return;
            };
            // What the queue charges for it: its bytes and the entry.
            let cost = frame.len() + CHUNK_OVERHEAD;
            cx.io.send(id, frame);
            cost
        } else {
            // Stamped with the publish time: the kernel taking it closes the measurement,
            // and the lag bound measures the deliveries queued before it against it.
            let newest = stamp.get();
            if let Some(bound) = LagBound::new(shard.config.max_delivery_lag)
                && let Some(oldest) = cx.io.oldest_tag(id)
                && bound.is_stale(newest, oldest.get())
            {
                if policy == SlowSubscriberPolicy::Close {
                    return self.close_slow(cx, "subscriber too slow: lagging past its limit");
                }
                let past_half = &mut |queued: Tag| bound.is_past_half(newest, queued.get());
                let dropped = cx.io.drop_stale(id, past_half);
                shard.counters().dropped(dropped.chunks);
                shard.counters().dropped_stale(dropped.chunks);
            }
            let direction = parts.writer.own_direction();
            let counters = shard.topics.counters();
            let frame = published.frame_for(direction, &mut shard.compressors, counters);
            let cost = frame.len() + CHUNK_OVERHEAD;
            if policy == SlowSubscriberPolicy::DropOldest && cx.io.queued_bytes(id) + cost > limit {
                // Down to half the bound at once, so the next deliveries need not drop.
                let dropped = cx.io.drop_oldest(id, limit / 2);
                shard.counters().dropped(dropped.chunks);
            }
            cx.io.send_tagged(id, frame, stamp);
            cost
        };
        cx.shard.counters().delivered();
        cx.shard.counters().message_out();
        // Dropping keeps the queue within the bound plus the newest message; what is left
        // over that cannot be dropped, and the close policy, end the subscription.
        let allowance = match policy {
            SlowSubscriberPolicy::DropOldest => limit.saturating_add(frame_cost),
            SlowSubscriberPolicy::Close => limit,
        };
        if cx.io.queued_bytes(id) > allowance {
            cx.shard.counters().queue_bound_hit();
            return self.close_slow(cx, "subscriber too slow: send queue over its limit");
        }
        self.watch_send_queue(cx);
    }

    /// Closes a subscriber the slow-subscriber policy gave up on, with 1008 and `reason`.
    fn close_slow(&mut self, cx: &mut Cx<'_>, reason: &str) {
        // The close frame should not wait behind messages the subscriber will never read.
        let dropped = cx.io.drop_oldest(cx.id, 0);
        cx.shard.counters().dropped(dropped.chunks);
        cx.shard.counters().slow_closed();
        self.close(cx, CloseCode::POLICY_VIOLATION, reason);
    }

    /// The runtime wrote out everything queued for this connection.
    pub fn on_drained<A: App<State = S>>(&mut self, cx: &mut Cx<'_>, app: &mut A) {
        self.timers.stop(Timer::SendStall);
        if self.paused != Some(Pause::Backpressure) {
            return;
        }
        self.paused = None;
        cx.io.resume_recv(cx.id);
        self.callback(cx, app, |ws, app| app.on_drain(ws));
    }

    /// Starts the close handshake from the server's side (shutdown, a policy); the peer
    /// has the close timeout to answer.
    pub fn close(&mut self, cx: &mut Cx<'_>, code: CloseCode, reason: &str) {
        match &mut self.stage {
            Stage::Open(open) => {
                if open
                    .parts
                    .writer
                    .close(code, reason, cx.shard.arena.room(128))
                    .is_err()
                {
                    // A close frame is already out (its timer runs) or the handshake is done.
                    return;
                }
                note_ending(&mut self.ending, code, reason);
                cx.shard.flush(cx.io, cx.id);
                self.await_close(cx);
            }
            Stage::Waiting { .. } | Stage::Proxy(_) | Stage::Handshake(_) | Stage::Body(_) => {
                self.abort(cx)
            }
            Stage::Responded => {}
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer.addr()
    }

    /// The runtime closed the connection (`cause` says how the transport ended); the
    /// application gets its state back.
    pub fn on_closed<A: App<State = S>>(
        self,
        shard: &mut ShardState,
        app: &mut A,
        cause: impl std::fmt::Display,
    ) {
        shard.incomplete_bytes -= self.incomplete;
        if self.admitted {
            shard.admission.release(self.peer.addr().ip());
            shard.counters().websocket_closed();
        }
        if let Stage::Open(open) = self.stage {
            let ending = self.ending.map(|ending| *ending);
            let (code, reason) = ending.unwrap_or((CloseCode::ABNORMAL, "".into()));
            shard.counters().families.closes.count(code.as_u16());
            let loud = shard.config.log_connections;
            events::closed(loud, shard.index(), self.peer.addr(), code, &reason, &cause);
            app.on_close(
                open.parts.state,
                Closed {
                    code,
                    reason: &reason,
                },
            );
        }
    }

    /// Our close frame is out: only its answer (or the close timeout) matters now.
    fn await_close(&mut self, cx: &mut Cx<'_>) {
        self.timers.stop_all();
        self.timers
            .set(Timer::Close, cx.now.after(cx.shard.config.close_timeout));
    }

    /// Runs `f` with a [`Ws`] for this connection, if it is open, then applies what it asked.
    fn callback<A: App<State = S>>(
        &mut self,
        cx: &mut Cx<'_>,
        app: &mut A,
        f: impl FnOnce(&mut Ws<'_, A>, &mut A),
    ) {
        let Stage::Open(open) = &mut self.stage else {
            return;
        };
        let mut asked = Asked::default();
        f(
            &mut Ws::new(cx, self.peer.addr(), &mut open.parts, &mut asked),
            app,
        );
        self.apply(cx, asked);
    }

    /// The WebSocket is done: the runtime writes out what is queued, then closes, within
    /// its own deadlines.
    fn finish(&mut self, cx: &mut Cx<'_>) {
        self.timers.stop_all();
        cx.io.close(cx.id);
    }

    /// [`Connection::finish`] after the close handshake: the peer has nothing more to send,
    /// so the runtime need not linger for its FIN.
    fn finish_answered(&mut self, cx: &mut Cx<'_>) {
        self.timers.stop_all();
        cx.io.close_answered(cx.id);
    }

    fn abort(&mut self, cx: &mut Cx<'_>) {
        self.timers.stop_all();
        cx.io.abort(cx.id);
    }
}

/// Records why the connection ends, unless a cause was recorded first.
fn note_ending(ending: &mut Option<Box<(CloseCode, Box<str>)>>, code: CloseCode, reason: &str) {
    if ending.is_none() {
        *ending = Some(Box::new((code, reason.into())));
    }
}
