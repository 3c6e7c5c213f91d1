//! One connection's life in a shard: HTTP handshake, WebSocket session, close.
//!
//! The shard calls in with what the runtime reported (bytes, a deadline, drained, closed);
//! this module drives the protocol and tells the runtime what to do through [`Transport`].

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::proto::deflate::{self, Compressor, DeflateParams};
use crate::proto::handshake::{self, Rejection, Request, RequestParser};
use crate::proto::session::{Session, SessionConfig, State};
use crate::proto::{CloseCode, Event, Role};

use super::app::{Accept, App, Closed, Message, Reject, Upgrade};
use super::config::{BackpressurePolicy, SlowSubscriberPolicy};
use super::core::ShardCore;
use super::handle::{Ws, send_message};
use super::pubsub::Published;
use super::transport::{ConnId, Transport};

/// A connection's state, kept in the shard's table under its [`ConnId`].
pub(crate) struct Connection<S> {
    peer: SocketAddr,
    phase: Phase<S>,
    /// When the peer last sent anything; idle pings count from here.
    last_seen: Instant,
    /// A ping went out for idleness and no byte has come back since.
    ping_outstanding: bool,
    /// Reading is paused until the send queue drains.
    paused: bool,
    /// How the connection ended, for `on_close`.
    ending: Option<(CloseCode, String)>,
}

enum Phase<S> {
    /// Reading the HTTP request; the parser holds the head until it is complete.
    Handshake(Box<RequestParser>),
    Open(Open<S>),
    /// An HTTP response (a page or a refusal) is on its way; the connection closes after it.
    Http,
}

struct Open<S> {
    session: Session,
    state: S,
    protocol: Option<Box<str>>,
    /// A compressor of this connection's own, when it keeps context between messages.
    compressor: Option<Box<Compressor>>,
}

impl<S> Connection<S> {
    pub fn new(peer: SocketAddr, core: &ShardCore, now: Instant) -> Self {
        let limits = handshake::Limits {
            max_head_bytes: core.config.max_header_bytes,
            ..Default::default()
        };
        Self {
            peer,
            phase: Phase::Handshake(Box::new(RequestParser::new(limits))),
            last_seen: now,
            ping_outstanding: false,
            paused: false,
            ending: None,
        }
    }

    /// The peer sent `data`.
    pub fn on_data<A: App<State = S>>(
        &mut self,
        id: ConnId,
        data: &mut [u8],
        app: &mut A,
        core: &mut ShardCore,
        io: &mut dyn Transport,
        now: Instant,
    ) {
        self.last_seen = now;
        self.ping_outstanding = false;
        let data = match &mut self.phase {
            Phase::Handshake(parser) => match parser.feed(data) {
                Ok(None) => return,
                Err(rejection) => return self.refuse(id, &rejection, io),
                Ok(Some(consumed)) => {
                    let parser = match std::mem::replace(&mut self.phase, Phase::Http) {
                        Phase::Handshake(parser) => parser,
                        _ => unreachable!("the phase was just matched as a handshake"),
                    };
                    let Some(request) = parser.request() else {
                        return io.abort(id);
                    };
                    if !self.upgrade(id, request, app, core, io) {
                        return;
                    }
                    // Frames may follow the request in the same read.
                    &mut data[consumed..]
                }
            },
            Phase::Open(_) => data,
            // Anything after a refused request is ignored until the close.
            Phase::Http => return,
        };
        self.read_frames(id, data, app, core, io);
    }

