//! The receiving half: frames decoded, unmasked, validated and reassembled into events.

use bytes::{BufMut, Bytes};

use crate::proto::deflate::{Decompressor, DeflateParams, Direction};
use crate::proto::frame::decode_header;
use crate::proto::frame::{Decoded, FrameHeader, MAX_HEADER_LEN, OpCode};
use crate::proto::mask::apply_mask;
use crate::proto::utf8;
use crate::proto::{ProtocolError, Role};

use super::*;

/// The most a frame's announced length reserves for its assembly before its bytes arrive:
/// one receive buffer's worth.
const ASSEMBLY_RESERVE_MAX: usize = 64 << 10;

impl Reader {
    pub(super) fn new(role: Role, config: SessionConfig) -> Self {
        Self {
            role,
            max_message_size: config.max_message_size as u64,
            frame: None,
            message: None,
            compressed: false,
            deflate: config.deflate,
            pieces: None,
            lent: Lent::Nothing,
        }
    }

    /// Bytes of a partly received message held in memory.
    pub fn buffered_bytes(&self) -> usize {
        let pieces = self.pieces.as_deref();
        pieces.map_or(0, |p| {
            p.assembled.len() + p.control.len() + usize::from(p.header_len)
        })
    }

    /// Heap memory held for messages still arriving: their buffers' capacity, and the
    /// inflater while a compressed message is in progress.
    pub fn held_bytes(&self) -> usize {
        let Some(pieces) = self.pieces.as_deref() else {
            return 0;
        };
        let inflating = match (&pieces.inflater, self.compressed) {
            (Some(inflater), true) => inflater.memory(),
            _ => 0,
        };
        pieces.assembled.capacity() + pieces.delivered.len() + pieces.control.capacity() + inflating
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
        self.read_sharing(input, writer, out, None)
    }

