//! What the two ends of a connection agree on, one offer at a time, as name/value
//! parameters: the handshake's parsing does not matter here.

use std::fmt::Write as _;

use super::EXTENSION_NAME;

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