    /// Answers a complete request: an upgrade, a plain page, or a refusal. Returns whether
    /// the connection is now a WebSocket.
    fn upgrade<A: App<State = S>>(
        &mut self,
        id: ConnId,
        request: &Request,
        app: &mut A,
        core: &mut ShardCore,
        io: &mut dyn Transport,
    ) -> bool {
        let key = match handshake::validate(request) {
            Ok(upgrade) => upgrade.key,
            Err(rejection) if rejection.is_plain_http() && request.method() == "GET" => {
                let mut response = Vec::new();
                if core.config.metrics && request.path() == "/metrics" {
                    let metrics = core.topics.hub().metrics().render();
                    let kind = "text/plain; version=0.0.4; charset=utf-8";
                    handshake::write_response(&mut response, 200, kind, &metrics);
                } else {
                    let kind = "text/plain; charset=utf-8";
                    handshake::write_response(&mut response, 200, kind, app.http_page());
                }
                self.respond_and_close(id, response, io);
                return false;
            }
            Err(rejection) => {
                self.refuse(id, &rejection, io);
                return false;
            }
        };
        let config = &core.config;
        if !config.origin_allowed(request.origin()) {
            self.refuse(id, &Rejection::new(403, "origin not allowed"), io);
            return false;
        }
        let protocol = handshake::select_protocol(request.protocols(), &config.subprotocols);
        let decision = app.upgrade(&Upgrade {
            request,
            peer: self.peer,
            protocol,
        });
        let Accept {
            state,
            protocol: chosen,
        } = match decision {
            Ok(accept) => accept,
            Err(Reject { status, message }) => {
                self.refuse(id, &Rejection::new(status, message), io);
                return false;
            }
        };
        let protocol: Option<Box<str>> = match chosen {
            Some(chosen) if request.protocols().any(|offered| offered == chosen) => {
                Some(chosen.into())
            }
            Some(_) => {
                self.refuse(
                    id,
                    &Rejection::new(
                        500,
                        "the application chose a subprotocol the client did not offer",
                    ),
                    io,
                );
                return false;
            }
            None => protocol.map(Into::into),
        };
        let agreement = negotiate_deflate(request, core);

        let mut response = Vec::with_capacity(256);
        handshake::write_accept(
            &mut response,
            key,
            protocol.as_deref(),
            agreement.as_ref().map(|a| a.response.as_str()),
        );
        io.send(id, Bytes::from(response));

        let deflate = agreement.map(|a| a.params);
        let compressor = deflate.and_then(|params| own_compressor(params, core));
        let session = Session::new(
            Role::Server,
            SessionConfig {
                max_message_size: core.config.max_message_size,
                deflate,
            },
        );
        self.phase = Phase::Open(Open {
            session,
            state,
            protocol,
            compressor,
        });
        self.arm_idle_timer(id, core, io);
        self.with_ws(id, core, io, |ws, app| app.on_open(ws), app);
        true
    }

