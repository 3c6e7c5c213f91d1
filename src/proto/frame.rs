//! Frame headers: decoding and encoding (RFC 6455 §5.2).
//!
//! Decoding here is stateless: [`decode_header`] reads a header from the front of a
//! buffer or says how many more bytes it needs. The [`Session`](super::Session) keeps the
//! few bytes of a header split across reads and applies the role's rules.

use bytes::BufMut;

use super::ProtocolError;
use super::close::CloseCode;
use super::mask::apply_mask;

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (RFC 6455 §5.2); reserved values are rejected when decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// Maps the low four bits of the first header byte; `None` for reserved opcodes.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Control frames (close, ping, pong) may interleave a fragmented message.
    pub const fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: "per-message compressed" once permessage-deflate is negotiated.
    pub rsv1: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// The encoded size of this header.
    pub const fn encoded_len(&self) -> usize {
        header_len(self.payload_len, self.mask.is_some())
    }
}

/// The size of a header for a payload of `len` bytes.
pub const fn header_len(payload_len: u64, masked: bool) -> usize {
    let base = match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    if masked { base + 4 } else { base }
}

/// The outcome of looking for a header at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole header, and how many bytes it took.
    Header(FrameHeader, usize),
    /// The buffer holds only the start of a header; at least this many bytes are needed in all.
    NeedBytes(usize),
}

/// Decodes the header at the front of `buf`.
///
/// Checks what the header alone can tell: reserved opcodes, RSV2/RSV3, a 64-bit length with the
/// top bit set, and the control-frame rules. RSV1 and masking depend on the session and are
/// checked there.
#[inline]
pub fn decode_header(buf: &[u8]) -> Result<Decoded, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(Decoded::NeedBytes(2));
    };
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    let mask_at = match len7 {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let total = mask_at + 4 * usize::from(masked);
    if buf.len() < total {
        return Ok(Decoded::NeedBytes(total));
    }
    let fin = b0 & 0x80 != 0;
    let payload_len = match mask_at {
        2 => u64::from(len7),
        4 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        _ => u64::from_be_bytes([
            buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9],
        ]),
    };
    // One test for every rule a header can break on its own; the cold path says which.
    let control = b0 & 0x08 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0F);
    if opcode.is_none()
        || b0 & 0x30 != 0
        || payload_len >> 63 != 0
        || (control && (!fin || payload_len > MAX_CONTROL_PAYLOAD as u64))
    {
        return Err(header_violation(b0, payload_len));
    }
    // `total` bytes are there, so a masked header's key is: one load, no bounds checks.
    let mask = if masked {
        buf.get(mask_at..total).and_then(|key| key.try_into().ok())
    } else {
        None
    };
    let header = FrameHeader {
        fin,
        rsv1: b0 & 0x40 != 0,
        // The test above returned unless from_bits gave an opcode.
        opcode: opcode.unwrap_or(OpCode::Continuation),
        mask,
        payload_len,
    };
    Ok(Decoded::Header(header, total))
}

/// Names the rule a header broke; [`decode_header`] found that it broke one.
#[cold]
fn header_violation(b0: u8, payload_len: u64) -> ProtocolError {
    let reason = if OpCode::from_bits(b0 & 0x0F).is_none() {
        "reserved opcode"
    } else if b0 & 0x30 != 0 {
        "RSV2 or RSV3 set without a negotiated extension"
    } else if payload_len >> 63 != 0 {
        "64-bit payload length with the top bit set"
    } else if payload_len > MAX_CONTROL_PAYLOAD as u64 {
        "control frame longer than 125 bytes"
    } else {
        "fragmented control frame"
    };
    ProtocolError::protocol(reason)
}

