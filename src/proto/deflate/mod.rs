//! permessage-deflate (RFC 7692): negotiation (`negotiation`) and the per-message codec
//! (`codec`).
//!
//! Negotiation works on one offer at a time, as name/value parameters, so it does not care
//! how the handshake parsed the header. The codec wraps zlib (through flate2) in raw-deflate
//! mode: each message ends with a sync flush whose `00 00 ff ff` tail is cut on sending and
//! put back on receiving.
//!
//! Inflating is bounded while it runs: a message that would grow past the size limit fails
//! with 1009 after at most that many output bytes, whatever the compressed size.

mod codec;
mod negotiation;

pub use codec::{Compressor, Decompressor};
pub use negotiation::{
    Agreement, Declined, DeflateConfig, DeflateParams, Direction, accept_offer, accept_response,
    client_offer,
};

/// The extension's registered name.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The bytes a sync flush ends with; cut from every message (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// The smallest window zlib can compress raw deflate with; 8 is legal on the wire but zlib
/// quietly widens it to 9, which would break a peer that asked for 8.
const MIN_COMPRESS_WINDOW_BITS: u8 = 9;

#[cfg(test)]
mod tests;
