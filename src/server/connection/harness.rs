//! One connection driven in memory: a recording transport plays the socket, a virtual clock
//! plays time, and a client-side protocol session reads what the server wrote. The
//! connection's unit tests and its fuzz target both drive it through this.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::proto::frame::{FrameHead, write_frame};
use crate::proto::{CloseCode, Event, OpCode, Role, Session, SessionConfig};
use crate::runtime::{ConnId, Tag};

use super::super::admission::Admission;
use super::super::app::{App, Message};
use super::super::config::ServerConfig;
use super::super::metrics::{Metrics, Registry};
use super::super::pubsub::{Hub, Published, ShardTopics, TopicTable};
use super::super::shard_state::ShardState;
use super::super::transport::Recording;
use super::{Clock, Connection, Cx, Time};

/// What the client side saw of the server's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The HTTP response head's status line, and its body.
    Http {
        status: u16,
        body: String,
    },
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// A connection, its shard and its socket, all in memory.
pub struct Harness<A: App> {
    app: A,
    shard: ShardState,
    io: Recording,
    conn: Option<Connection<A::State>>,
    now: Time,
    id: ConnId,
    /// The client's view: its session once the 101 was read, and bytes not yet parsed.
    client: Option<Session>,
    unread: Vec<u8>,
    http_done: bool,
    published: u64,
}

impl<A: App> Harness<A> {
    pub fn new(config: ServerConfig, app: A) -> Self {
        let config = Arc::new(config);
        let registry = Arc::new(Registry::new(1));
        let table = TopicTable::new(config.max_topic_len, config.max_topics_per_connection);
        let topics = ShardTopics::new(0, Arc::new(Hub::default()), registry, Vec::new(), table);
        let clock = Clock::new(Instant::now());
        let admission = Admission::new(&config).expect("a valid configuration");
        let mut harness = Self {
            app,
            shard: ShardState::new(
                config,
                Default::default(),
                Arc::new(admission),
                crate::runtime::Health::new(1, Instant::now()),
                clock,
                topics,
            ),
            io: Recording::default(),
            conn: None,
            now: Time::ZERO,
            id: ConnId::new(1, 1),
            client: None,
            unread: Vec::new(),
            http_done: false,
            published: 0,
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let mut cx = harness.cx();
        let conn = Connection::new(peer, false, &mut cx);
        harness.conn = Some(conn);
        harness
    }

    fn cx(&mut self) -> Cx<'_> {
        Cx {
            id: self.id,
            now: self.now,
            shard: &mut self.shard,
            io: &mut self.io,
        }
    }

    /// Runs `f` on the connection, unless the transport already ended it.
    fn drive(&mut self, f: impl FnOnce(&mut Connection<A::State>, &mut Cx<'_>, &mut A)) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.io.aborted {
            let mut cx = Cx {
                id: self.id,
                now: self.now,
                shard: &mut self.shard,
                io: &mut self.io,
            };
            f(&mut conn, &mut cx, &mut self.app);
        }
        self.conn = Some(conn);
    }

