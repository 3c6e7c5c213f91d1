//! The frames a connection queues for its socket.

use ringws::proto::OpCode;
use ringws::proto::deflate::Compressor;
use ringws::proto::frame::{FrameHeader, MAX_HEADER_LEN, encode_header};
use ringws::proto::mask::{MaskKeys, apply_mask};
use ringws::proto::session::Writer;

use crate::messages::Payloads;
use crate::payload::Stamp;

pub struct Outbox {
    /// Frames waiting for the socket.
    pub bytes: Vec<u8>,
    /// Keys for the data frames built here; the session's writer has its own for the
    /// frames it writes (pongs, the close, compressed messages).
    keys: MaskKeys,
    compressor: Option<Compressor>,
    /// A message's payload, before it is framed.
    payload: Vec<u8>,
}

impl Outbox {
    pub fn new(keys: MaskKeys, compressor: Option<Compressor>) -> Outbox {
        Outbox {
            bytes: Vec::new(),
            keys,
            compressor,
            payload: Vec::new(),
        }
    }

    /// Appends one data message carrying `stamp`, framed and masked, compressed when
    /// permessage-deflate was agreed.
    pub fn message(&mut self, writer: &mut Writer, payloads: &Payloads, stamp: &Stamp) {
        if let (None, Payloads::Stamped { size }) = (&self.compressor, payloads) {
            // The hot path: the length is known, so the payload is written straight after
            // its header and masked where it lies.
            let len = (*size).max(crate::payload::MIN_SIZE);
            let key = self.frame_header(OpCode::Binary, len);
            let start = self.bytes.len();
            stamp.write(len, &mut self.bytes);
            apply_mask(&mut self.bytes[start..], key, 0);
            return;
        }
        self.payload.clear();
        let opcode = payloads.write(stamp, &mut self.payload);
        if let Some(compressor) = &mut self.compressor {
            // The writer refuses only once a close was sent, and no message follows ours.
            let _ = writer.send_compressed(opcode, &self.payload, compressor, &mut self.bytes);
            return;
        }
        let key = self.frame_header(opcode, self.payload.len());
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&self.payload);
        apply_mask(&mut self.bytes[start..], key, 0);
    }

    /// Appends the header of a masked, final frame of `len` bytes; returns its key.
    fn frame_header(&mut self, opcode: OpCode, len: usize) -> [u8; 4] {
        let key = self.keys.next_key();
        let header = FrameHeader {
            fin: true,
            rsv1: false,
            opcode,
            mask: Some(key),
            payload_len: len as u64,
        };
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = encode_header(&mut head, &header);
        self.bytes.extend_from_slice(&head[..head_len]);
        key
    }
}
