//! One client connection after the upgrade, sans-io: what its bytes mean and what it sends.
//!
//! A driver moves the bytes (the io_uring [`engine`](crate::engine) for plain links, tasks
//! over the link model for shaped ones, see [`tasks`](crate::tasks)); a [`Conn`] decodes
//! the server's frames through `ringws::proto`, accounts for every message, queues the frames
//! to write, and says when it next needs the clock. The close handshake, the drain at the
//! end of a run and every count live here once, for every scenario and driver.

mod echo;
mod fanout;
mod outbox;
mod schedule;

use std::fmt;
use std::io;
use std::time::Duration;

use ringws::proto::deflate::{Compressor, DeflateConfig, DeflateParams};
use ringws::proto::mask::MaskKeys;
use ringws::proto::{CloseCode, Event, OpCode, ProtocolError, Role, Session, SessionConfig};

pub use echo::{Echo, Load};
pub use fanout::{Fanout, Publisher, Subscriber};
use outbox::Outbox;

use crate::plan::Phase;
use crate::stats::Stats;

/// How long a client waits for the server's answer to its close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// While draining, how often a connection that waits on other threads looks again.
const DRAIN_POLL_NS: u64 = 10_000_000;

/// Bytes of frames a connection queues before it waits for its socket to take them: a
/// schedule that runs ahead of the socket keeps what it owes as a count, not as memory.
const MAX_QUEUED: usize = 256 << 10;

/// What the driver hands every call: where the counts go, where the run stands, and now.
pub struct Ctx<'a> {
    pub stats: &'a mut Stats,
    pub phase: Phase,
    pub now_ns: u64,
}

/// Why a connection ended before its close handshake did.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("protocol error from the server: {0}")]
    Protocol(ProtocolError),
    #[error("the server closed with {0}")]
    ServerClosed(u16),
    #[error("the server closed the connection")]
    Eof,
    #[error("read: {0}")]
    Read(io::Error),
    #[error("write: {0}")]
    Write(io::Error),
    #[error("the server did not answer the close within {} s", CLOSE_TIMEOUT.as_secs())]
    NoCloseAnswer,
}

/// What the connection does with its messages.
pub enum Behaviour {
    /// `echo`: sends messages and checks what comes back.
    Echo(Echo),
    /// `hold`: sends nothing, keeps the connection until the run ends.
    Hold,
    /// `fanout`: publishes to the topic at a fixed rate.
    Publisher(Publisher),
    /// `fanout`: checks every publisher's messages arrive, in order, intact.
    Subscriber(Subscriber),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    /// Open: waiting for the run, or running.
    Open,
    /// The run is over: waiting, at most until `until`, for what is still owed.
    Draining { until: u64 },
    /// Our close is sent: waiting for the server's until `deadline`.
    Closing { deadline: u64 },
    /// Over: nothing more to read; only what is queued is left to write.
    Done,
}

/// What the upgrade agreed beyond the plain protocol.
#[derive(Clone, Debug, Default)]
pub struct Agreed {
    /// permessage-deflate parameters and this side's settings for it.
    pub deflate: Option<(DeflateParams, DeflateConfig)>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
    /// The server's Sec-WebSocket-Extensions answer, as sent.
    pub extensions: Option<String>,
}

pub struct Conn {
    id: u32,
    session: Session,
    outbox: Outbox,
    behaviour: Behaviour,
    stage: Stage,
    drain: Duration,
    /// The queue had no room for all that was due: the next write resumes sending, not a
    /// timer.
    waiting_for_room: bool,
    /// It ended by giving up (a timeout, a failed socket): what is still queued will never
    /// be taken, so the socket goes at once.
    cut: bool,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("stage", &self.stage)
            .finish()
    }
}

impl Conn {
    /// Connection `id`, upgraded with what `agreed` says, doing `behaviour`; it waits at most
    /// `drain` at the end of the run for messages in flight.
    pub fn new(id: u32, agreed: &Agreed, behaviour: Behaviour, drain: Duration) -> Conn {
        let config = SessionConfig {
            deflate: agreed.deflate.map(|(params, _)| params),
            ..SessionConfig::default()
        };
        // Seeded keys: a run's bytes on the wire depend only on its connections' ids.
        let seed = u64::from(id);
        let session =
            Session::new(Role::Client, config).with_mask_keys(MaskKeys::seeded(seed << 1));
        let compressor = agreed
            .deflate
            .and_then(|(params, config)| Compressor::new(params.client(), &config));
        Conn {
            id,
            session,
            outbox: Outbox::new(MaskKeys::seeded(seed << 1 | 1), compressor),
            behaviour,
            stage: Stage::Open,
            drain,
            waiting_for_room: false,
            cut: false,
        }
    }

    /// Frames waiting for the socket; the driver takes them (and may hand back an empty
    /// buffer to reuse, see [`Conn::swap_output`]).
    pub fn has_output(&self) -> bool {
        !self.outbox.bytes.is_empty()
    }

