//! One WebSocket connection after the handshake, sans-io: frames in, messages out.
//!
//! [`Session::read`] takes the bytes of one read in whatever pieces they came, unmasks them in
//! place and yields at most one [`Event`] per call. A message that arrives whole in one read is
//! handed out as a slice of that read, with no copy; only fragmented or split messages are
//! assembled in a buffer, which is freed once the message is delivered, so an idle session
//! holds no heap memory. Replies the protocol requires (pong for ping, the close handshake,
//! the close frame that fails the connection) are written to the caller's output buffer.

use std::ops::Range;

use bytes::BufMut;

use super::close::{CloseCode, CloseFrame, parse_close_payload};
use super::deflate::{Compressor, Decompressor, DeflateParams, Direction};
use super::frame::{Decoded, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use super::frame::{FrameHead, close_payload, decode_header, write_frame};
use super::mask::{MaskKeys, apply_mask};
use super::utf8::{self, Utf8Validator};
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
    phase: usize,
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
    /// The start of a frame header split across reads.
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: Option<Frame>,
    /// The opcode of a fragmented message in progress.
    message: Option<OpCode>,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    /// Compressed bytes of the message in progress.
    compressed_len: u64,
    deflate: Option<DeflateParams>,
    /// Inflate state, created by the first compressed message; kept between messages only
    /// when the peer compresses with context takeover.
    inflater: Option<Box<Decompressor>>,
    /// Payload of a message assembled from several frames or reads.
    assembled: Vec<u8>,
    utf8: Utf8Validator,
    /// Payload of a control frame split across reads.
    control: Vec<u8>,
    /// The buffer the last event lent out, to be freed by the next read.
    lent: Option<Location>,
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

impl Reader {
    fn new(role: Role, config: SessionConfig) -> Self {
        Self {
            role,
            max_message_size: config.max_message_size as u64,
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            frame: None,
            message: None,
            compressed: false,
            compressed_len: 0,
            deflate: config.deflate,
            inflater: None,
            assembled: Vec::new(),
            utf8: Utf8Validator::new(),
            control: Vec::new(),
            lent: None,
        }
    }

    /// Bytes of a partly received message held in memory.
    pub fn buffered_bytes(&self) -> usize {
        self.assembled.len() + self.control.len() + usize::from(self.header_len)
    }

    /// Heap memory held for messages still arriving: their buffers' capacity, and the
    /// inflater while a compressed message is in progress.
    pub fn held_bytes(&self) -> usize {
        let inflating = match (&self.inflater, self.compressed) {
            (Some(inflater), true) => inflater.memory(),
            _ => 0,
        };
        self.assembled.capacity() + self.control.capacity() + inflating
    }

    /// Frees the buffer the last event lent out, once the caller is done with the event
    /// (the next [`Reader::read`] does this too).
    pub fn release_delivered(&mut self) {
        self.free_delivered_buffer();
    }

    /// Decodes `input` until an event is ready or the input is used up, unmasking in place.
    ///
    /// Returns how many bytes were used; call again with the rest. Replies the protocol
    /// requires go to `out` through `writer`. On a protocol error the close frame with its
    /// code is written to `out`, the session is closed, and the error says what the peer did
    /// wrong. Bytes that arrive once the session is closed are discarded.
    pub fn read<'a, B: BufMut>(
        &'a mut self,
        input: &'a mut [u8],
        writer: &mut Writer,
        out: &mut B,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        self.free_delivered_buffer();
        if writer.state == State::Closed {
            return Ok((input.len(), None));
        }
        let mut used = 0;
        while used < input.len() {
            match self.step(&mut input[used..], writer, out) {
                Ok(Step::Consumed(n)) => used += n,
                Ok(Step::Ready { used: n, kind, at }) => {
                    let start = used;
                    used += n;
                    self.lent = Some(at.clone());
                    let payload: &'a [u8] = match at {
                        Location::Input(range) => &input[start + range.start..start + range.end],
                        Location::Message => &self.assembled,
                        Location::Control => &self.control,
                    };
                    return Ok((used, Some(event(kind, payload))));
                }
                Err(err) => {
                    writer.fail(err, out);
                    self.reset();
                    return Err(err);
                }
            }
        }
        Ok((used, None))
    }

    /// Drops any partial message after the connection failed.
    /// Drops whatever message or frame was in progress, with its buffers.
    pub fn discard(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        self.frame = None;
        self.message = None;
        self.compressed = false;
        self.inflater = None;
        self.assembled = Vec::new();
        self.control = Vec::new();
    }

    /// Frees the buffer the last event lent out (a message's or a control frame's, never
    /// the other: a control frame may arrive in the middle of a message).
    fn free_delivered_buffer(&mut self) {
        match self.lent.take() {
            Some(Location::Message) => self.assembled = Vec::new(),
            Some(Location::Control) => self.control = Vec::new(),
            Some(Location::Input(_)) | None => {}
        }
    }

    /// Decodes one header, or one run of payload, from the front of `input`.
    fn step<B: BufMut>(
        &mut self,
        input: &mut [u8],
        writer: &mut Writer,
        out: &mut B,
    ) -> Result<Step, ProtocolError> {
        let mut used = 0;
        let frame = match self.frame {
            Some(frame) => frame,
            None => {
                let Some((header, n)) = self.take_header(input)? else {
                    return Ok(Step::Consumed(input.len()));
                };
                used = n;
                self.begin_frame(header)?
            }
        };
        // A header decoded in this step always used at least one byte of this input, so the
        // frame's payload starts here exactly when `used > 0`.
        let fresh = used > 0;

        let available = input.len() - used;
        let take = usize::try_from(frame.remaining).map_or(available, |rem| rem.min(available));
        let chunk = &mut input[used..used + take];
        if let Some(key) = frame.mask {
            apply_mask(chunk, key, frame.phase);
        }
        let done = take as u64 == frame.remaining;
        self.frame = if done {
            None
        } else {
            Some(Frame {
                remaining: frame.remaining - take as u64,
                phase: (frame.phase + take) & 3,
                ..frame
            })
        };
        let chunk_at = used..used + take;
        used += take;

        if frame.opcode.is_control() {
            if !done {
                self.control.extend_from_slice(chunk);
                return Ok(Step::Consumed(used));
            }
            let at = if self.control.is_empty() {
                Location::Input(chunk_at)
            } else {
                self.control.extend_from_slice(chunk);
                Location::Control
            };
            let payload = match &at {
                Location::Input(range) => &input[range.clone()],
                _ => &self.control[..],
            };
            let kind = writer.answer_control(frame.opcode, payload, out)?;
            return Ok(Step::Ready { used, kind, at });
        }

        let opcode = self.message.unwrap_or(frame.opcode);
        let text = opcode == OpCode::Text;
        let last = done && frame.fin;
        if self.compressed {
            self.inflate(chunk, text, last)?;
            if !last {
                self.message = Some(opcode);
                return Ok(Step::Consumed(used));
            }
            self.compressed = false;
            self.compressed_len = 0;
            return self.message_complete(used, text);
        }
        let whole_message_here = fresh && last && self.message.is_none();
        if whole_message_here {
            if opcode == OpCode::Text {
                utf8::validate(chunk)
                    .map_err(|_| ProtocolError::invalid_payload("invalid UTF-8 in text message"))?;
            }
            let kind = if opcode == OpCode::Text {
                Ready::Text
            } else {
                Ready::Binary
            };
            return Ok(Step::Ready {
                used,
                kind,
                at: Location::Input(chunk_at),
            });
        }

        if opcode == OpCode::Text {
            self.utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::invalid_payload("invalid UTF-8 in text message"))?;
        }
        self.assembled.extend_from_slice(chunk);
        if !last {
            // The rest comes in a later frame or read.
            self.message = Some(opcode);
            return Ok(Step::Consumed(used));
        }
        self.message_complete(used, text)
    }

    /// The last byte of a message arrived: deliver it from the assembly buffer.
    fn message_complete(&mut self, used: usize, text: bool) -> Result<Step, ProtocolError> {
        self.message = None;
        if text {
            self.utf8.finish().map_err(|_| {
                ProtocolError::invalid_payload("text message ends inside a UTF-8 sequence")
            })?;
        }
        let kind = if text { Ready::Text } else { Ready::Binary };
        Ok(Step::Ready {
            used,
            kind,
            at: Location::Message,
        })
    }

    /// Inflates a piece of a compressed message into the assembly buffer, validating text
    /// as it grows so invalid UTF-8 fails before the message ends.
    fn inflate(&mut self, chunk: &[u8], text: bool, last: bool) -> Result<(), ProtocolError> {
        let direction = self.peer_direction();
        let limit = self.max_message_size as usize;
        let inflater = self
            .inflater
            .get_or_insert_with(|| Box::new(Decompressor::new(direction)));
        let before = self.assembled.len();
        inflater.inflate(chunk, &mut self.assembled, limit)?;
        if last {
            inflater.finish_message(&mut self.assembled, limit)?;
            if direction.no_context_takeover {
                // Nothing carries over to the next message: free the inflate state.
                self.inflater = None;
            }
        }
        if text {
            self.utf8
                .feed(&self.assembled[before..])
                .map_err(|_| ProtocolError::invalid_payload("invalid UTF-8 in text message"))?;
        }
        Ok(())
    }

    /// How the peer compresses: the client's direction for a server, and the reverse.
    fn peer_direction(&self) -> Direction {
        let params = self.deflate.unwrap_or(DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        });
        match self.role {
            Role::Server => params.client(),
            Role::Client => params.server(),
        }
    }

    /// Reads a header from the front of `input`, holding on to a header split across reads.
    fn take_header(&mut self, input: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let have = usize::from(self.header_len);
        if have == 0 {
            return match decode_header(input)? {
                Decoded::Header(header, n) => Ok(Some((header, n))),
                Decoded::NeedBytes(_) => {
                    // A header is at most 14 bytes, so this partial one fits.
                    self.header[..input.len()].copy_from_slice(input);
                    self.header_len = input.len() as u8;
                    Ok(None)
                }
            };
        }
        let copied = (MAX_HEADER_LEN - have).min(input.len());
        self.header[have..have + copied].copy_from_slice(&input[..copied]);
        match decode_header(&self.header[..have + copied])? {
            Decoded::Header(header, n) => {
                self.header_len = 0;
                Ok(Some((header, n - have)))
            }
            Decoded::NeedBytes(_) => {
                self.header_len = (have + copied) as u8;
                Ok(None)
            }
        }
    }

    /// Applies the session's rules to a new frame.
    fn begin_frame(&mut self, header: FrameHeader) -> Result<Frame, ProtocolError> {
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => {
                return Err(ProtocolError::protocol("unmasked frame from a client"));
            }
            (Role::Client, true) => {
                return Err(ProtocolError::protocol("masked frame from a server"));
            }
            _ => {}
        }
        if header.rsv1 {
            if self.deflate.is_none() {
                return Err(ProtocolError::protocol(
                    "RSV1 set without a negotiated extension",
                ));
            }
            if !matches!(header.opcode, OpCode::Text | OpCode::Binary) {
                return Err(ProtocolError::protocol(
                    "RSV1 set on a control or continuation frame",
                ));
            }
        }
        if !header.opcode.is_control() {
            match (header.opcode, self.message) {
                (OpCode::Continuation, None) => {
                    return Err(ProtocolError::protocol(
                        "continuation frame with no message to continue",
                    ));
                }
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(ProtocolError::protocol(
                        "new message before the fragmented one ended",
                    ));
                }
                _ => {}
            }
            if header.rsv1 {
                self.compressed = true;
            }
            if self.compressed {
                // Inflated bytes are checked as they appear; the compressed stream itself may
                // not be much larger than the limit either (stored blocks add 5 bytes per 64 KiB).
                self.compressed_len += header.payload_len;
                let allowance = self.max_message_size + self.max_message_size / 1024 + 1024;
                if self.compressed_len > allowance {
                    return Err(ProtocolError::too_big(
                        "compressed message larger than the maximum message size",
                    ));
                }
            } else if self.assembled.len() as u64 + header.payload_len > self.max_message_size {
                return Err(ProtocolError::too_big(
                    "message larger than the maximum message size",
                ));
            }
        }
        let frame = Frame {
            opcode: header.opcode,
            fin: header.fin,
            mask: header.mask,
            remaining: header.payload_len,
            phase: 0,
        };
        Ok(frame)
    }
}

