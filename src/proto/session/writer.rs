//! The sending half: messages and control frames framed (and compressed) into a buffer.

use bytes::BufMut;

use crate::proto::close::{CloseCode, parse_close_payload};
use crate::proto::deflate::{Compressor, DeflateParams, Direction};
use crate::proto::frame::{FrameHead, FrameHeader, close_payload, encode_header, write_frame};
use crate::proto::frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use crate::proto::mask::MaskKeys;
use crate::proto::{ProtocolError, Role};

use super::*;

impl Writer {
    /// Does what a whole control frame requires and says which event it makes.
    pub(super) fn answer_control<B: BufMut>(
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

    pub(super) fn new(role: Role, deflate: Option<DeflateParams>) -> Self {
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

    /// Writes only the header of one whole, uncompressed data message of `len` bytes, for a
    /// server that queues the payload right behind it from where it already lies. Writes
    /// nothing and returns `Ok(false)` when the frame cannot be sent that way: a client
    /// masks its payloads, and control frames go whole through [`Writer::send`].
    pub fn send_header<B: BufMut>(
        &mut self,
        opcode: OpCode,
        len: usize,
        out: &mut B,
    ) -> Result<bool, SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        if self.role == Role::Client || opcode.is_control() {
            return Ok(false);
        }
        let header = FrameHeader {
            fin: true,
            rsv1: false,
            opcode,
            mask: None,
            payload_len: len as u64,
        };
        let mut encoded = [0u8; MAX_HEADER_LEN];
        let written = encode_header(&mut encoded, &header);
        out.put_slice(&encoded[..written]);
        Ok(true)
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
