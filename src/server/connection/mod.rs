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

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod harness;
mod timers;
mod upgrade;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use crate::proto::deflate::Compressor;
use crate::proto::handshake::{self, Refusal, RequestParser};
use crate::proto::session::{Reader, Writer};
use crate::proto::{CloseCode, Event, ProtocolError};
use crate::runtime::{CHUNK_OVERHEAD, ConnId, Tag};

use super::admission::proxy::{self, ProxyReader};
use super::app::{App, Closed, Message};
use super::config::{BackpressurePolicy, ServerConfig, SlowSubscriberPolicy};
use super::events;
use super::frames::write_message;
use super::publish_api::{self, PublishBody};
use super::pubsub::Published;
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

/// A connection's state, kept in the shard's table.
pub(crate) struct Connection<S> {
    peer: SocketAddr,
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
    /// Bytes written when [`Timer::SendStall`] was armed: progress is measured from here.
    stall_mark: u64,
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
    pub protocol: Option<Box<str>>,
    /// A compressor of this connection's own, when it keeps context between messages.
    pub compressor: Option<Box<Compressor>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// The send queue passed its bound; reading resumes once it drains.
    Backpressure,
    /// A publish found another shard's queue full; reading resumes once it has room.
    Backlog,
}

/// Where a complete request head left the connection.
enum Answered {
    /// A WebSocket: frames may follow in the same read.
    Open,
    /// A request body follows.
    Body,
    /// Answered; nothing more is read.
    Done,
}

/// What a callback asked of the connection beyond sending, applied when it returns.
#[derive(Default)]
pub(crate) struct Asked {
    /// The application started the close handshake.
    pub close_sent: bool,
    /// A publish was refused by a shard that is behind.
    pub publish_refused: bool,
}