impl Writer {
    /// Does what a whole control frame requires and says which event it makes.
    fn answer_control<B: BufMut>(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        out: &mut B,
    ) -> Result<Ready, ProtocolError> {
        Ok(match opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    let mask = self.next_mask();
                    write_frame(out, FrameHead::whole(OpCode::Pong), payload, mask);
                }
                Ready::Ping
            }
            OpCode::Pong => Ready::Pong,
            _ => {
                let close = parse_close_payload(payload)?;
                let code = close.map(|frame| frame.code);
                if self.state == State::Open {
                    // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
                    self.write_close(code, "", out);
                }
                self.state = State::Closed;
                Ready::Close(code)
            }
        })
    }

    fn new(role: Role, deflate: Option<DeflateParams>) -> Self {
        Self {
            role,
            state: State::Open,
            deflate,
            mask_keys: (role == Role::Client).then(MaskKeys::from_entropy),
        }
    }

    /// Draws this client's masking keys from `keys` from now on; see
    /// [`Session::with_mask_keys`].
    pub fn set_mask_keys(&mut self, keys: MaskKeys) {
        if self.role == Role::Client {
            self.mask_keys = Some(keys);
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether messages may still be sent.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Writes a text message.
    pub fn send_text<B: BufMut>(&mut self, text: &str, out: &mut B) -> Result<(), SendError> {
        self.send(OpCode::Text, text.as_bytes(), out)
    }

    /// Writes a binary message.
    pub fn send_binary<B: BufMut>(&mut self, data: &[u8], out: &mut B) -> Result<(), SendError> {
        self.send(OpCode::Binary, data, out)
    }

    /// Writes a ping.
    pub fn ping<B: BufMut>(&mut self, payload: &[u8], out: &mut B) -> Result<(), SendError> {
        self.send(OpCode::Ping, payload, out)
    }

    /// Writes an unsolicited pong (a heartbeat that expects no answer).
    pub fn pong<B: BufMut>(&mut self, payload: &[u8], out: &mut B) -> Result<(), SendError> {
        self.send(OpCode::Pong, payload, out)
    }

    /// Writes one whole frame of `opcode`: data as one unfragmented message, or a control frame.
    pub fn send<B: BufMut>(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        out: &mut B,
    ) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        if opcode.is_control() && payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlTooLong);
        }
        let mask = self.next_mask();
        write_frame(out, FrameHead::whole(opcode), payload, mask);
        Ok(())
    }

    /// Writes one whole data message compressed with `compressor`, or plainly when it is a
    /// control frame, shorter than the compressor's threshold, or deflate was not negotiated.
    pub fn send_compressed<B: BufMut>(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        compressor: &mut Compressor,
        out: &mut B,
    ) -> Result<(), SendError> {
        if opcode.is_control() || self.deflate.is_none() || payload.len() < compressor.min_size() {
            return self.send(opcode, payload, out);
        }
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        let mask = self.next_mask();
        compressor.write_frame(opcode, payload, mask, out);
        Ok(())
    }

    /// The direction this side compresses in, when deflate was negotiated.
    pub fn own_direction(&self) -> Option<Direction> {
        let params = self.deflate?;
        Some(match self.role {
            Role::Server => params.server(),
            Role::Client => params.client(),
        })
    }

    /// Starts the close handshake: writes a close frame; the reason is cut to fit.
    pub fn close<B: BufMut>(
        &mut self,
        code: CloseCode,
        reason: &str,
        out: &mut B,
    ) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        if !code.is_valid_on_wire() {
            return Err(SendError::InvalidCloseCode);
        }
        self.write_close(Some(code), reason, out);
        self.state = State::CloseSent;
        Ok(())
    }

    pub(crate) fn write_close<B: BufMut>(
        &mut self,
        code: Option<CloseCode>,
        reason: &str,
        out: &mut B,
    ) {
        let mask = self.next_mask();
        match code {
            Some(code) => {
                let (payload, len) = close_payload(code, reason);
                write_frame(out, FrameHead::whole(OpCode::Close), &payload[..len], mask);
            }
            None => write_frame(out, FrameHead::whole(OpCode::Close), &[], mask),
        }
    }

    /// Fails the connection: the close frame carrying the error's code, unless one was sent.
    pub fn fail<B: BufMut>(&mut self, err: ProtocolError, out: &mut B) {
        if self.state == State::Open {
            self.write_close(Some(err.code), err.reason, out);
        }
        self.state = State::Closed;
    }

    /// A fresh masking key for a client's frame; `None` for a server.
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        self.mask_keys.as_mut().map(MaskKeys::next_key)
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
#[path = "session_tests.rs"]
mod tests;
