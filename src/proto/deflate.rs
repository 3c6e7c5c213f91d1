//! permessage-deflate (RFC 7692): negotiation and the per-message codec.
//!
//! Negotiation works on one offer at a time, as name/value parameters, so it does not care
//! how the handshake parsed the header. The codec wraps zlib (through flate2) in raw-deflate
//! mode: each message ends with a sync flush whose `00 00 ff ff` tail is cut on sending and
//! put back on receiving.
//!
//! Inflating is bounded while it runs: a message that would grow past the size limit fails
//! with 1009 after at most that many output bytes, whatever the compressed size.

use std::fmt::Write as _;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use bytes::BufMut;

use super::ProtocolError;
use super::frame::{FrameHead, OpCode, write_frame};

/// The extension's registered name.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The bytes a sync flush ends with; cut from every message (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// The smallest window zlib can compress raw deflate with; 8 is legal on the wire but zlib
/// quietly widens it to 9, which would break a peer that asked for 8.
const MIN_COMPRESS_WINDOW_BITS: u8 = 9;

/// What this endpoint wants from the negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Largest window this endpoint compresses with (9..=15).
    pub max_window_bits: u8,
    /// Largest window asked of the peer's compressor when it allows limiting it (8..=15):
    /// a smaller window makes this side's inflater smaller.
    pub peer_max_window_bits: u8,
    /// Compress every message from a fresh state: no memory kept per connection between
    /// messages, and one compressor can serve many connections.
    pub no_context_takeover: bool,
    /// Ask the peer to compress every message from a fresh state, so this side keeps no
    /// inflate state between messages (about 37 KiB per connection otherwise: 3.7 GB at
    /// 100,000 connections). A server may ask this of any client (RFC 7692 §7.1.1.2).
    pub peer_no_context_takeover: bool,
    /// zlib level, 0..=9.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed: deflate cannot pay for itself there.
    pub min_size: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            max_window_bits: 15,
            peer_max_window_bits: 15,
            no_context_takeover: true,
            peer_no_context_takeover: true,
            level: 1,
            min_size: 64,
        }
    }
}

/// The parameters both sides agreed to, seen from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// Window the server compresses with, at most.
    pub server_max_window_bits: u8,
    /// Window the client compresses with, at most.
    pub client_max_window_bits: u8,
}

/// Why an offer was declined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declined {
    UnknownParameter,
    DuplicateParameter,
    InvalidValue,
}

/// One side's view of the agreed parameters: how it compresses and how it inflates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Direction {
    /// Window bits; below 9 this side must not compress at all (zlib cannot honour it).
    pub window_bits: u8,
    pub no_context_takeover: bool,
}

impl DeflateParams {
    /// The server's sending direction.
    pub fn server(&self) -> Direction {
        Direction {
            window_bits: self.server_max_window_bits,
            no_context_takeover: self.server_no_context_takeover,
        }
    }

    /// The client's sending direction.
    pub fn client(&self) -> Direction {
        Direction {
            window_bits: self.client_max_window_bits,
            no_context_takeover: self.client_no_context_takeover,
        }
    }

    /// The Sec-WebSocket-Extensions value of the server's response. A window the client
    /// asked to limit is always answered (RFC 7692 §7.1.2.1), even when it is the full 15.
    pub fn response_header(
        &self,
        offered_server_max_window_bits: bool,
        offered_client_max_window_bits: bool,
    ) -> String {
        let mut header = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            header.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            header.push_str("; client_no_context_takeover");
        }
        if offered_server_max_window_bits || self.server_max_window_bits < 15 {
            let _ = write!(
                header,
                "; server_max_window_bits={}",
                self.server_max_window_bits
            );
        }
        if offered_client_max_window_bits && self.client_max_window_bits < 15 {
            let _ = write!(
                header,
                "; client_max_window_bits={}",
                self.client_max_window_bits
            );
        }
        header
    }
}

/// The result of a server accepting one offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreement {
    pub params: DeflateParams,
    /// The Sec-WebSocket-Extensions response value.
    pub response: String,
}

/// Parsed parameters of one offer (or one response).
#[derive(Default)]
struct Parsed {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

fn window_bits(value: Option<&str>) -> Result<u8, Declined> {
    let value = value.ok_or(Declined::InvalidValue)?;
    // RFC 7692 §7.1.2: 1*DIGIT without leading zeros, 8..=15.
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Declined::InvalidValue);
    }
    match value.parse::<u8>() {
        Ok(bits @ 8..=15) => Ok(bits),
        _ => Err(Declined::InvalidValue),
    }
}