    /// Decodes frames and hands whole messages to the application.
    fn read_frames<A: App<State = S>>(
        &mut self,
        id: ConnId,
        mut data: &mut [u8],
        app: &mut A,
        core: &mut ShardCore,
        io: &mut dyn Transport,
    ) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let Open {
            session,
            state,
            protocol,
            compressor,
        } = open;
        let Session { reader, writer } = session;
        while !data.is_empty() {
            let result = reader.read(data, writer, core.arena.room(256));
            if let Some(replies) = core.arena.take() {
                io.send(id, replies);
            }
            let (used, event) = match result {
                Ok(read) => read,
                Err(err) => {
                    tracing::debug!(peer = %self.peer, code = u16::from(err.code), reason = err.reason, "protocol error");
                    // The close frame naming the error is queued; close once it is written.
                    self.ending = Some((err.code, err.reason.to_owned()));
                    io.close(id);
                    return;
                }
            };
            let message = match event {
                Some(Event::Text(text)) => Some(Message::Text(text)),
                Some(Event::Binary(data)) => Some(Message::Binary(data)),
                Some(Event::Close(frame)) => {
                    let (code, reason) =
                        frame.map_or((CloseCode::NO_STATUS, ""), |f| (f.code, f.reason));
                    self.ending = Some((code, reason.to_owned()));
                    // Our reply (or our own close, earlier) is queued: the handshake is done.
                    io.close(id);
                    return;
                }
                Some(Event::Ping(_) | Event::Pong(_)) | None => None,
            };
            if let Some(message) = message {
                let mut ws = Ws::<A> {
                    id,
                    peer: self.peer,
                    protocol: protocol.as_deref(),
                    writer,
                    state,
                    compressor,
                    core,
                    io,
                };
                app.on_message(&mut ws, message);
            }
            data = &mut data[used..];
        }
        self.apply_backpressure(id, core, io);
    }

    /// Past the bound on queued bytes, pause reading or close, as configured.
    fn apply_backpressure(&mut self, id: ConnId, core: &mut ShardCore, io: &mut dyn Transport) {
        if self.paused || io.queued_bytes(id) <= core.config.max_queued_bytes {
            return;
        }
        match core.config.backpressure {
            BackpressurePolicy::PauseReading => {
                self.paused = true;
                io.pause_recv(id);
            }
            BackpressurePolicy::Close => {
                let reason = "send queue over its limit: the client reads too slowly";
                self.close_with(id, CloseCode::POLICY_VIOLATION, reason, core, io);
            }
        }
    }

    /// Queues a published message to this subscriber, then applies the slow-subscriber
    /// policy if its queue has grown past the bound.
    pub fn deliver(
        &mut self,
        id: ConnId,
        published: &Published,
        core: &mut ShardCore,
        io: &mut dyn Transport,
    ) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let writer = &mut open.session.writer;
        if !writer.is_open() {
            return;
        }
        let limit = core.config.max_queued_bytes;
        let policy = core.config.slow_subscriber;
        let frame_len = if open.compressor.is_some() {
            // This connection's compressor keeps context: the message must pass through it,
            // and the frame it makes can never be dropped (later ones depend on it).
            let (opcode, payload) = (published.opcode(), published.payload());
            if send_message(writer, &mut open.compressor, core, opcode, payload).is_err() {
                return;
            }
            let Some(frame) = core.arena.take() else {
                return;
            };
            let len = frame.len();
            io.send(id, frame);
            len
        } else {
            let counters = core.topics.counters();
            let direction = writer.own_direction();
            let frame = published.frame_for(direction, &mut core.compressors, counters);
            let len = frame.len();
            if policy == SlowSubscriberPolicy::DropOldest && io.queued_bytes(id) + len > limit {
                let dropped = io.drop_oldest(id, limit.saturating_sub(len));
                core.topics.counters().dropped(dropped.chunks);
            }
            io.send_droppable(id, frame);
            len
        };
        core.topics.counters().delivered();
        // Dropping keeps the queue within the bound plus the newest message; what is left
        // over that cannot be dropped, and the close policy, end the subscription.
        let allowance = match policy {
            SlowSubscriberPolicy::DropOldest => limit.saturating_add(frame_len),
            SlowSubscriberPolicy::Close => limit,
        };
        if io.queued_bytes(id) > allowance {
            // The close frame should not wait behind messages the subscriber will never read.
            let dropped = io.drop_oldest(id, 0);
            core.topics.counters().dropped(dropped.chunks);
            core.topics.counters().slow_closed();
            let reason = "subscriber too slow: send queue over its limit";
            self.close_with(id, CloseCode::POLICY_VIOLATION, reason, core, io);
        }
    }

    /// The runtime wrote out everything queued for this connection.
    pub fn on_drained<A: App<State = S>>(
        &mut self,
        id: ConnId,
        app: &mut A,
        core: &mut ShardCore,
        io: &mut dyn Transport,
    ) {
        if !std::mem::take(&mut self.paused) {
            return;
        }
        io.resume_recv(id);
        self.with_ws(id, core, io, |ws, app| app.on_drain(ws), app);
    }

    /// The connection's deadline passed: handshake too slow, idle, or close unanswered.
    pub fn on_deadline(
        &mut self,
        id: ConnId,
        core: &mut ShardCore,
        io: &mut dyn Transport,
        now: Instant,
    ) {
        let Phase::Open(open) = &mut self.phase else {
            if matches!(self.phase, Phase::Handshake(_)) {
                self.refuse(
                    id,
                    &Rejection::new(408, "handshake not completed in time"),
                    io,
                );
            } else {
                io.abort(id);
            }
            return;
        };
        if open.session.state() != State::Open {
            // Our close frame went unanswered.
            io.abort(id);
            return;
        }
        let idle = core.config.idle_timeout;
        let silent = now.saturating_duration_since(self.last_seen);
        if idle.is_zero() {
            return;
        }
        if silent < idle {
            io.set_deadline(id, idle - silent);
        } else if !self.ping_outstanding {
            self.ping_outstanding = true;
            if open.session.writer.ping(b"", core.arena.room(8)).is_ok()
                && let Some(ping) = core.arena.take()
            {
                io.send(id, ping);
            }
            io.set_deadline(id, idle);
        } else {
            self.close_with(
                id,
                CloseCode::GOING_AWAY,
                "idle timeout: no answer to ping",
                core,
                io,
            );
        }
    }

    /// Starts the close handshake from the server's side.
    pub fn close_with(
        &mut self,
        id: ConnId,
        code: CloseCode,
        reason: &str,
        core: &mut ShardCore,
        io: &mut dyn Transport,
    ) {
        match &mut self.phase {
            Phase::Open(open) => {
                if open
                    .session
                    .writer
                    .close(code, reason, core.arena.room(128))
                    .is_ok()
                {
                    self.ending = Some((code, reason.to_owned()));
                }
                if let Some(frame) = core.arena.take() {
                    io.send(id, frame);
                }
                io.set_deadline(id, core.config.close_timeout);
            }
            Phase::Handshake(_) => io.abort(id),
            Phase::Http => {}
        }
    }

    /// The runtime closed the connection; the application gets its state back.
    pub fn on_closed<A: App<State = S>>(self, app: &mut A) {
        if let Phase::Open(open) = self.phase {
            let (code, reason) = self.ending.unwrap_or((CloseCode::ABNORMAL, String::new()));
            app.on_close(
                open.state,
                Closed {
                    code,
                    reason: &reason,
                },
            );
        }
    }

    fn arm_idle_timer(&self, id: ConnId, core: &ShardCore, io: &mut dyn Transport) {
        let idle = core.config.idle_timeout;
        if !idle.is_zero() {
            io.set_deadline(id, idle);
        }
    }

    fn refuse(&mut self, id: ConnId, rejection: &Rejection, io: &mut dyn Transport) {
        let mut response = Vec::new();
        rejection.write(&mut response);
        self.respond_and_close(id, response, io);
    }

    fn respond_and_close(&mut self, id: ConnId, response: Vec<u8>, io: &mut dyn Transport) {
        self.phase = Phase::Http;
        io.send(id, Bytes::from(response));
        io.close(id);
    }

    /// Runs `f` with a [`Ws`] for this connection, if it is open.
    fn with_ws<A: App<State = S>>(
        &mut self,
        id: ConnId,
        core: &mut ShardCore,
        io: &mut dyn Transport,
        f: impl FnOnce(&mut Ws<'_, A>, &mut A),
        app: &mut A,
    ) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let mut ws = Ws::<A> {
            id,
            peer: self.peer,
            protocol: open.protocol.as_deref(),
            writer: &mut open.session.writer,
            state: &mut open.state,
            compressor: &mut open.compressor,
            core,
            io,
        };
        f(&mut ws, app);
    }
}

/// The server's answer to the client's permessage-deflate offers: the first it can accept.
fn negotiate_deflate(request: &Request, core: &ShardCore) -> Option<deflate::Agreement> {
    let config = core.config.deflate.as_ref()?;
    request
        .extension_offers()
        .into_iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(deflate::EXTENSION_NAME))
        .find_map(|offer| {
            let params = offer
                .params
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()));
            deflate::accept_offer(config, params).ok()
        })
}

/// A connection keeps its own compressor only when the server keeps context between
/// messages; otherwise the shard's shared ones serve it.
fn own_compressor(params: DeflateParams, core: &ShardCore) -> Option<Box<Compressor>> {
    let config = core.config.deflate.as_ref()?;
    let direction = params.server();
    if direction.no_context_takeover {
        return None;
    }
    Compressor::new(direction, config).map(Box::new)
}