    /// [`Reader::read`], which also puts in `shared`, when given, a handle on the event's
    /// payload when it was assembled in the reader's own memory (from several frames or
    /// reads), so the caller can send it on without copying it.
    pub fn read_sharing<'a, B: BufMut>(
        &'a mut self,
        input: &'a mut [u8],
        writer: &mut Writer,
        out: &mut B,
        shared: Option<&mut Option<Bytes>>,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        self.free_delivered_buffer();
        if writer.state == State::Closed {
            return Ok((input.len(), None));
        }
        if let Some((used, kind)) = self.small_server_message(input) {
            return Ok((used, Some(event(kind, &input[2..used]))));
        }
        if let Some((used, kind, start)) = self.whole_client_message(input) {
            return Ok((used, Some(event(kind, &input[start..used]))));
        }
        let mut used = 0;
        while used < input.len() {
            match self.step(&mut input[used..], writer, out) {
                Ok(Step::Consumed(n)) => used += n,
                Ok(Step::Ready { used: n, kind, at }) => {
                    let start = used;
                    used += n;
                    self.lent = match at {
                        Location::Input(_) => Lent::Nothing,
                        Location::Message => Lent::Message,
                        Location::Control => Lent::Control,
                    };
                    let payload: &'a [u8] = match at {
                        Location::Input(range) => &input[start + range.start..start + range.end],
                        Location::Message => match (self.pieces.as_deref_mut(), shared) {
                            (Some(p), Some(shared)) => {
                                p.delivered = Bytes::from(std::mem::take(&mut p.assembled));
                                *shared = Some(p.delivered.clone());
                                &p.delivered
                            }
                            (Some(p), None) => &p.assembled,
                            (None, _) => &[],
                        },
                        Location::Control => self.pieces.as_deref().map_or(&[], |p| &p.control),
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

    /// A client's common case, decoded from two header bytes: a whole unfragmented text or
    /// binary message of at most 125 bytes, unmasked, no RSV bit, at a frame boundary, with
    /// its payload in `input`. Returns its length and kind; `None` for anything else, which
    /// the general path then decodes (or fails) as it always does, so this path accepts
    /// exactly what that one would deliver whole from the same bytes.
    #[inline]
    pub(super) fn small_server_message(&self, input: &[u8]) -> Option<(usize, Ready)> {
        let [b0, b1, ..] = *input else {
            return None;
        };
        let kind = self.whole_message_start(Role::Client, b0)?;
        // Mask bit clear and a 7-bit length (126 and 127 announce longer lengths).
        if b1 > 125 || u64::from(b1) > self.max_message_size {
            return None;
        }
        let end = 2 + usize::from(b1);
        let payload = input.get(2..end)?;
        if matches!(kind, Ready::Text) && utf8::validate(payload).is_err() {
            return None;
        }
        Some((end, kind))
    }

    /// A server's common case, decoded from a masked header with a 7- or 16-bit length: a
    /// whole unfragmented text or binary message, no RSV bit, at a frame boundary, with its
    /// payload in `input`, which is unmasked in place. Returns its end and kind, and where
    /// its payload starts; `None` for anything else, with `input` as it was, which the
    /// general path then decodes (or fails) as it always does, so this path accepts exactly
    /// what that one would deliver whole from the same bytes.
    #[inline]
    pub(super) fn whole_client_message(&self, input: &mut [u8]) -> Option<(usize, Ready, usize)> {
        let [b0, b1, ..] = *input else {
            return None;
        };
        let kind = self.whole_message_start(Role::Server, b0)?;
        // Mask bit set; a 7-bit length, or 126 and a 16-bit one (127 announces 64 bits).
        let (len, key_at) = match b1 ^ 0x80 {
            len @ 0..=125 => (usize::from(len), 2),
            126 => (
                usize::from(u16::from_be_bytes([*input.get(2)?, *input.get(3)?])),
                4,
            ),
            _ => return None,
        };
        if len as u64 > self.max_message_size {
            return None;
        }
        let start = key_at + 4;
        let key: [u8; 4] = input.get(key_at..start)?.try_into().ok()?;
        let payload = input.get_mut(start..start + len)?;
        apply_mask(payload, key, 0);
        if matches!(kind, Ready::Text) && utf8::validate(payload).is_err() {
            // Masked again, as it came: the general path fails it with its own answer.
            apply_mask(payload, key, 0);
            return None;
        }
        Some((start + len, kind, start))
    }

    /// What a short path may take: for a session of `role` at a frame boundary with
    /// nothing in progress, a first header byte of FIN, RSV1-3 clear and opcode text or
    /// binary.
    #[inline]
    fn whole_message_start(&self, role: Role, b0: u8) -> Option<Ready> {
        if self.role != role
            || self.frame.is_some()
            || self.message.is_some()
            || self.pieces.is_some()
        {
            return None;
        }
        match b0 {
            0x81 => Some(Ready::Text),
            0x82 => Some(Ready::Binary),
            _ => None,
        }
    }

    /// Drops any partial message after the connection failed.
    /// Drops whatever message or frame was in progress, with its buffers.
    pub fn discard(&mut self) {
        self.reset();
    }

    pub(super) fn reset(&mut self) {
        self.frame = None;
        self.message = None;
        self.compressed = false;
        self.pieces = None;
    }

    fn pieces(&mut self) -> &mut Pieces {
        self.pieces.get_or_insert_default()
    }

    /// Frees the buffer the last event lent out (a message's or a control frame's, never
    /// the other: a control frame may arrive in the middle of a message).
    fn free_delivered_buffer(&mut self) {
        let Some(pieces) = self.pieces.as_deref_mut() else {
            return;
        };
        match std::mem::take(&mut self.lent) {
            Lent::Message => {
                pieces.assembled = Vec::new();
                pieces.delivered = Bytes::new();
            }
            Lent::Control => pieces.control = Vec::new(),
            Lent::Nothing => {}
        }
        self.free_idle_pieces();
    }

    /// Frees the pieces' box once it holds nothing.
    fn free_idle_pieces(&mut self) {
        let idle = self.message.is_none()
            && !self.compressed
            && self.pieces.as_deref().is_some_and(|pieces| {
                pieces.header_len == 0
                    && pieces.inflater.is_none()
                    && pieces.assembled.capacity() == 0
                    && pieces.delivered.is_empty()
                    && pieces.control.capacity() == 0
            });
        if idle {
            self.pieces = None;
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
            apply_mask(chunk, key, usize::from(frame.phase));
        }
        let done = take as u64 == frame.remaining;
        self.frame = if done {
            None
        } else {
            Some(Frame {
                remaining: frame.remaining - take as u64,
                phase: ((usize::from(frame.phase) + take) & 3) as u8,
                ..frame
            })
        };
        let chunk_at = used..used + take;
        used += take;

        if frame.opcode.is_control() {
            if !done {
                self.pieces().control.extend_from_slice(chunk);
                return Ok(Step::Consumed(used));
            }
            let at = match self.pieces.as_deref_mut() {
                Some(pieces) if !pieces.control.is_empty() => {
                    pieces.control.extend_from_slice(chunk);
                    Location::Control
                }
                _ => Location::Input(chunk_at),
            };
            let payload = match &at {
                Location::Input(range) => &input[range.clone()],
                _ => self.pieces.as_deref().map_or(&[][..], |p| &p.control),
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
            self.pieces().compressed_len = 0;
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

        let pieces = self.pieces();
        if opcode == OpCode::Text {
            pieces
                .utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::invalid_payload("invalid UTF-8 in text message"))?;
        }
        // The frame's length is known: room for all of it at once, not a reallocation and
        // a copy of what came so far at every read it spans. Bounded, so a length a peer
        // declares and never sends holds little.
        let frame_len = usize::try_from(frame.remaining).unwrap_or(usize::MAX);
        pieces
            .assembled
            .reserve(frame_len.min(ASSEMBLY_RESERVE_MAX));
        pieces.assembled.extend_from_slice(chunk);
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
            self.pieces().utf8.finish().map_err(|_| {
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
        let pieces = self.pieces();
        let inflater = pieces
            .inflater
            .get_or_insert_with(|| Box::new(Decompressor::new(direction)));
        let before = pieces.assembled.len();
        inflater.inflate(chunk, &mut pieces.assembled, limit)?;
        if last {
            inflater.finish_message(&mut pieces.assembled, limit)?;
            if direction.no_context_takeover {
                // Nothing carries over to the next message: free the inflate state.
                pieces.inflater = None;
            }
        }
        if text {
            pieces
                .utf8
                .feed(&pieces.assembled[before..])
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
        let have = self
            .pieces
            .as_deref()
            .map_or(0, |p| usize::from(p.header_len));
        if have == 0 {
            return match decode_header(input)? {
                Decoded::Header(header, n) => Ok(Some((header, n))),
                Decoded::NeedBytes(_) => {
                    // A header is at most 14 bytes, so this partial one fits.
                    let pieces = self.pieces();
                    pieces.header[..input.len()].copy_from_slice(input);
                    pieces.header_len = input.len() as u8;
                    Ok(None)
                }
            };
        }
        let pieces = self.pieces();
        let copied = (MAX_HEADER_LEN - have).min(input.len());
        pieces.header[have..have + copied].copy_from_slice(&input[..copied]);
        match decode_header(&pieces.header[..have + copied])? {
            Decoded::Header(header, n) => {
                pieces.header_len = 0;
                self.free_idle_pieces();
                Ok(Some((header, n - have)))
            }
            Decoded::NeedBytes(_) => {
                pieces.header_len = (have + copied) as u8;
                Ok(None)
            }
        }
    }

    /// Bytes of the uncompressed message assembled so far.
    fn buffered_message(&self) -> u64 {
        self.pieces
            .as_deref()
            .map_or(0, |p| p.assembled.len() as u64)
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
                let allowance = self.max_message_size + self.max_message_size / 1024 + 1024;
                let pieces = self.pieces();
                pieces.compressed_len += header.payload_len;
                if pieces.compressed_len > allowance {
                    return Err(ProtocolError::too_big(
                        "compressed message larger than the maximum message size",
                    ));
                }
            } else if self.buffered_message() + header.payload_len > self.max_message_size {
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