fn parse<'a>(
    params: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Parsed, Declined> {
    let mut parsed = Parsed::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err(Declined::UnknownParameter),
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(Declined::DuplicateParameter);
        }
        match index {
            0 | 1 if value.is_some() => return Err(Declined::InvalidValue),
            0 => parsed.server_no_context_takeover = true,
            1 => parsed.client_no_context_takeover = true,
            2 => parsed.server_max_window_bits = Some(window_bits(value)?),
            _ => {
                parsed.client_max_window_bits =
                    Some(value.map(|v| window_bits(Some(v))).transpose()?)
            }
        }
    }
    Ok(parsed)
}

/// A server's answer to one permessage-deflate offer, given its parameters.
///
/// Offers with unknown, duplicate or invalid parameters are declined (RFC 7692 §5); the
/// caller then tries the client's next offer.
pub fn accept_offer<'a>(
    config: &DeflateConfig,
    params: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Agreement, Declined> {
    let offer = parse(params)?;
    let server_max_window_bits = offer
        .server_max_window_bits
        .map_or(config.max_window_bits, |asked| {
            asked.min(config.max_window_bits)
        });
    // The client's window can only be limited if it said it supports the parameter.
    let client_max_window_bits = match offer.client_max_window_bits {
        None => 15,
        Some(asked) => asked.unwrap_or(15).min(config.peer_max_window_bits.max(8)),
    };
    let params = DeflateParams {
        server_no_context_takeover: offer.server_no_context_takeover || config.no_context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover
            || config.peer_no_context_takeover,
        server_max_window_bits,
        client_max_window_bits,
    };
    let response = params.response_header(
        offer.server_max_window_bits.is_some(),
        offer.client_max_window_bits.is_some(),
    );
    Ok(Agreement { params, response })
}

/// The Sec-WebSocket-Extensions value of a client's offer.
pub fn client_offer(config: &DeflateConfig) -> String {
    let mut offer = String::from(EXTENSION_NAME);
    if config.no_context_takeover {
        offer.push_str("; client_no_context_takeover");
    }
    if config.peer_no_context_takeover {
        offer.push_str("; server_no_context_takeover");
    }
    if config.peer_max_window_bits < 15 {
        let _ = write!(
            offer,
            "; server_max_window_bits={}",
            config.peer_max_window_bits
        );
    }
    // Tell the server it may limit our window; we compress with whatever it says.
    offer.push_str("; client_max_window_bits");
    offer
}

