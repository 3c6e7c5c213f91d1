//! One WebSocket connection after the handshake, sans-io: frames in, messages out.
//!
//! [`Session::read`] takes the bytes of one read in whatever pieces they came, unmasks them in
//! place and yields at most one [`Event`] per call. A message that arrives whole in one read is
//! handed out as a slice of that read, with no copy; only fragmented or split messages are
//! assembled in a buffer, which is freed once the message is delivered, so an idle session
//! holds no heap memory. Replies the protocol requires (pong for ping, the close handshake,
//! the close frame that fails the connection) are written to the caller's output buffer.

mod reader;
mod writer;

use std::ops::Range;

use bytes::{BufMut, Bytes};

use super::close::{CloseCode, CloseFrame};
use super::deflate::{Decompressor, DeflateParams};
use super::frame::{MAX_HEADER_LEN, OpCode};
use super::mask::MaskKeys;
use super::utf8::Utf8Validator;
use super::{ProtocolError, Role};

/// The default maximum message size: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Limits and options of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Largest message accepted, counted over all its fragments; larger ones fail with 1009
    /// as soon as a frame header announces them, before their payload arrives.
    pub max_message_size: usize,
    /// permessage-deflate, when the handshake negotiated it.
    pub deflate: Option<DeflateParams>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            deflate: None,
        }
    }
}

/// Something the peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message, validated UTF-8.
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping; the pong has already been written.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close frame (`None`: it carried no code). The reply, if one was due,
    /// has already been written; the session is now closed.
    Close(Option<CloseFrame<'a>>),
}

/// Where the close handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// This side sent a close frame and waits for the peer's.
    CloseSent,
    /// Both close frames were exchanged, or the connection was failed: close the transport
    /// once the output is flushed (a client waits for the server to close first).
    Closed,
}

/// Why a message could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// A close frame was already sent: nothing may follow it.
    Closed,
    /// Control frames carry at most 125 bytes.
    ControlTooLong,
    /// The close code may not be sent on the wire (e.g. 1005, 1006).
    InvalidCloseCode,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "the connection is closing: nothing may follow a close frame",
            Self::ControlTooLong => "control frame payload longer than 125 bytes",
            Self::InvalidCloseCode => "close code not allowed on the wire",
        })
    }
}

impl std::error::Error for SendError {}

/// A frame whose payload is still arriving.
#[derive(Clone, Copy, Debug)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    remaining: u64,
    /// Position in the mask key of the next payload byte.
    phase: u8,
}

/// What one decoding step produced.
enum Step {
    /// Bytes used; no event yet.
    Consumed(usize),
    /// Bytes used, and an event whose payload lies at `at`.
    Ready {
        used: usize,
        kind: Ready,
        at: Location,
    },
}

#[derive(Clone, Copy)]
enum Ready {
    Text,
    Binary,
    Ping,
    Pong,
    Close(Option<CloseCode>),
}

/// Where a delivered payload lives; it tells [`Session::read`] what to borrow.
#[derive(Clone, Debug)]
enum Location {
    Input(Range<usize>),
    Message,
    Control,
}

/// Which of the reader's buffers the last event lent out.
#[derive(Clone, Copy, Debug, Default)]
enum Lent {
    #[default]
    Nothing,
    Message,
    Control,
}

/// The sans-io state of one WebSocket connection: a [`Reader`] and a [`Writer`].
///
/// The two halves are public so a caller can hold a received message (borrowed from the
/// reader) while it sends on the writer, as an echo does.
#[derive(Debug)]
pub struct Session {
    pub reader: Reader,
    pub writer: Writer,
}

/// The receiving half: frame decoding, message assembly, inflating.
#[derive(Debug)]
pub struct Reader {
    role: Role,
    max_message_size: u64,
    frame: Option<Frame>,
    /// The opcode of a fragmented message in progress.
    message: Option<OpCode>,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    deflate: Option<DeflateParams>,
    /// What only a message or a header arriving in pieces needs: `None` between messages,
    /// so an idle session holds no buffers and 72 bytes fewer.
    pieces: Option<Box<Pieces>>,
    /// The buffer the last event lent out, to be freed by the next read.
    lent: Lent,
}

/// The reader's state for messages, control frames and headers that arrive in pieces.
#[derive(Debug, Default)]
struct Pieces {
    /// The start of a frame header split across reads.
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    /// Compressed bytes of the message in progress.
    compressed_len: u64,
    /// Inflate state, created by the first compressed message; kept between messages only
    /// when the peer compresses with context takeover.
    inflater: Option<Box<Decompressor>>,
    /// Payload of a message assembled from several frames or reads.
    assembled: Vec<u8>,
    /// The assembled message being delivered, as shared bytes: the caller may keep a
    /// handle on it (to send it on) instead of copying it.
    delivered: Bytes,
    utf8: Utf8Validator,
    /// Payload of a control frame split across reads.
    control: Vec<u8>,
}

/// The sending half: the close handshake's state and the frames this side writes.
#[derive(Debug)]
pub struct Writer {
    role: Role,
    state: State,
    deflate: Option<DeflateParams>,
    /// Where a client's masking keys come from; `None` for a server, which masks nothing.
    mask_keys: Option<MaskKeys>,
}

impl Session {
    pub fn new(role: Role, config: SessionConfig) -> Self {
        Self {
            reader: Reader::new(role, config),
            writer: Writer::new(role, config.deflate),
        }
    }

    /// Draws this client's masking keys from `keys` instead of a generator seeded by the
    /// operating system: a seeded [`MaskKeys`] makes the bytes on the wire repeatable. A
    /// server masks nothing, so for one this changes nothing.
    pub fn with_mask_keys(mut self, keys: MaskKeys) -> Self {
        self.writer.set_mask_keys(keys);
        self
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.writer.state
    }

    /// Fails the connection from this side for a reason outside the protocol (a server's
    /// memory budget, say): writes the close frame carrying `err` unless one was sent, drops
    /// whatever message was being assembled, and closes the session.
    pub fn fail<B: BufMut>(&mut self, err: ProtocolError, out: &mut B) {
        self.writer.fail(err, out);
        self.reader.reset();
    }

    /// Decodes `input`: see [`Reader::read`].
    pub fn read<'a, B: BufMut>(
        &'a mut self,
        input: &'a mut [u8],
        out: &mut B,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        self.reader.read(input, &mut self.writer, out)
    }
}

/// Builds the event for a payload the decoder validated.
fn event(kind: Ready, payload: &[u8]) -> Event<'_> {
    match kind {
        // SAFETY: `step` validated text payloads as UTF-8 before reporting `Ready::Text`.
        Ready::Text => Event::Text(unsafe { std::str::from_utf8_unchecked(payload) }),
        Ready::Binary => Event::Binary(payload),
        Ready::Ping => Event::Ping(payload),
        Ready::Pong => Event::Pong(payload),
        Ready::Close(None) => Event::Close(None),
        Ready::Close(Some(code)) => {
            // SAFETY: `parse_close_payload` validated the reason after the 2-byte code as UTF-8.
            let reason = unsafe { std::str::from_utf8_unchecked(&payload[2..]) };
            Event::Close(Some(CloseFrame { code, reason }))
        }
    }
}

#[cfg(test)]
mod tests;
