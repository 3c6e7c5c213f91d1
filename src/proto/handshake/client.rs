//! The client's side of the opening handshake: the request, and the check of the 101.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::head::{Fields, HeadReader, Writer};
use super::server::accept_key;

/// What a client asks for.
#[derive(Clone, Debug, Default)]
pub struct ClientRequest<'a> {
    /// The Host header: `host` or `host:port`.
    pub host: &'a str,
    /// Path and query, e.g. `/pubsub/ticks?x=1`.
    pub path: &'a str,
    pub origin: Option<&'a str>,
    pub protocols: &'a [&'a str],
    /// The Sec-WebSocket-Extensions value to offer.
    pub extensions: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
}

/// The server accepted the upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Bytes of the last input that belonged to the response; the rest are frames.
    pub consumed: usize,
    pub protocol: Option<String>,
    /// The server's Sec-WebSocket-Extensions, as sent.
    pub extensions: Option<String>,
}

/// Why the server's response does not accept the upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// A status other than 101, with the start of the body if any arrived with the head.
    Status {
        status: u16,
        reason: String,
    },
    Malformed(&'static str),
    /// Sec-WebSocket-Accept does not match the key.
    BadAccept,
    /// The server chose a subprotocol the client did not offer.
    UnofferedProtocol(String),
    TooLarge,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status { status, reason } => write!(f, "server answered {status} {reason}"),
            Self::Malformed(what) => write!(f, "malformed handshake response: {what}"),
            Self::BadAccept => f.write_str("Sec-WebSocket-Accept does not match the key"),
            Self::UnofferedProtocol(p) => {
                write!(f, "server chose subprotocol `{p}`, which was not offered")
            }
            Self::TooLarge => f.write_str("handshake response head too large"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A client handshake in progress.
#[derive(Debug)]
pub struct ClientHandshake {
    accept: String,
    protocols: Vec<String>,
    reader: HeadReader,
}

const MAX_RESPONSE_HEAD: usize = 16 << 10;

impl ClientHandshake {
    /// Writes the upgrade request into `out`, with a fresh random key.
    pub fn new(request: &ClientRequest<'_>, out: &mut Vec<u8>) -> Self {
        let mut nonce = [0u8; 16];
        if getrandom::fill(&mut nonce).is_err() {
            // No OS entropy: the key needs only to be unique-ish, not secret.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            nonce = nanos.to_le_bytes();
        }
        let key = BASE64.encode(nonce);
        let mut w = Writer(out);
        let _ = write!(
            w,
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            request.path, request.host
        );
        if let Some(origin) = request.origin {
            let _ = write!(w, "Origin: {origin}\r\n");
        }
        if !request.protocols.is_empty() {
            let _ = write!(
                w,
                "Sec-WebSocket-Protocol: {}\r\n",
                request.protocols.join(", ")
            );
        }
        if let Some(extensions) = request.extensions {
            let _ = write!(w, "Sec-WebSocket-Extensions: {extensions}\r\n");
        }
        for (name, value) in request.headers {
            let _ = write!(w, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Self {
            accept: accept_key(&key),
            protocols: request.protocols.iter().map(|p| p.to_string()).collect(),
            reader: HeadReader::default(),
        }
    }

    /// Takes the next bytes of the server's response; `Some` once it accepted the upgrade.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<Accepted>, HandshakeError> {
        let Some(consumed) = self
            .reader
            .feed(input, MAX_RESPONSE_HEAD)
            .map_err(|_| HandshakeError::TooLarge)?
        else {
            return Ok(None);
        };
        let head = String::from_utf8(self.reader.take())
            .map_err(|_| HandshakeError::Malformed("not UTF-8"))?;
        let line_end = head
            .find("\r\n")
            .ok_or(HandshakeError::Malformed("no status line"))?;
        let mut status_line = head[..line_end].splitn(3, ' ');
        let (Some(version), Some(status)) = (status_line.next(), status_line.next()) else {
            return Err(HandshakeError::Malformed("status line"));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(HandshakeError::Malformed("not an HTTP/1.x response"));
        }
        let status: u16 = status
            .parse()
            .map_err(|_| HandshakeError::Malformed("status code"))?;
        if status != 101 {
            let reason = status_line.next().unwrap_or("").to_owned();
            return Err(HandshakeError::Status { status, reason });
        }
        let fields = Fields::parse(&head, line_end + 2, 128)
            .map_err(|_| HandshakeError::Malformed("header fields"))?;
        if !fields.has_token(&head, "upgrade", "websocket")
            || !fields.has_token(&head, "connection", "upgrade")
        {
            return Err(HandshakeError::Malformed(
                "missing Upgrade: websocket or Connection: Upgrade",
            ));
        }
        if fields.all(&head, "sec-websocket-accept").next() != Some(self.accept.as_str()) {
            return Err(HandshakeError::BadAccept);
        }
        let protocol = fields
            .all(&head, "sec-websocket-protocol")
            .next()
            .map(str::to_owned);
        if let Some(protocol) = &protocol
            && !self.protocols.contains(protocol)
        {
            return Err(HandshakeError::UnofferedProtocol(protocol.clone()));
        }
        let extensions = fields
            .all(&head, "sec-websocket-extensions")
            .next()
            .map(str::to_owned);
        Ok(Some(Accepted {
            consumed,
            protocol,
            extensions,
        }))
    }
}
