//! The server's answers: upgrade validation, the 101, and refusals with the RFC's statuses.

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

use super::head::Writer;
use super::request::Request;

/// The GUID RFC 6455 §1.3 appends to the key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A valid upgrade request's key.
#[derive(Clone, Copy, Debug)]
pub struct UpgradeRequest<'a> {
    pub key: &'a str,
}

/// An HTTP answer refusing a request: the protocol's own refusals (400, 426, 431...) and an
/// application's (401, 403, 429...) alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Names the problem; the body of the response.
    pub message: Cow<'static, str>,
    /// Extra response headers (426 names the version the server speaks, 429 may say when
    /// to retry). A header whose name or value holds CR or LF is never written.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The request was plain HTTP with no upgrade at all.
    plain_http: bool,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
            headers: Vec::new(),
            plain_http: false,
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Whether the request asked for no upgrade: a server may answer it with a page instead.
    pub fn is_plain_http(&self) -> bool {
        self.plain_http
    }

    /// Writes the complete response: status, headers, and the message as a text body.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut body = self.message.to_string();
        body.push('\n');
        write_head(
            out,
            self.status,
            "text/plain; charset=utf-8",
            body.len(),
            &self.headers,
        );
        out.extend_from_slice(body.as_bytes());
    }
}

/// Checks a request against RFC 6455 §4.2.1.
pub fn validate(request: &Request) -> Result<UpgradeRequest<'_>, Refusal> {
    if request.header("upgrade").is_none() {
        let mut plain = Refusal::new(426, "this is a WebSocket endpoint: send an Upgrade request")
            .with_header("Upgrade", "websocket");
        plain.plain_http = true;
        return Err(plain);
    }
    if request.method() != "GET" {
        return Err(
            Refusal::new(405, "a WebSocket upgrade must use GET").with_header("Allow", "GET")
        );
    }
    if request.host().is_none() {
        return Err(Refusal::new(400, "missing Host header"));
    }
    if !request.has_token("upgrade", "websocket") {
        return Err(Refusal::new(400, "the Upgrade header must name websocket"));
    }
    if !request.has_token("connection", "upgrade") {
        return Err(Refusal::new(
            400,
            "the Connection header must contain Upgrade",
        ));
    }
    if request.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refusal::new(
            426,
            "unsupported Sec-WebSocket-Version: this server speaks 13",
        )
        .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = request
        .header("sec-websocket-key")
        .ok_or(Refusal::new(400, "missing Sec-WebSocket-Key"))?;
    match BASE64.decode(key) {
        Ok(bytes) if bytes.len() == 16 => Ok(UpgradeRequest { key }),
        _ => Err(Refusal::new(
            400,
            format!("invalid Sec-WebSocket-Key `{key}`: it must be 16 bytes in base64"),
        )),
    }
}

/// Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The first of the server's protocols, in its order of preference, that the client offered.
pub fn select_protocol<'p, 'o>(
    offered: impl Iterator<Item = &'o str> + Clone,
    preference: &'p [String],
) -> Option<&'p str> {
    preference
        .iter()
        .map(String::as_str)
        .find(|wanted| offered.clone().any(|o| o == *wanted))
}

/// Writes the 101 response accepting an upgrade.
pub fn write_accept(
    out: &mut Vec<u8>,
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    let _ = write!(Writer(out), "Sec-WebSocket-Accept: {}\r\n", accept_key(key));
    if let Some(protocol) = protocol {
        let _ = write!(Writer(out), "Sec-WebSocket-Protocol: {protocol}\r\n");
    }
    if let Some(extensions) = extensions {
        let _ = write!(Writer(out), "Sec-WebSocket-Extensions: {extensions}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete response with a body, closing the connection after it.
pub fn write_response(out: &mut Vec<u8>, status: u16, content_type: &str, body: &str) {
    write_head(out, status, content_type, body.len(), &[]);
    out.extend_from_slice(body.as_bytes());
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    length: usize,
    headers: &[(&str, Cow<'_, str>)],
) {
    let _ = write!(
        Writer(out),
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n",
        reason_phrase(status)
    );
    let splits_lines = |text: &str| text.contains(['\r', '\n']);
    for (name, value) in headers {
        if splits_lines(name) || splits_lines(value) {
            continue;
        }
        let _ = write!(Writer(out), "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase of a status.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
