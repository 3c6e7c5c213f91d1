//! Outgoing frames: written into a per-shard arena and handed to the runtime as shared
//! `Bytes`, compressed by a connection's own compressor or one shared by the shard.

use bytes::{Bytes, BytesMut};

use crate::proto::deflate::{Compressor, DeflateConfig, Direction};
use crate::proto::session::Writer;
use crate::proto::{OpCode, SendError};

/// Frames are written into one growing buffer and split off as shared [`Bytes`]: no heap
/// allocation per frame until a block is used up. A frame that must wait in a queue behind
/// a send in flight is copied out by the runtime, so a slow reader never keeps a block alive,
/// and once all of a block's frames are sent the next read writes from its start again.
#[derive(Default)]
pub(crate) struct Arena {
    buf: BytesMut,
}

impl Arena {
    const BLOCK: usize = 256 << 10;

    /// The buffer, with room for at least `hint` more bytes.
    pub fn room(&mut self, hint: usize) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < hint {
            self.buf.reserve(hint.max(Self::BLOCK));
        }
        &mut self.buf
    }

    /// Whether `hint` more bytes fit in the current block. When they do not, the next
    /// [`Arena::room`] starts a new one and copies what is pending into it.
    pub fn fits(&self, hint: usize) -> bool {
        self.buf.capacity() - self.buf.len() >= hint
    }

    /// Starts the next frames at the block's beginning if every frame cut from it has been
    /// sent: a turn then writes its frames where the turn before did, and the kernel's copy
    /// of them reads lines still in cache. Called once a read, not once a frame.
    pub fn rewind(&mut self) {
        if self.buf.is_empty() {
            let _ = self.buf.try_reclaim(Self::BLOCK);
        }
    }

    /// Bytes written since the last take.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Everything written since the last take, as one shared buffer.
    pub fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// One compressor per window size for connections whose server side keeps no context
/// between messages: each message starts from a fresh state, so any of them can use it.
pub(crate) struct SharedCompressors {
    config: Option<DeflateConfig>,
    by_window: [Option<Compressor>; 16],
}

impl SharedCompressors {
    pub fn new(config: Option<DeflateConfig>) -> Self {
        Self {
            config,
            by_window: Default::default(),
        }
    }

    pub fn get(&mut self, direction: Direction) -> Option<&mut Compressor> {
        let config = self.config.as_ref()?;
        let slot = self.by_window.get_mut(usize::from(direction.window_bits))?;
        if slot.is_none() {
            *slot = Compressor::new(
                Direction {
                    no_context_takeover: true,
                    ..direction
                },
                config,
            );
        }
        slot.as_mut()
    }
}

/// Writes one message into `arena`, compressed when the connection negotiated it and the
/// message is large enough to gain: with the connection's own compressor when it keeps
/// context, else with the shard's shared one.
pub(crate) fn write_message(
    writer: &mut Writer,
    own_compressor: Option<&mut Compressor>,
    arena: &mut Arena,
    shared: &mut SharedCompressors,
    opcode: OpCode,
    payload: &[u8],
) -> Result<(), SendError> {
    let out = arena.room(payload.len() + 16);
    if let Some(compressor) = own_compressor {
        return writer.send_compressed(opcode, payload, compressor, out);
    }
    let shared = writer
        .own_direction()
        .filter(|_| !opcode.is_control())
        .and_then(|direction| shared.get(direction));
    match shared {
        Some(compressor) => writer.send_compressed(opcode, payload, compressor, out),
        None => writer.send(opcode, payload, out),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::Arena;

    fn write(arena: &mut Arena, bytes: &[u8]) -> bytes::Bytes {
        arena.rewind();
        arena.room(bytes.len()).put_slice(bytes);
        arena.take().expect("written")
    }

    #[test]
    fn a_block_is_written_from_its_start_again_once_its_frames_are_sent() {
        let mut arena = Arena::default();
        let first = write(&mut arena, b"first turn");
        let second = write(&mut arena, b"same turn");
        assert_ne!(first.as_ptr(), second.as_ptr());
        let start = first.as_ptr();
        drop((first, second));
        let next_turn = write(&mut arena, b"next turn");
        assert_eq!(next_turn.as_ptr(), start);
        assert_eq!(&next_turn[..], b"next turn");
    }

    #[test]
    fn a_frame_still_queued_is_never_written_over() {
        let mut arena = Arena::default();
        let queued = write(&mut arena, b"still queued");
        let sent = write(&mut arena, b"sent");
        drop(sent);
        let next = write(&mut arena, b"next");
        assert_eq!(&queued[..], b"still queued");
        assert_eq!(&next[..], b"next");
        assert!(next.as_ptr() > queued.as_ptr());
    }
}