/// A client's reading of the server's response to its offer.
pub fn accept_response<'a>(
    config: &DeflateConfig,
    params: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<DeflateParams, Declined> {
    let response = parse(params)?;
    let client_max_window_bits = match response.client_max_window_bits {
        None => config.max_window_bits,
        Some(Some(bits)) => bits.min(config.max_window_bits),
        Some(None) => return Err(Declined::InvalidValue),
    };
    Ok(DeflateParams {
        server_no_context_takeover: response.server_no_context_takeover,
        client_no_context_takeover: response.client_no_context_takeover
            || config.no_context_takeover,
        server_max_window_bits: response.server_max_window_bits.unwrap_or(15),
        client_max_window_bits,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(text: &str) -> Vec<(&str, Option<&str>)> {
        text.split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (p, None),
            })
            .collect()
    }

    #[test]
    fn incompressible_messages_go_out_plain_only_without_context_takeover() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        for (no_context_takeover, compressed) in [(true, false), (false, true)] {
            let direction = Direction {
                window_bits: 15,
                no_context_takeover,
            };
            let mut compressor =
                Compressor::new(direction, &DeflateConfig::default()).expect("window 15");
            let mut out = Vec::new();
            compressor.write_frame(OpCode::Binary, &noise, None, &mut out);
            assert_eq!(out[0] & 0x40 != 0, compressed, "RSV1 with {direction:?}");
        }
    }

    #[test]
    fn negotiation_follows_rfc7692() {
        let config = DeflateConfig {
            no_context_takeover: false,
            peer_no_context_takeover: false,
            ..DeflateConfig::default()
        };
        let agreed = accept_offer(&config, offer("")).unwrap();
        assert_eq!(agreed.response, "permessage-deflate");
        let agreed = accept_offer(
            &config,
            offer("server_no_context_takeover; server_max_window_bits=9"),
        )
        .unwrap();
        assert_eq!(
            agreed.response,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9"
        );
        assert_eq!(
            agreed.params.server(),
            Direction {
                window_bits: 9,
                no_context_takeover: true
            }
        );
        // A window the client asked to limit is answered even at the full 15.
        let agreed = accept_offer(&config, offer("server_max_window_bits=15")).unwrap();
        assert_eq!(
            agreed.response,
            "permessage-deflate; server_max_window_bits=15"
        );
        // client_max_window_bits without a value: the server may limit it, or not.
        let limited = DeflateConfig {
            peer_max_window_bits: 10,
            ..config
        };
        let agreed = accept_offer(&limited, offer("client_max_window_bits")).unwrap();
        assert_eq!(
            agreed.response,
            "permessage-deflate; client_max_window_bits=10"
        );
        // Not offered: never in the response.
        let agreed = accept_offer(&limited, offer("")).unwrap();
        assert_eq!(agreed.params.client_max_window_bits, 15);
        assert_eq!(
            accept_offer(&config, offer("foo")),
            Err(Declined::UnknownParameter)
        );
        assert_eq!(
            accept_offer(
                &config,
                offer("server_no_context_takeover; server_no_context_takeover")
            ),
            Err(Declined::DuplicateParameter)
        );
        for bad in [
            "server_max_window_bits=7",
            "server_max_window_bits=16",
            "server_max_window_bits=010",
            "server_max_window_bits",
            "client_max_window_bits=abc",
            "server_no_context_takeover=1",
        ] {
            assert_eq!(
                accept_offer(&config, offer(bad)),
                Err(Declined::InvalidValue),
                "{bad}"
            );
        }
        // Memory-saving default: neither side keeps context, and the server says so (it
        // may ask it of a client that did not offer it).
        let agreed = accept_offer(&DeflateConfig::default(), offer("")).unwrap();
        assert_eq!(
            agreed.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn window_of_eight_means_uncompressed_sending() {
        let agreed =
            accept_offer(&DeflateConfig::default(), offer("server_max_window_bits=8")).unwrap();
        assert_eq!(agreed.params.server_max_window_bits, 8);
        assert!(Compressor::new(agreed.params.server(), &DeflateConfig::default()).is_none());
    }

    fn roundtrip(direction: Direction, messages: &[Vec<u8>]) {
        let mut tx = Compressor::new(
            direction,
            &DeflateConfig {
                level: 6,
                ..DeflateConfig::default()
            },
        )
        .unwrap();
        let mut rx = Decompressor::new(direction);
        for message in messages {
            let mut wire = Vec::new();
            tx.compress(message, &mut wire);
            // Feed the compressed bytes in awkward pieces.
            let mut plain = Vec::new();
            for piece in wire.chunks(7) {
                rx.inflate(piece, &mut plain, usize::MAX - 1).unwrap();
            }
            rx.finish_message(&mut plain, usize::MAX - 1).unwrap();
            assert_eq!(&plain, message);
        }
    }

    #[test]
    fn codec_roundtrips_with_and_without_context() {
        let json = br#"{"symbol":"ACME","price":123.45,"volume":1000}"#.repeat(50);
        let random: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let messages = vec![json.clone(), Vec::new(), json, random, b"x".to_vec()];
        for bits in [9, 12, 15] {
            for no_context_takeover in [false, true] {
                roundtrip(
                    Direction {
                        window_bits: bits,
                        no_context_takeover,
                    },
                    &messages,
                );
            }
        }
    }

    #[test]
    fn empty_message_compresses_to_one_byte() {
        let mut tx = Compressor::new(
            Direction {
                window_bits: 15,
                no_context_takeover: true,
            },
            &DeflateConfig::default(),
        )
        .unwrap();
        let mut wire = Vec::new();
        tx.compress(b"", &mut wire);
        assert_eq!(wire, [0x00]);
    }

    #[test]
    fn deflate_bomb_stops_at_the_limit() {
        let direction = Direction {
            window_bits: 15,
            no_context_takeover: true,
        };
        let mut tx = Compressor::new(
            direction,
            &DeflateConfig {
                level: 9,
                ..DeflateConfig::default()
            },
        )
        .unwrap();
        let mut wire = Vec::new();
        tx.compress(&vec![0u8; 50 << 20], &mut wire);
        assert!(wire.len() < 100 << 10, "{}", wire.len());
        let mut rx = Decompressor::new(direction);
        let mut plain = Vec::new();
        let limit = 1 << 20;
        let err = rx.inflate(&wire, &mut plain, limit).unwrap_err();
        assert_eq!(err.code, super::super::CloseCode::MESSAGE_TOO_BIG);
        assert!(plain.len() <= limit + 1, "inflated {} bytes", plain.len());
        assert!(
            plain.capacity() <= 2 * limit + 2,
            "capacity {}",
            plain.capacity()
        );
    }

    #[test]
    fn corrupt_data_is_invalid_payload() {
        let mut rx = Decompressor::new(Direction {
            window_bits: 15,
            no_context_takeover: true,
        });
        let err = rx
            .inflate(&[0xFF, 0xFF, 0xFF, 0xFF], &mut Vec::new(), 1 << 20)
            .unwrap_err();
        assert_eq!(err.code, super::super::CloseCode::INVALID_PAYLOAD);
    }
}