    /// Swaps the queued frames with `buffer` (empty), so the driver writes them while new
    /// frames queue in a buffer of their own.
    pub fn swap_output(&mut self, buffer: &mut Vec<u8>) {
        debug_assert!(buffer.is_empty());
        std::mem::swap(&mut self.outbox.bytes, buffer);
    }

    /// The connection is over: once its output is written, the socket can go.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The connection is over and its output will never be taken (the server stopped
    /// answering, or the socket failed): the socket goes now, unflushed.
    pub fn is_cut(&self) -> bool {
        self.stage == Stage::Done && self.cut
    }

    /// Takes the bytes of one read: decodes every frame in them, accounts for every message,
    /// and queues what the protocol and the behaviour answer.
    pub fn on_read(&mut self, input: &mut [u8], ctx: &mut Ctx<'_>) {
        if self.stage == Stage::Done {
            return;
        }
        ctx.stats.bytes_received += input.len() as u64;
        ctx.stats.reads += 1;
        let mut at = 0;
        while at < input.len() {
            let (used, event) = match self.session.read(&mut input[at..], &mut self.outbox.bytes) {
                Ok(step) => step,
                Err(error) => return self.fail(ConnError::Protocol(error), ctx),
            };
            at += used;
            match event {
                Some(Event::Binary(message)) => {
                    self.behaviour.on_message(OpCode::Binary, message, ctx)
                }
                Some(Event::Text(message)) => {
                    self.behaviour
                        .on_message(OpCode::Text, message.as_bytes(), ctx)
                }
                Some(Event::Close(frame)) => {
                    if matches!(self.stage, Stage::Closing { .. }) {
                        return self.finish(ctx);
                    }
                    let code = frame.map_or(CloseCode::NO_STATUS, |f| f.code);
                    return self.fail(ConnError::ServerClosed(u16::from(code)), ctx);
                }
                Some(Event::Ping(_) | Event::Pong(_)) | None => {}
            }
        }
        self.advance(ctx);
    }

    /// The socket's read side ended (a read returned 0).
    pub fn on_eof(&mut self, ctx: &mut Ctx<'_>) {
        match self.stage {
            Stage::Closing { .. } => self.finish(ctx),
            Stage::Done => {}
            _ => self.fail(ConnError::Eof, ctx),
        }
    }

    /// A read or a write failed.
    pub fn on_io_error(&mut self, error: ConnError, ctx: &mut Ctx<'_>) {
        self.fail(error, ctx);
    }

    /// `written` bytes of this connection's output reached the socket: room for what the
    /// schedule still owes.
    pub fn on_written(&mut self, written: usize, ctx: &mut Ctx<'_>) {
        ctx.stats.bytes_sent += written as u64;
        ctx.stats.writes += 1;
        self.advance(ctx);
    }

    /// Does what the clock or a change of phase asks: sends what is due, begins the drain
    /// or the close, gives up on a server that does not answer. Returns when it next needs
    /// to be called (clock nanoseconds), if ever; a change of phase always needs a call.
    pub fn on_time(&mut self, ctx: &mut Ctx<'_>) -> Option<u64> {
        self.advance(ctx);
        self.next_deadline(ctx.now_ns)
    }

    fn advance(&mut self, ctx: &mut Ctx<'_>) {
        if self.stage == Stage::Open {
            match ctx.phase {
                Phase::Connecting => {}
                Phase::Running => self.send_due(ctx),
                Phase::Draining => {
                    self.behaviour.stop();
                    self.stage = Stage::Draining {
                        until: ctx.now_ns + self.drain.as_nanos() as u64,
                    };
                }
            }
        }
        if let Stage::Draining { until } = self.stage
            && (self.behaviour.settled() || ctx.now_ns >= until)
        {
            if self
                .session
                .writer
                .close(CloseCode::NORMAL, "", &mut self.outbox.bytes)
                .is_ok()
            {
                self.stage = Stage::Closing {
                    deadline: ctx.now_ns + CLOSE_TIMEOUT.as_nanos() as u64,
                };
            } else {
                self.finish(ctx);
            }
        }
        if let Stage::Closing { deadline } = self.stage
            && ctx.now_ns >= deadline
        {
            ctx.stats.note_error(&ConnError::NoCloseAnswer);
            self.cut = true;
            self.finish(ctx);
        }
    }

    fn send_due(&mut self, ctx: &mut Ctx<'_>) {
        let Some(frame) = self.behaviour.payloads().map(|p| p.typical_len() + 14) else {
            return;
        };
        // A message larger than the bound still goes, alone, once the outbox is empty.
        let queued = self.outbox.bytes.len();
        let room = (MAX_QUEUED.saturating_sub(queued) / frame).max(usize::from(queued == 0)) as u64;
        let due = self.behaviour.due(ctx.now_ns, room);
        // Capped by the room left (or none at all): more is owed than fits.
        self.waiting_for_room = due.map_or(room == 0, |due| u64::from(due.count) == room);
        let Some(due) = due else {
            return;
        };
        let Some(payloads) = self.behaviour.payloads() else {
            return;
        };
        for i in 0..due.count {
            let stamp = crate::payload::Stamp {
                sender: due.sender,
                sequence: due.first_sequence.wrapping_add(i),
                sent_at_ns: due.first_at_ns + u64::from(i) * due.period_ns,
            };
            self.outbox
                .message(&mut self.session.writer, payloads, &stamp);
        }
        self.behaviour.sent(due.count, ctx);
    }

