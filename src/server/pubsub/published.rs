//! [`Published`]: a message framed once for every subscriber of its topic.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::OpCode;
use crate::proto::deflate::Direction;
use crate::proto::frame::{FrameHead, write_frame};
use crate::runtime::ConnId;

use super::super::app::Message;
use super::super::frames::SharedCompressors;
use super::super::metrics::Counters;

/// A message on its way to a topic's subscribers.
pub struct Published {
    topic: Box<str>,
    /// When it was published, for the delivery-latency histogram.
    at: Instant,
    /// Its place in the order of every publish to the server: a subscriber that joined
    /// after this was published does not receive it.
    sequence: u64,
    opcode: OpCode,
    /// The whole frame, uncompressed, as every subscriber without deflate receives it.
    frame: Bytes,
    header_len: usize,
    /// The publishing connection, which does not receive its own message.
    origin: Option<(usize, ConnId)>,
    /// Compressed frames without context takeover, by window bits 8..=15.
    compressed: [OnceLock<Bytes>; 8],
}

impl Published {
    pub(crate) fn new(
        topic: &str,
        sequence: u64,
        message: Message<'_>,
        origin: Option<(usize, ConnId)>,
    ) -> Self {
        let (opcode, payload) = match message {
            Message::Text(text) => (OpCode::Text, text.as_bytes()),
            Message::Binary(data) => (OpCode::Binary, data),
        };
        let mut frame = BytesMut::with_capacity(payload.len() + 10);
        write_frame(&mut frame, FrameHead::whole(opcode), payload, None);
        Self {
            topic: topic.into(),
            at: Instant::now(),
            sequence,
            opcode,
            header_len: frame.len() - payload.len(),
            frame: frame.freeze(),
            origin,
            compressed: Default::default(),
        }
    }

    /// The same message, published at `at` instead (a test's clock).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn published_at_instant(mut self, at: Instant) -> Self {
        self.at = at;
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// When it was published.
    pub(crate) fn published_at(&self) -> Instant {
        self.at
    }

    pub(crate) fn sequence(&self) -> u64 {
        self.sequence
    }

    pub(crate) fn opcode(&self) -> OpCode {
        self.opcode
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.frame[self.header_len..]
    }

    /// What this message holds in memory while it waits in a queue.
    pub(crate) fn cost(&self) -> usize {
        self.frame.len() + std::mem::size_of::<Self>() + self.topic.len()
    }

    /// Whether the connection `conn` of shard `shard` published this message.
    pub(crate) fn is_from(&self, shard: usize, conn: ConnId) -> bool {
        self.origin == Some((shard, conn))
    }

    /// The frame for a receiver compressing in `direction` (`None`: no deflate), shared by
    /// every receiver of the same window size. Only for directions without context takeover.
    pub(crate) fn frame_for(
        &self,
        direction: Option<Direction>,
        compressors: &mut SharedCompressors,
        counters: &Counters,
    ) -> Bytes {
        let slot = direction.and_then(|d| {
            let index = usize::from(d.window_bits.checked_sub(8)?);
            Some((d, self.compressed.get(index)?))
        });
        let Some((direction, slot)) = slot else {
            return self.frame.clone();
        };
        slot.get_or_init(|| {
            let payload = self.payload();
            match compressors.get(direction) {
                Some(compressor) if payload.len() >= compressor.min_size() => {
                    counters.shared_compression();
                    let mut out = BytesMut::with_capacity(payload.len() / 2 + 16);
                    compressor.write_frame(self.opcode, payload, None, &mut out);
                    out.freeze()
                }
                _ => self.frame.clone(),
            }
        })
        .clone()
    }
}
