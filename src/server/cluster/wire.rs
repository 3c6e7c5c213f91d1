//! What crosses the broker: a message's kind (text or binary), its payload, and the node
//! that published it, so that a node never delivers its own messages twice.
//!
//! On NATS these ride in headers (`Ringws-Origin`, `Ringws-Type`) and the payload is the
//! message itself. A Redis message has no headers, so a node wraps its messages in a short
//! envelope: `\0RW1`, a type byte (`t` or `b`), the origin node as 8 bytes big-endian, then
//! the payload. A message without these (a backend's) is text when it is valid UTF-8 and
//! binary otherwise; a backend that needs binary for UTF-8 bytes, or a payload that begins
//! with the envelope's magic, sends an envelope with origin 0.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The NATS header naming the node that published a message.
pub(crate) const ORIGIN_HEADER: &str = "Ringws-Origin";
/// The NATS header saying `text` or `binary`.
pub(crate) const TYPE_HEADER: &str = "Ringws-Type";
/// The first bytes of a Redis envelope.
pub(crate) const MAGIC: &[u8; 4] = b"\0RW1";
const ENVELOPE_HEADER: usize = MAGIC.len() + 1 + 8;

/// A node of a cluster: random, never 0 (which stands for "no node").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(pub u64);

impl NodeId {
    pub(crate) fn random() -> Self {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // No entropy: the time and the process still tell nodes apart.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id()) << 32).to_be_bytes();
        }
        Self(u64::from_be_bytes(bytes).max(1))
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        u64::from_str_radix(text.trim(), 16).ok().map(Self)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A message on its way from a shard to the broker.
pub(crate) struct Outbound {
    pub topic: Box<str>,
    pub binary: bool,
    pub payload: Bytes,
}

impl Outbound {
    /// What it holds in memory while it waits.
    pub fn cost(&self) -> usize {
        self.payload.len() + self.topic.len() + std::mem::size_of::<Self>()
    }

    pub fn type_name(&self) -> &'static str {
        if self.binary { "binary" } else { "text" }
    }

    /// The Redis envelope of this message from `origin`.
    pub fn envelope(&self, origin: NodeId) -> Bytes {
        let mut out = BytesMut::with_capacity(ENVELOPE_HEADER + self.payload.len());
        out.put_slice(MAGIC);
        out.put_u8(if self.binary { b'b' } else { b't' });
        out.put_u64(origin.0);
        out.put_slice(&self.payload);
        out.freeze()
    }
}

/// A message from the broker, for this node's subscribers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Inbound {
    pub topic: String,
    /// The node that published it; `None` for a backend.
    pub origin: Option<NodeId>,
    pub binary: bool,
    pub payload: Bytes,
}

/// Why a broker message was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// An envelope cut short, or a type other than text or binary.
    Envelope,
    /// Marked text but not UTF-8: no WebSocket text frame may carry it.
    NotUtf8,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Envelope => "a malformed envelope or type",
            Self::NotUtf8 => "a text message that is not UTF-8",
        })
    }
}

/// Text or binary from an explicit type, or from the payload when there is none.
pub(crate) fn kind(type_name: Option<&[u8]>, payload: &[u8]) -> Result<bool, Malformed> {
    let utf8 = simdutf8::basic::from_utf8(payload).is_ok();
    match type_name {
        None => Ok(!utf8),
        Some(b"binary") => Ok(true),
        Some(b"text") if utf8 => Ok(false),
        Some(b"text") => Err(Malformed::NotUtf8),
        Some(_) => Err(Malformed::Envelope),
    }
}

/// Reads a Redis message's payload: an envelope, or a backend's bare message.
pub(crate) fn open_envelope(topic: String, payload: Bytes) -> Result<Inbound, Malformed> {
    if !payload.starts_with(MAGIC) {
        let binary = kind(None, &payload)?;
        return Ok(Inbound {
            topic,
            origin: None,
            binary,
            payload,
        });
    }
    if payload.len() < ENVELOPE_HEADER {
        return Err(Malformed::Envelope);
    }
    let type_name: &[u8] = match payload[MAGIC.len()] {
        b't' => b"text",
        b'b' => b"binary",
        _ => return Err(Malformed::Envelope),
    };
    let mut origin = [0u8; 8];
    origin.copy_from_slice(&payload[MAGIC.len() + 1..ENVELOPE_HEADER]);
    let origin = u64::from_be_bytes(origin);
    let payload = payload.slice(ENVELOPE_HEADER..);
    let binary = kind(Some(type_name), &payload)?;
    Ok(Inbound {
        topic,
        origin: (origin != 0).then_some(NodeId(origin)),
        binary,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_bare_messages_are_a_backends() {
        let node = NodeId(0xfeed);
        let out = Outbound {
            topic: "t".into(),
            binary: true,
            payload: Bytes::from_static(b"\xff\x00"),
        };
        let inbound = open_envelope("t".into(), out.envelope(node)).expect("an envelope");
        assert_eq!(inbound.origin, Some(node));
        assert!(inbound.binary);
        assert_eq!(&inbound.payload[..], b"\xff\x00");
        let bare = open_envelope("t".into(), Bytes::from_static(b"{\"p\":1}")).expect("bare");
        assert_eq!((bare.origin, bare.binary), (None, false));
        let binary = open_envelope("t".into(), Bytes::from_static(b"\xc3")).expect("bare");
        assert!(binary.binary, "not UTF-8: binary");
    }

    #[test]
    fn bad_envelopes_and_types_are_refused() {
        let cut = Bytes::from_static(b"\0RW1t\0\0");
        assert_eq!(open_envelope("t".into(), cut), Err(Malformed::Envelope));
        let mut lying = b"\0RW1t".to_vec();
        lying.extend_from_slice(&[0; 8]);
        lying.push(0xff);
        assert_eq!(
            open_envelope("t".into(), lying.into()),
            Err(Malformed::NotUtf8)
        );
        assert_eq!(kind(Some(b"json"), b"{}"), Err(Malformed::Envelope));
        assert_eq!(kind(Some(b"binary"), b"abc"), Ok(true));
    }

    #[test]
    fn node_ids_print_and_parse_as_hex() {
        let node = NodeId::random();
        assert_ne!(node.0, 0);
        assert_eq!(NodeId::parse(&node.to_string()), Some(node));
    }
}
