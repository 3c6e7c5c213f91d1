//! What every virtual client writes: masked frames, each with a fresh masking key.

use ringws::proto::frame::write_frame;
use ringws::proto::{CloseCode, OpCode};

/// Masking keys for the client's frames: xorshift, seeded per connection. RFC 6455 wants them
/// unpredictable to intermediaries, not secret.
pub struct MaskSource(u64);

impl MaskSource {
    pub fn new(connection: u32) -> Self {
        Self(u64::from(connection).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 as u32).to_ne_bytes()
    }
}

impl MaskSource {
    /// Appends a masked binary message.
    pub fn binary(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        write_frame(out, OpCode::Binary, true, false, payload, Some(self.next()));
    }

    /// Appends a masked close frame with 1000.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        let code = u16::from(CloseCode::NORMAL).to_be_bytes();
        write_frame(out, OpCode::Close, true, false, &code, Some(self.next()));
    }
}
