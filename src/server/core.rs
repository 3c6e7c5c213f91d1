//! What every connection of a shard shares: settings, the frame arena, shared compressors,
//! the shard's pub/sub topics.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::proto::deflate::{Compressor, DeflateConfig, Direction};

use super::config::ServerConfig;
use super::pubsub::ShardTopics;

pub(crate) struct ShardCore {
    pub config: Arc<ServerConfig>,
    pub arena: Arena,
    pub compressors: SharedCompressors,
    pub topics: ShardTopics,
}

impl ShardCore {
    pub fn new(config: Arc<ServerConfig>, topics: ShardTopics) -> Self {
        let compressors = SharedCompressors {
            config: config.deflate,
            by_window: Default::default(),
        };
        Self {
            config,
            arena: Arena::default(),
            compressors,
            topics,
        }
    }
}

/// Frames are written into one growing buffer and split off as shared [`Bytes`]: no heap
/// allocation per frame until a block is used up.
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