    /// When the connection next needs [`Conn::on_time`], if ever.
    pub fn next_deadline(&self, now_ns: u64) -> Option<u64> {
        match self.stage {
            // A full queue resumes when the socket takes it (`on_written`), not on a timer.
            Stage::Open if self.waiting_for_room => None,
            Stage::Open => self.behaviour.next_due(),
            Stage::Draining { until } => Some(match self.behaviour.settles_elsewhere() {
                true => until.min(now_ns + DRAIN_POLL_NS),
                false => until,
            }),
            Stage::Closing { deadline } => Some(deadline),
            Stage::Done => None,
        }
    }

    /// Ends the connection early: counted as dropped, unless we were closing anyway.
    fn fail(&mut self, error: ConnError, ctx: &mut Ctx<'_>) {
        if self.stage == Stage::Done {
            return;
        }
        self.cut = matches!(error, ConnError::Read(_) | ConnError::Write(_));
        if !matches!(self.stage, Stage::Closing { .. }) {
            ctx.stats.connections_dropped += 1;
            ctx.stats.note_error(&error);
        }
        self.finish(ctx);
    }

    /// The connection is over: what never arrived is counted lost, once.
    fn finish(&mut self, ctx: &mut Ctx<'_>) {
        if self.stage == Stage::Done {
            return;
        }
        self.stage = Stage::Done;
        self.behaviour.finish(ctx);
    }
}

/// Messages a behaviour wants written now: `count` of them, from `first_sequence`, the
/// first due at `first_at_ns` and each next `period_ns` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub sender: u32,
    pub first_sequence: u32,
    pub count: u32,
    pub first_at_ns: u64,
    pub period_ns: u64,
}

impl Behaviour {
    fn on_message(&mut self, opcode: OpCode, message: &[u8], ctx: &mut Ctx<'_>) {
        match self {
            Behaviour::Echo(echo) => echo.on_message(opcode, message, ctx),
            Behaviour::Subscriber(subscriber) => subscriber.on_message(opcode, message, ctx),
            // Publishers read what the topic sends them and drop it; a held connection
            // expects nothing.
            Behaviour::Publisher(_) | Behaviour::Hold => {}
        }
    }

    fn due(&mut self, now_ns: u64, max: u64) -> Option<Due> {
        match self {
            Behaviour::Echo(echo) => echo.due(now_ns, max),
            Behaviour::Publisher(publisher) => publisher.due(now_ns, max),
            Behaviour::Hold | Behaviour::Subscriber(_) => None,
        }
    }

    fn payloads(&self) -> Option<&crate::messages::Payloads> {
        match self {
            Behaviour::Echo(echo) => Some(echo.payloads()),
            Behaviour::Publisher(publisher) => Some(publisher.payloads()),
            Behaviour::Hold | Behaviour::Subscriber(_) => None,
        }
    }

    fn sent(&mut self, count: u32, ctx: &mut Ctx<'_>) {
        ctx.stats.messages_sent += u64::from(count);
        match self {
            Behaviour::Echo(echo) => echo.sent(count),
            Behaviour::Publisher(publisher) => publisher.sent(count),
            Behaviour::Hold | Behaviour::Subscriber(_) => {}
        }
    }

    fn next_due(&self) -> Option<u64> {
        match self {
            Behaviour::Echo(echo) => echo.next_due(),
            Behaviour::Publisher(publisher) => publisher.next_due(),
            Behaviour::Hold | Behaviour::Subscriber(_) => None,
        }
    }

    /// Sending stops: the run is over.
    fn stop(&mut self) {
        if let Behaviour::Publisher(publisher) = self {
            publisher.stop();
        }
    }

    /// Nothing more is owed to this connection: it can close.
    fn settled(&self) -> bool {
        match self {
            Behaviour::Echo(echo) => echo.in_flight() == 0,
            Behaviour::Subscriber(subscriber) => subscriber.complete(),
            Behaviour::Hold | Behaviour::Publisher(_) => true,
        }
    }

    /// Whether settling depends on other threads (publishers' final counts), so the
    /// connection must look again while it drains rather than wait for its own reads.
    fn settles_elsewhere(&self) -> bool {
        matches!(self, Behaviour::Subscriber(_))
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) {
        self.stop();
        ctx.stats.messages_lost += match self {
            Behaviour::Echo(echo) => echo.lost(),
            Behaviour::Subscriber(subscriber) => subscriber.lost(),
            Behaviour::Hold | Behaviour::Publisher(_) => 0,
        };
    }
}