/// Encodes a header into `dst`, returning its length.
pub fn encode_header(dst: &mut [u8; MAX_HEADER_LEN], header: &FrameHeader) -> usize {
    dst[0] = (u8::from(header.fin) << 7) | (u8::from(header.rsv1) << 6) | header.opcode as u8;
    let mask_bit = if header.mask.is_some() { 0x80 } else { 0 };
    let len = header.payload_len;
    let mut at = match len {
        0..=125 => {
            dst[1] = mask_bit | len as u8;
            2
        }
        126..=0xFFFF => {
            dst[1] = mask_bit | 126;
            dst[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            dst[1] = mask_bit | 127;
            dst[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    if let Some(key) = header.mask {
        dst[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// What a frame says about its message: its opcode, whether it ends the message, whether the
/// message is compressed (RSV1 under permessage-deflate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub opcode: OpCode,
    pub fin: bool,
    pub compressed: bool,
}

impl FrameHead {
    /// A whole message (or a control frame) in one frame.
    pub const fn whole(opcode: OpCode) -> Self {
        Self {
            opcode,
            fin: true,
            compressed: false,
        }
    }

    /// A frame of a message that continues in later frames.
    pub const fn fragment(opcode: OpCode) -> Self {
        Self {
            opcode,
            fin: false,
            compressed: false,
        }
    }

    /// The same frame, marked as carrying a compressed message (set on its first frame).
    pub const fn compressed(self) -> Self {
        Self {
            compressed: true,
            ..self
        }
    }
}

/// Appends a whole frame to `out`, masking the payload with `mask` when given.
pub fn write_frame<B: BufMut>(out: &mut B, head: FrameHead, payload: &[u8], mask: Option<[u8; 4]>) {
    let header = FrameHeader {
        fin: head.fin,
        rsv1: head.compressed,
        opcode: head.opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut encoded = [0u8; MAX_HEADER_LEN];
    let len = encode_header(&mut encoded, &header);
    if mask.is_none() && put_whole(out, &encoded, len, payload) {
        return;
    }
    out.put_slice(&encoded[..len]);
    match mask {
        None => out.put_slice(payload),
        Some(key) => put_masked(out, payload, key),
    }
}

/// Appends `payload` masked with `key`, through a small stack buffer: `BufMut` gives no
/// in-place access. Kept out of line so that its page-sized buffer does not make every
/// unmasked frame's call probe the stack.
#[inline(never)]
fn put_masked<B: BufMut>(out: &mut B, payload: &[u8], key: [u8; 4]) {
    let mut chunk = [0u8; 4096];
    for (i, piece) in payload.chunks(chunk.len()).enumerate() {
        let dst = &mut chunk[..piece.len()];
        dst.copy_from_slice(piece);
        apply_mask(dst, key, i * 4096);
        out.put_slice(dst);
    }
}

/// Writes an unmasked frame into `out`'s spare room in one step when it fits there with a
/// whole header's width to spare: the header is copied at its full fixed size (a few moves,
/// no call) and the payload written over its unused tail. Most server frames go this way,
/// into an arena that reserved room for them. Whether it wrote the frame.
fn put_whole<B: BufMut>(
    out: &mut B,
    encoded: &[u8; MAX_HEADER_LEN],
    len: usize,
    payload: &[u8],
) -> bool {
    let total = len + payload.len();
    let room = out.chunk_mut();
    if room.len() < total.max(MAX_HEADER_LEN) {
        return false;
    }
    room[..MAX_HEADER_LEN].copy_from_slice(encoded);
    room[len..total].copy_from_slice(payload);
    // SAFETY: the first `total` bytes of `out`'s spare room were written just above (the
    // header's `len` bytes, then the payload after them), and `total` is within that room.
    unsafe { out.advance_mut(total) };
    true
}

/// The payload of a close frame: the code, then a UTF-8 reason cut to fit 125 bytes.
pub fn close_payload(code: CloseCode, reason: &str) -> ([u8; MAX_CONTROL_PAYLOAD], usize) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.as_u16().to_be_bytes());
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    (payload, 2 + cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(header: FrameHeader) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut buf, &header);
        assert_eq!(n, header.encoded_len());
        assert_eq!(decode_header(&buf[..n]), Ok(Decoded::Header(header, n)));
        for short in 0..n {
            assert!(
                matches!(decode_header(&buf[..short]), Ok(Decoded::NeedBytes(need)) if need > short)
            );
        }
    }

    #[test]
    fn all_length_forms_roundtrip() {
        for len in [
            0,
            1,
            125,
            126,
            127,
            0xFFFF,
            0x1_0000,
            u32::MAX as u64 + 7,
            (1 << 63) - 1,
        ] {
            for mask in [None, Some([1, 2, 3, 4])] {
                for opcode in [OpCode::Text, OpCode::Binary, OpCode::Continuation] {
                    roundtrip(FrameHeader {
                        fin: len % 2 == 0,
                        rsv1: false,
                        opcode,
                        mask,
                        payload_len: len,
                    });
                }
            }
        }
        roundtrip(FrameHeader {
            fin: true,
            rsv1: true,
            opcode: OpCode::Ping,
            mask: None,
            payload_len: 125,
        });
    }

    #[test]
    fn rejects_what_the_header_alone_forbids() {
        let cases: &[&[u8]] = &[
            &[0x83, 0x00],                            // reserved data opcode
            &[0x8B, 0x00],                            // reserved control opcode
            &[0xA1, 0x00],                            // RSV2
            &[0x91, 0x00],                            // RSV3
            &[0x89, 0x7E, 0x00, 0x7E],                // ping of 126 bytes
            &[0x09, 0x00],                            // fragmented ping
            &[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], // top bit of 64-bit length
        ];
        for case in cases {
            let err = decode_header(case).unwrap_err();
            assert_eq!(err.code, CloseCode::PROTOCOL_ERROR, "{case:?}");
        }
    }

    #[test]
    fn masked_frame_writes_masked_payload() {
        let mut out = Vec::new();
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        write_frame(
            &mut out,
            FrameHead::whole(OpCode::Binary),
            &payload,
            Some([9, 8, 7, 6]),
        );
        let Ok(Decoded::Header(header, n)) = decode_header(&out) else {
            panic!("no header")
        };
        let mut body = out[n..].to_vec();
        apply_mask(&mut body, [9, 8, 7, 6], 0);
        assert_eq!(header.payload_len, 10_000);
        assert_eq!(body, payload);
    }

    #[test]
    fn an_unmasked_frame_is_the_same_written_in_one_step_or_in_two() {
        for len in [0usize, 1, 12, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let head = FrameHead::whole(OpCode::Text);
            let mut expected = b"before".to_vec();
            let mut header = [0u8; MAX_HEADER_LEN];
            let n = encode_header(
                &mut header,
                &FrameHeader {
                    fin: true,
                    rsv1: false,
                    opcode: OpCode::Text,
                    mask: None,
                    payload_len: len as u64,
                },
            );
            expected.extend_from_slice(&header[..n]);
            expected.extend_from_slice(&payload);
            let total = n + len;
            // Room to spare: header and payload go into the spare room in one step.
            let mut roomy = bytes::BytesMut::with_capacity(6 + total + MAX_HEADER_LEN);
            roomy.extend_from_slice(b"before");
            write_frame(&mut roomy, head, &payload, None);
            assert_eq!(&roomy[..], &expected[..], "one step, {len}");
            // One byte short: each part is reserved and appended on its own.
            let mut short = bytes::BytesMut::with_capacity(6 + total - 1);
            short.extend_from_slice(b"before");
            write_frame(&mut short, head, &payload, None);
            assert_eq!(&short[..], &expected[..], "two steps, {len}");
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let (payload, len) = close_payload(CloseCode::NORMAL, &reason);
        assert!(len <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&payload[2..len]).is_ok());
    }
}