    /// The client sends `bytes` (in one read, as the kernel may deliver them).
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.io.paused || self.io.closing {
            return;
        }
        let mut data = bytes.to_vec();
        self.drive(|conn, cx, app| conn.on_data(cx, app, &mut data));
    }

    /// The client sends the standard upgrade request for `path`, with `extra` headers.
    pub fn upgrade(&mut self, path: &str, extra: &str) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        self.receive(request.as_bytes());
    }

    /// The client sends one masked frame.
    pub fn send_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        self.send_frame_split(opcode, fin, payload, &[]);
    }

    /// The client sends one masked frame, in reads ending at `cuts` (ascending offsets
    /// into the frame).
    pub fn send_frame_split(&mut self, opcode: OpCode, fin: bool, payload: &[u8], cuts: &[usize]) {
        let mut frame = BytesMut::new();
        let head = FrameHead {
            opcode,
            fin,
            compressed: false,
        };
        write_frame(&mut frame, head, payload, Some([1, 2, 3, 4]));
        let mut start = 0;
        for end in cuts.iter().copied().chain([frame.len()]) {
            self.receive(&frame[start..end]);
            start = end;
        }
    }

    /// Moves the clock on by `by`, handling every deadline that passes on the way, as the
    /// runtime would.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now.after(by);
        loop {
            let next = self.conn.as_ref().and_then(Connection::poll_timeout);
            match next {
                Some(at) if at <= end && !self.io.ended() => {
                    self.now = self.now.max(at);
                    self.drive(|conn, cx, _| conn.handle_timeout(cx));
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// The kernel takes up to `limit` queued bytes (the peer reads them); when that empties
    /// the queue, the connection hears it drained, as the runtime tells it.
    pub fn write_out(&mut self, limit: usize) -> usize {
        let moved = self.io.write_out(limit);
        if moved > 0 && self.io.queued() == 0 && !self.io.ended() {
            self.drive(|conn, cx, app| conn.on_drained(cx, app));
        }
        moved
    }

    /// Delivers a message published to `topic` elsewhere, as another shard would, published
    /// now on the harness's clock.
    pub fn deliver(&mut self, topic: &str, message: Message<'_>) {
        self.published += 1;
        let mut published = Published::new(topic, self.published, message, None);
        if let Some(at) = self.shard.clock.instant(self.now) {
            published = published.published_at_instant(at);
        }
        let stamp = self.shard.clock.micros(published.published_at());
        let stamp = Tag::new(stamp).unwrap_or(Tag::MIN);
        self.drive(|conn, cx, _| conn.deliver(cx, &published, stamp));
    }

    /// The server starts the close handshake, as at shutdown.
    pub fn server_close(&mut self, code: CloseCode, reason: &str) {
        self.drive(|conn, cx, _| conn.close(cx, code, reason));
    }

    /// The shard's incomplete-message budget is spent and this connection holds the most.
    pub fn shed(&mut self) {
        self.drive(|conn, cx, _| conn.shed_incomplete(cx));
    }

    /// Everything the server wrote since the last call, as the client reads it.
    pub fn seen(&mut self) -> Vec<Seen> {
        self.write_out(usize::MAX);
        let written = std::mem::take(&mut self.io.written);
        self.unread.extend_from_slice(&written);
        let mut seen = Vec::new();
        if !self.http_done {
            let Some(end) = find(&self.unread, b"\r\n\r\n") else {
                return seen;
            };
            let head = String::from_utf8_lossy(&self.unread[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            self.unread.drain(..end + 4);
            self.http_done = true;
            if status == 101 {
                self.client = Some(Session::new(Role::Client, SessionConfig::default()));
            } else {
                let body = String::from_utf8_lossy(&std::mem::take(&mut self.unread)).into();
                seen.push(Seen::Http { status, body });
                return seen;
            }
        }
        let Some(client) = self.client.as_mut() else {
            return seen;
        };
        let mut input = std::mem::take(&mut self.unread);
        let mut at = 0;
        let mut replies = Vec::new();
        while at < input.len() {
            let Ok((used, event)) = client.read(&mut input[at..], &mut replies) else {
                break;
            };
            at += used;
            seen.extend(event.map(|event| match event {
                Event::Text(text) => Seen::Text(text.into()),
                Event::Binary(data) => Seen::Binary(data.into()),
                Event::Ping(data) => Seen::Ping(data.into()),
                Event::Pong(data) => Seen::Pong(data.into()),
                Event::Close(frame) => Seen::Close(
                    frame.map(|f| f.code.as_u16()),
                    frame.map_or(String::new(), |f| f.reason.into()),
                ),
            }));
        }
        seen
    }

    /// The transport: what was queued, closed, aborted, paused.
    pub fn transport(&self) -> &Recording {
        &self.io
    }

    /// The connection's earliest deadline, relative to now.
    pub fn next_deadline(&self) -> Option<Duration> {
        let at = self.conn.as_ref()?.poll_timeout()?;
        Some(at.since(self.now))
    }

    /// Bytes the shard counts as held by incomplete messages.
    pub fn incomplete_bytes(&self) -> usize {
        self.shard.incomplete_bytes
    }

    pub fn metrics(&self) -> Metrics {
        self.shard.topics.registry().snapshot(0)
    }

    /// The runtime finished closing: the application hears `on_close`.
    pub fn closed(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.on_closed(&mut self.shard, &mut self.app, "test");
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