/// A parser for the next request head.
fn request_parser(config: &ServerConfig) -> Box<RequestParser> {
    let limits = handshake::Limits {
        max_head_bytes: config.max_header_bytes,
        ..Default::default()
    };
    Box::new(RequestParser::new(limits))
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
            peer,
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
                    self.stage = Stage::Handshake(request_parser(&cx.shard.config));
                }
                Stage::Proxy(reader) => match reader.feed(data) {
                    Ok(None) => return,
                    Err(problem) => return self.refuse(cx, &Refusal::new(400, problem)),
                    Ok(Some((header, used))) => {
                        if let Some(client) = header.source {
                            self.peer = client;
                        }
                        self.stage = Stage::Handshake(request_parser(&cx.shard.config));
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
                            Answered::Open => break,
                            Answered::Body => {}
                            Answered::Done => return,
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

    /// Answers the complete request the parser holds; `head_only` says no byte followed it
    /// in this read.
    fn answer<A: App<State = S>>(
        &mut self,
        cx: &mut Cx<'_>,
        app: &mut A,
        head_only: bool,
    ) -> Answered {
        let Stage::Handshake(parser) = std::mem::replace(&mut self.stage, Stage::Responded) else {
            return Answered::Done;
        };
        let Some(request) = parser.request() else {
            cx.io.abort(cx.id);
            return Answered::Done;
        };
        // With the API off, only a POST there is answered (naming the setting): other
        // requests get what they always got.
        let api_on = cx.shard.admission.publish_api_on();
        if publish_api::is_api_request(request) && (api_on || request.method() == "POST") {
            return match publish_api::start(request, &cx.shard.admission, &cx.shard.config) {
                Ok(body) => {
                    if body.expects_continue() && head_only {
                        cx.io.send(cx.id, publish_api::CONTINUE.into());
                    }
                    let deadline = cx.now.after(cx.shard.config.handshake_timeout);
                    self.timers.set(Timer::Handshake, deadline);
                    self.stage = Stage::Body(body);
                    self.account_incomplete(cx);
                    Answered::Body
                }
                Err(answer) => {
                    self.respond_to_api(cx, &answer);
                    Answered::Done
                }
            };
        }
        // Behind trusted proxies, the client is who `X-Forwarded-For` says.
        self.peer = cx.shard.admission.client_addr(self.peer, request);
        match upgrade::answer(request, self.peer, app, cx.shard, cx.now) {
            upgrade::Answer::Page(response) => {
                self.respond_and_close(cx, response);
                Answered::Done
            }
            upgrade::Answer::Refuse(refusal) => {
                self.refuse(cx, &refusal);
                Answered::Done
            }
            upgrade::Answer::Accept { response, open } => {
                self.admitted = true;
                cx.shard.counters().websocket_opened();
                cx.shard.counters().families.handshakes.count(101);
                let loud = cx.shard.config.log_connections;
                events::opened(loud, cx.shard.index(), self.peer, request.path());
                cx.io.send(cx.id, response.into());
                self.stage = Stage::Open(open);
                let idle = cx.shard.config.idle_timeout;
                if !idle.is_zero() {
                    self.timers.set(Timer::Idle, cx.now.after(idle));
                }
                self.callback(cx, app, |ws, app| app.on_open(ws));
                Answered::Open
            }
        }
    }

    /// Publishes the complete body of a publish API request and answers it. Returns whether
    /// the connection stays open for another request.
    fn publish(&mut self, cx: &mut Cx<'_>) -> bool {
        let Stage::Body(body) = std::mem::replace(&mut self.stage, Stage::Responded) else {
            return false;
        };
        self.timers.stop(Timer::Handshake);
        let answer = body.publish(&mut cx.shard.topics, cx.shard.config.max_topic_len);
        self.account_incomplete(cx);
        self.respond_to_api(cx, &answer);
        answer.keep_alive
    }

    /// Sends a publish API answer; keeps the connection for the next request if the answer
    /// says so (closing it once an idle timeout passes with none), else closes it.
    fn respond_to_api(&mut self, cx: &mut Cx<'_>, answer: &publish_api::Answer) {
        cx.shard
            .counters()
            .families
            .publish_api
            .count(answer.status);
        let mut response = Vec::new();
        answer.write(&mut response);
        if !answer.keep_alive {
            return self.respond_and_close(cx, response);
        }
        cx.io.send(cx.id, response.into());
        self.stage = Stage::Waiting { kept_alive: true };
        let config = &cx.shard.config;
        let idle = match config.idle_timeout.is_zero() {
            true => config.handshake_timeout,
            false => config.idle_timeout,
        };
        self.timers.set(Timer::Handshake, cx.now.after(idle));
        // A backend that sends requests and never reads the answers stops being read.
        self.after_sending(cx);
    }

    /// Decodes frames and hands whole messages to the application.
    fn read_frames<A: App<State = S>>(&mut self, cx: &mut Cx<'_>, app: &mut A, data: &mut [u8]) {
        let Stage::Open(Open { reader, parts }) = &mut self.stage else {
            return;
        };
        let mut asked = Asked::default();
        let mut data = data;
        let mut ended = false;
        while !data.is_empty() && !ended {
            // Replies the protocol writes (pong, the close reply, the failing close frame)
            // stay in the arena until the application sends or the read ends, so a burst
            // of pings is answered in one queued chunk, not one each.
            let result = reader.read(data, &mut parts.writer, cx.shard.arena.room(256));
            let (used, event) = match result {
                Ok(read) => read,
                Err(err) => {
                    tracing::debug!(peer = %self.peer, code = u16::from(err.code), reason = err.reason, "protocol error");
                    note_ending(&mut self.ending, err.code, err.reason);
                    ended = true;
                    continue;
                }
            };
            match event {
                Some(Event::Text(text)) => {
                    cx.shard.counters().message_in();
                    let mut ws = Ws::new(cx, self.peer, parts, &mut asked);
                    app.on_message(&mut ws, Message::Text(text));
                }
                Some(Event::Binary(bytes)) => {
                    cx.shard.counters().message_in();
                    let mut ws = Ws::new(cx, self.peer, parts, &mut asked);
                    app.on_message(&mut ws, Message::Binary(bytes));
                }
                Some(Event::Close(frame)) => {
                    let (code, reason) =
                        frame.map_or((CloseCode::NO_STATUS, ""), |f| (f.code, f.reason));
                    note_ending(&mut self.ending, code, reason);
                    ended = true;
                }
                Some(Event::Pong(payload)) => {
                    if answers_ping(&self.timers, payload, cx.shard.config.idle_timeout) {
                        self.timers.stop(Timer::Pong);
                        let idle = cx.shard.config.idle_timeout;
                        self.timers.set(Timer::Idle, cx.now.after(idle));
                    }
                }
                Some(Event::Ping(_)) | None => {}
            }
            data = &mut data[used..];
        }
        reader.release_delivered();
        cx.shard.flush(cx.io, cx.id);
        self.account_incomplete(cx);
        if ended {
            // The close handshake is done, or the connection failed: the reply or the
            // failing close frame is queued, and the runtime closes once it is written.
            return self.finish(cx);
        }
        self.apply(cx, asked);
    }

    /// Queues a published message to this subscriber, then applies the slow-subscriber
    /// policy if its queue has grown past the bound.
    pub fn deliver(&mut self, cx: &mut Cx<'_>, published: &Published) {
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
        let frame_cost = if let Some(compressor) = parts.compressor.as_deref_mut() {
            // This connection's compressor keeps context: the message must pass through it,
            // and the frame it makes can never be dropped (later ones depend on it).
            let (opcode, payload) = (published.opcode(), published.payload());
            let (arena, shared) = (&mut shard.arena, &mut shard.compressors);
            if write_message(
                &mut parts.writer,
                Some(compressor),
                arena,
                shared,
                opcode,
                payload,
            )
            .is_err()
            {
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
            let direction = parts.writer.own_direction();
            let counters = shard.topics.counters();
            let frame = published.frame_for(direction, &mut shard.compressors, counters);
            let cost = frame.len() + CHUNK_OVERHEAD;
            if policy == SlowSubscriberPolicy::DropOldest && cx.io.queued_bytes(id) + cost > limit {
                // Down to half the bound at once, so the next deliveries need not drop.
                let dropped = cx.io.drop_oldest(id, limit / 2);
                shard.counters().dropped(dropped.chunks);
            }
            // Stamped with the publish time: the kernel taking it closes the measurement.
            let stamp = shard.clock.micros(published.published_at());
            cx.io
                .send_tagged(id, frame, Tag::new(stamp).unwrap_or(Tag::MIN));
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
            // The close frame should not wait behind messages the subscriber will never read.
            let dropped = cx.io.drop_oldest(id, 0);
            cx.shard.counters().dropped(dropped.chunks);
            cx.shard.counters().slow_closed();
            let reason = "subscriber too slow: send queue over its limit";
            return self.close(cx, CloseCode::POLICY_VIOLATION, reason);
        }
        self.watch_send_queue(cx);
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

    /// Handles every deadline that has passed.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let config = cx.shard.config.clone();
        while let Some(timer) = self.timers.expired(cx.now) {
            match timer {
                Timer::Handshake => {
                    match self.stage {
                        // A kept-alive connection that sent nothing more: close it quietly.
                        Stage::Waiting { kept_alive: true } => {
                            self.stage = Stage::Responded;
                            return self.finish(cx);
                        }
                        Stage::Body(_) => {
                            let refusal = Refusal::new(408, "request body not completed in time");
                            let answer = publish_api::Answer::refused(refusal);
                            self.respond_to_api(cx, &answer);
                            return self.account_incomplete(cx);
                        }
                        _ => {}
                    }
                    let refusal = Refusal::new(408, "request not completed in time");
                    return self.refuse(cx, &refusal);
                }
                // Our close frame went unanswered.
                Timer::Close => return self.abort(cx),
                Timer::Pong => {
                    cx.shard.counters().ping_timeout();
                    let reason = "idle timeout: no pong to the server's ping";
                    return self.close(cx, CloseCode::GOING_AWAY, reason);
                }
                Timer::SendStall => {
                    if cx.io.queued_bytes(cx.id) == 0 {
                        continue;
                    }
                    let written = cx.io.written_bytes(cx.id);
                    if written != self.stall_mark {
                        self.stall_mark = written;
                        self.timers
                            .set(Timer::SendStall, cx.now.after(config.idle_timeout));
                        continue;
                    }
                    // The peer reads nothing: a close frame would never reach it.
                    tracing::debug!(peer = %self.peer, "send queue made no progress: aborting");
                    cx.shard.counters().stalled_closed();
                    note_ending(
                        &mut self.ending,
                        CloseCode::ABNORMAL,
                        "the peer stopped reading",
                    );
                    return self.abort(cx);
                }
                Timer::Idle => self.on_idle(cx),
                Timer::Drain => {
                    return self.close(cx, CloseCode::GOING_AWAY, "server shutting down");
                }
                Timer::Backlog => {
                    let bound = cx.shard.config.max_shard_backlog;
                    if cx.shard.topics.largest_backlog() > bound / 2 {
                        self.timers
                            .set(Timer::Backlog, cx.now.after(BACKLOG_RECHECK));
                    } else if self.paused == Some(Pause::Backlog) {
                        self.paused = None;
                        cx.io.resume_recv(cx.id);
                        // Bytes may have piled up meanwhile: the queue bound applies again.
                        self.apply(cx, Asked::default());
                    }
                }
            }
        }
    }

    /// The idle check: ping a peer silent for the idle timeout, else check again when it
    /// would have been.
    fn on_idle(&mut self, cx: &mut Cx<'_>) {
        let idle = cx.shard.config.idle_timeout;
        let Stage::Open(open) = &mut self.stage else {
            return;
        };
        if idle.is_zero() || !open.parts.writer.is_open() {
            return;
        }
        let quiet_until = self.last_seen.after(idle);
        if cx.now < quiet_until {
            return self.timers.set(Timer::Idle, quiet_until);
        }
        // The ping carries the time it was sent; only a pong echoing it proves the peer reads.
        let sent = cx.now.as_millis().to_be_bytes();
        if open
            .parts
            .writer
            .ping(&sent, cx.shard.arena.room(16))
            .is_ok()
        {
            cx.shard.flush(cx.io, cx.id);
            self.timers.set(Timer::Pong, cx.now.after(idle));
            self.watch_send_queue(cx);
        }
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

    /// The server is draining: an open connection is closed with 1001 at `at`, a handshake
    /// in progress is refused with 503 now.
    pub fn drain_at(&mut self, cx: &mut Cx<'_>, at: Time) {
        match &self.stage {
            Stage::Open(_) => self.timers.set(Timer::Drain, at),
            Stage::Waiting { kept_alive: true } => {
                self.stage = Stage::Responded;
                self.finish(cx);
            }
            Stage::Waiting { .. } | Stage::Proxy(_) | Stage::Handshake(_) | Stage::Body(_) => {
                let refusal = Refusal::new(503, "the server is shutting down");
                self.refuse(cx, &refusal.with_header("Retry-After", "5"));
            }
            Stage::Responded => {}
        }
    }

    /// Closes with 1009 to give back the memory of the message this connection is
    /// assembling: the shard's budget for incomplete messages is spent and it holds the most.
    pub fn shed_incomplete(&mut self, cx: &mut Cx<'_>) {
        if let Stage::Body(_) = self.stage {
            cx.shard.counters().incomplete_closed();
            let refusal = Refusal::new(
                503,
                "the server's memory for incomplete messages is spent: this body is the largest",
            );
            let answer = publish_api::Answer::refused(refusal.with_header("Retry-After", "1"));
            self.respond_to_api(cx, &answer);
            return self.account_incomplete(cx);
        }
        let Stage::Open(open) = &mut self.stage else {
            return;
        };
        const SHED: ProtocolError = ProtocolError::too_big(
            "the server's memory for incomplete messages is spent: this one is the largest",
        );
        cx.shard.counters().incomplete_closed();
        open.parts.writer.fail(SHED, cx.shard.arena.room(128));
        open.reader.discard();
        note_ending(&mut self.ending, SHED.code, SHED.reason);
        cx.shard.flush(cx.io, cx.id);
        self.account_incomplete(cx);
        self.finish(cx);
    }

    /// The runtime closed the connection (`cause` says how the transport ended); the
    /// application gets its state back.
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn on_closed<A: App<State = S>>(self, shard: &mut ShardState, app: &mut A, cause: &str) {
        shard.incomplete_bytes -= self.incomplete;
        if self.admitted {
            shard.admission.release(self.peer.ip());
            shard.counters().websocket_closed();
        }
        if let Stage::Open(open) = self.stage {
            let ending = self.ending.map(|ending| *ending);
            let (code, reason) = ending.unwrap_or((CloseCode::ABNORMAL, "".into()));
            shard.counters().families.closes.count(code.as_u16());
            let loud = shard.config.log_connections;
            events::closed(loud, shard.index(), self.peer, code, &reason, cause);
            app.on_close(
                open.parts.state,
                Closed {
                    code,
                    reason: &reason,
                },
            );
        }
    }

    /// After anything that may have queued bytes: the queue's bound, and its progress.
    fn after_sending(&mut self, cx: &mut Cx<'_>) {
        self.apply_backpressure(cx);
        self.watch_send_queue(cx);
    }

    /// Past the bound on queued bytes, pause reading or close, as configured.
    fn apply_backpressure(&mut self, cx: &mut Cx<'_>) {
        if self.paused.is_some() || cx.io.queued_bytes(cx.id) <= cx.shard.config.max_queued_bytes {
            return;
        }
        cx.shard.counters().queue_bound_hit();
        match cx.shard.config.backpressure {
            BackpressurePolicy::PauseReading => {
                self.paused = Some(Pause::Backpressure);
                cx.io.pause_recv(cx.id);
            }
            BackpressurePolicy::Close => {
                let reason = "send queue over its limit: the client reads too slowly";
                self.close(cx, CloseCode::POLICY_VIOLATION, reason);
            }
        }
    }

    /// Bytes are queued: make sure someone checks they move.
    fn watch_send_queue(&mut self, cx: &mut Cx<'_>) {
        let idle = cx.shard.config.idle_timeout;
        if idle.is_zero() || self.timers.is_set(Timer::SendStall) {
            return;
        }
        if cx.io.queued_bytes(cx.id) > 0 {
            self.stall_mark = cx.io.written_bytes(cx.id);
            self.timers.set(Timer::SendStall, cx.now.after(idle));
        }
    }

    /// Applies what a callback asked for.
    fn apply(&mut self, cx: &mut Cx<'_>, asked: Asked) {
        if asked.close_sent {
            self.await_close(cx);
        }
        if asked.publish_refused && self.paused.is_none() {
            self.paused = Some(Pause::Backlog);
            cx.io.pause_recv(cx.id);
            self.timers
                .set(Timer::Backlog, cx.now.after(BACKLOG_RECHECK));
        }
        self.after_sending(cx);
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
            &mut Ws::new(cx, self.peer, &mut open.parts, &mut asked),
            app,
        );
        self.apply(cx, asked);
    }

    /// Counts what the reader holds for incomplete messages in the shard's budget.
    fn account_incomplete(&mut self, cx: &mut Cx<'_>) {
        let held = match &self.stage {
            Stage::Open(open) => open.reader.held_bytes(),
            Stage::Body(body) => body.held_bytes(),
            _ => 0,
        };
        cx.shard.incomplete_bytes = cx.shard.incomplete_bytes - self.incomplete + held;
        self.incomplete = held;
    }

    /// The WebSocket is done: the runtime writes out what is queued, then closes, within
    /// its own deadlines.
    fn finish(&mut self, cx: &mut Cx<'_>) {
        self.timers.stop_all();
        cx.io.close(cx.id);
    }

    fn abort(&mut self, cx: &mut Cx<'_>) {
        self.timers.stop_all();
        cx.io.abort(cx.id);
    }

    fn refuse(&mut self, cx: &mut Cx<'_>, refusal: &Refusal) {
        cx.shard
            .counters()
            .families
            .handshakes
            .count(refusal.status);
        let loud = cx.shard.config.log_connections;
        events::refused(
            loud,
            cx.shard.index(),
            self.peer,
            refusal.status,
            &refusal.message,
        );
        let mut response = Vec::new();
        refusal.write(&mut response);
        self.respond_and_close(cx, response);
    }

    fn respond_and_close(&mut self, cx: &mut Cx<'_>, response: Vec<u8>) {
        self.stage = Stage::Responded;
        cx.io.send(cx.id, response.into());
        self.finish(cx);
    }
}

/// Records why the connection ends, unless a cause was recorded first.
fn note_ending(ending: &mut Option<Box<(CloseCode, Box<str>)>>, code: CloseCode, reason: &str) {
    if ending.is_none() {
        *ending = Some(Box::new((code, reason.into())));
    }
}

/// Whether a pong carries the payload of the ping we are waiting on: the time it was sent.
fn answers_ping(timers: &Timers, payload: &[u8], idle: std::time::Duration) -> bool {
    let Some(deadline) = timers.get(Timer::Pong) else {
        return false;
    };
    let idle_millis = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let sent = deadline.as_millis().saturating_sub(idle_millis);
    payload == sent.to_be_bytes()
}
