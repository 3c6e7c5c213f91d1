//! The server's side of the opening handshake: the request, read in pieces, and its parts.

use std::ops::Range;

use super::extensions::{ExtensionOffer, parse_offers};
use super::head::{FieldError, Fields, HeadReader};
use super::server::Refusal;

/// Limits on a request head.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of request line and headers; more get 431.
    pub max_head_bytes: usize,
    /// Header fields; more get 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 << 10,
            max_headers: 64,
        }
    }
}

/// Reads a request head fed in pieces of any size.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    reader: HeadReader,
    request: Option<Request>,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            reader: HeadReader::default(),
            request: None,
        }
    }

    /// Takes the next bytes. Once the head is complete, returns how many bytes of `input`
    /// belonged to it: the rest (frames a client sent right behind its request) are the
    /// caller's. A malformed or oversized head is refused with the HTTP answer it deserves.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, Refusal> {
        if self.request.is_some() {
            return Ok(Some(0));
        }
        let too_large = || Refusal::new(431, "request header fields too large");
        let Some(consumed) = self
            .reader
            .feed(input, self.limits.max_head_bytes)
            .map_err(|_| too_large())?
        else {
            return Ok(None);
        };
        self.request = Some(Request::parse(self.reader.take(), self.limits.max_headers)?);
        Ok(Some(consumed))
    }

    /// The request, once [`RequestParser::feed`] said it is complete.
    pub fn request(&self) -> Option<&Request> {
        self.request.as_ref()
    }
}

/// A parsed request head: one buffer, with fields as ranges into it.
#[derive(Clone, Debug)]
pub struct Request {
    head: String,
    method: Range<usize>,
    target: Range<usize>,
    /// The minor version of HTTP/1.x.
    minor_version: u8,
    fields: Fields,
}

impl Request {
    /// The request whose head is `head` (without its blank line), for tests.
    #[cfg(test)]
    pub(crate) fn from_head(head: &str) -> Request {
        let mut parser = RequestParser::new(Limits::default());
        let text = format!("{head}\r\n\r\n");
        assert!(parser.feed(text.as_bytes()).expect("a request").is_some());
        parser.request().expect("complete").clone()
    }

    fn parse(head: Vec<u8>, max_headers: usize) -> Result<Self, Refusal> {
        let head = String::from_utf8(head)
            .map_err(|_| Refusal::new(400, "request head is not valid UTF-8"))?;
        let line_end = head
            .find("\r\n")
            .ok_or(Refusal::new(400, "malformed request line"))?;
        let line = &head[..line_end];
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::new(400, "malformed request line"));
        };
        if method.is_empty() || !method.bytes().all(super::head::is_token_byte) {
            return Err(Refusal::new(400, "malformed request method"));
        }
        if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
            return Err(Refusal::new(400, "malformed request target"));
        }
        let minor_version = match version {
            "HTTP/1.1" => 1,
            "HTTP/1.0" => {
                return Err(Refusal::new(
                    400,
                    "HTTP/1.1 or later is required for a WebSocket upgrade",
                ));
            }
            v if v.starts_with("HTTP/") && v.len() == 8 => {
                return Err(Refusal::new(505, "HTTP version not supported"));
            }
            _ => return Err(Refusal::new(400, "malformed HTTP version")),
        };
        let fields = Fields::parse(&head, line_end + 2, max_headers).map_err(|e| match e {
            FieldError::TooMany => Refusal::new(431, "too many header fields"),
            FieldError::Malformed(what) => Refusal::new(400, what),
        })?;
        let method_range = 0..method.len();
        let target_start = method.len() + 1;
        Ok(Self {
            method: method_range,
            target: target_start..target_start + target.len(),
            minor_version,
            fields,
            head,
        })
    }

    pub fn method(&self) -> &str {
        &self.head[self.method.clone()]
    }

    /// The request target as sent: path and query.
    pub fn target(&self) -> &str {
        &self.head[self.target.clone()]
    }

    pub fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, query)| query)
    }

    /// `(1, 1)` for HTTP/1.1.
    pub fn version(&self) -> (u8, u8) {
        (1, self.minor_version)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of header `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields.all(&self.head, name)
    }

    /// Every header field, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.fields.iter(&self.head)
    }

    /// Whether the comma-separated header `name` holds `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.fields.has_token(&self.head, name, token)
    }

    pub fn host(&self) -> Option<&str> {
        self.header("host")
    }

    pub fn origin(&self) -> Option<&str> {
        self.header("origin")
    }

    /// The subprotocols the client offered, in its order.
    pub fn protocols(&self) -> impl Iterator<Item = &str> + Clone {
        self.fields.tokens(&self.head, "sec-websocket-protocol")
    }

    /// The extension offers, in the client's order; malformed ones left out.
    pub fn extension_offers(&self) -> Vec<ExtensionOffer> {
        parse_offers(self.header_all("sec-websocket-extensions"))
    }

    /// `(name, value)` of every cookie.
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.header_all("cookie")
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
    }
}
