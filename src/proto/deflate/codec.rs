//! The per-message codec: zlib (through flate2) in raw-deflate mode, each message ended by a
//! sync flush whose `00 00 ff ff` tail is cut on sending and put back on receiving.

use bytes::BufMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::super::ProtocolError;
use super::super::frame::{FrameHead, OpCode, write_frame};
use super::negotiation::{DeflateConfig, Direction};
use super::{MIN_COMPRESS_WINDOW_BITS, TAIL};

/// Compresses whole messages for one direction.
///
/// Without context takeover every message starts from a fresh state, so one compressor can
/// serve every connection with the same window size.
pub struct Compressor {
    inner: Compress,
    reset_each_message: bool,
    min_size: usize,
    /// The compressed payload of the frame being written (its length goes first).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("reset_each_message", &self.reset_each_message)
            .finish()
    }
}

impl Compressor {
    /// `None` when the window is too small for zlib: that direction must stay uncompressed.
    pub fn new(direction: Direction, config: &DeflateConfig) -> Option<Self> {
        if direction.window_bits < MIN_COMPRESS_WINDOW_BITS {
            return None;
        }
        let level = Compression::new(config.level.min(9));
        Some(Self {
            inner: Compress::new_with_window_bits(level, false, direction.window_bits),
            reset_each_message: direction.no_context_takeover,
            min_size: config.min_size,
            scratch: Vec::new(),
        })
    }

    /// Messages shorter than this are better sent uncompressed.
    pub fn min_size(&self) -> usize {
        self.min_size
    }

    /// Appends a whole frame carrying `payload`: compressed (RSV1 set), or as it is when
    /// deflate would make it larger and no context ties later messages to this one.
    pub fn write_frame<B: BufMut>(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        mask: Option<[u8; 4]>,
        out: &mut B,
    ) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.compress(payload, &mut scratch);
        // With context takeover the peer's window must see every byte we compressed, so
        // the compressed form goes out even when it is larger.
        if self.reset_each_message && scratch.len() >= payload.len() {
            write_frame(out, FrameHead::whole(opcode), payload, mask);
        } else {
            write_frame(out, FrameHead::whole(opcode).compressed(), &scratch, mask);
        }
        // Keep a modest buffer for the next message; give back a huge one.
        if scratch.capacity() <= 1 << 20 {
            self.scratch = scratch;
        }
    }

    /// Appends the compressed form of `payload` (without the sync-flush tail) to `out`.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if payload.is_empty() {
            // An empty stored block (RFC 7692 §7.2.3.6). zlib writes nothing for a sync flush
            // with no new input, which would leave the receiver without a block header.
            out.push(0x00);
            return;
        }
        let start = out.len();
        let mut input = payload;
        loop {
            // Deflate output can exceed its input a little; leave room for the flush too.
            out.reserve(input.len() / 2 + 64);
            let before = self.inner.total_in();
            // Cannot fail: the stream is valid and the output has room (a full buffer is not an error).
            let _ = self.inner.compress_vec(input, out, FlushCompress::Sync);
            input = &input[(self.inner.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if self.reset_each_message {
            self.inner.reset();
        }
    }
}

/// Inflates messages for one direction, bounded by a size limit as it goes.
pub struct Decompressor {
    inner: Decompress,
    reset_each_message: bool,
    window_bits: u8,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("reset_each_message", &self.reset_each_message)
            .finish()
    }
}

impl Decompressor {
    pub fn new(direction: Direction) -> Self {
        // zlib inflates raw deflate with at least a 9-bit window; a larger window than the
        // peer's always decodes its output.
        let bits = direction.window_bits.max(MIN_COMPRESS_WINDOW_BITS);
        Self {
            inner: Decompress::new_with_window_bits(false, bits),
            reset_each_message: direction.no_context_takeover,
            window_bits: bits,
        }
    }

    /// Roughly what this inflater holds: its window and zlib's inflate state (about 7 KiB).
    pub fn memory(&self) -> usize {
        (1 << self.window_bits) + (7 << 10)
    }

    /// Inflates the next piece of a message's compressed payload, appending to `out`.
    /// Fails with 1009 as soon as `out` would pass `limit` bytes.
    ///
    /// The work is proportional to the input and the output it produces: output space is
    /// reserved, never zero-filled, and only when the buffer is full, so a stream of empty
    /// or tiny frames after a large one costs next to nothing.
    pub fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        const TOO_BIG: ProtocolError =
            ProtocolError::too_big("message larger than the maximum message size once inflated");
        // Every earlier call returned with room to spare, so zlib holds no pending output:
        // without input there is nothing to do.
        if input.is_empty() {
            return Ok(());
        }
        // One byte past the limit is enough to know the message is too big.
        let cap = limit.saturating_add(1);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    return Err(TOO_BIG);
                }
                // Grow in steps that double with the message, up to 1 MiB at a time.
                let step = (cap - out.len()).min(out.len().clamp(16 << 10, 1 << 20));
                out.reserve_exact(step);
            }
            let before_in = self.inner.total_in();
            let status = self
                .inner
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::invalid_payload("invalid compressed data"))?;
            input = &input[(self.inner.total_in() - before_in) as usize..];
            if out.len() > limit {
                return Err(TOO_BIG);
            }
            if status == Status::StreamEnd {
                // A final block ends the deflate stream; permessage-deflate never sends one, but
                // a new stream may start with the next message.
                self.inner.reset(false);
                return match input.is_empty() {
                    true => Ok(()),
                    false => Err(ProtocolError::invalid_payload(
                        "data after the end of the deflate stream",
                    )),
                };
            }
            if out.len() < out.capacity() {
                // zlib stopped short of the space it had: it needs more input.
                return Ok(());
            }
        }
    }

    /// Ends a message: inflates the cut sync-flush tail, and resets if no context is kept.
    pub fn finish_message(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
        self.inflate(&TAIL, out, limit)?;
        if self.reset_each_message {
            self.inner.reset(false);
        }
        Ok(())
    }
}
