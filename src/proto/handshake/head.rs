//! An HTTP/1.1 message head read in pieces, and its header fields. Shared by the server's
//! request parser and the client's response parser.

use std::ops::Range;

/// Accumulates bytes until the blank line that ends a head, within a size limit.
#[derive(Debug, Default)]
pub(crate) struct HeadReader {
    buf: Vec<u8>,
    /// Where the search for the end resumes, so each byte is scanned about once.
    scanned: usize,
}

/// The head grew past its limit.
pub(crate) struct TooLarge;

impl HeadReader {
    /// Takes bytes from `input`; once the head is complete, returns how many of them belonged
    /// to it (the rest follow the head and are the caller's).
    pub fn feed(&mut self, input: &[u8], limit: usize) -> Result<Option<usize>, TooLarge> {
        let before = self.buf.len();
        // Never hold more than the limit (plus the terminator), whatever one read brings.
        let room = (limit + 4).saturating_sub(before);
        self.buf.extend_from_slice(&input[..input.len().min(room)]);
        let from = self.scanned.saturating_sub(3);
        if let Some(at) = find_blank_line(&self.buf[from..]) {
            let end = from + at + 4;
            if end > limit {
                return Err(TooLarge);
            }
            self.buf.truncate(end);
            return Ok(Some(end - before));
        }
        self.scanned = self.buf.len();
        if self.buf.len() > limit {
            return Err(TooLarge);
        }
        Ok(None)
    }

    /// The complete head, its terminator included.
    pub fn take(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Header fields as ranges into the head: no allocation per field.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fields {
    fields: Vec<(Range<usize>, Range<usize>)>,
}

/// Why a header block is malformed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FieldError {
    Malformed(&'static str),
    TooMany,
}

impl Fields {
    /// Parses the header lines of `head` (already UTF-8 checked) from `start`, which follows
    /// the first line.
    pub fn parse(head: &str, start: usize, max_fields: usize) -> Result<Self, FieldError> {
        let bytes = head.as_bytes();
        // A request carries about a dozen fields: room for them without growing.
        let mut fields = Vec::with_capacity(max_fields.min(16));
        let mut at = start;
        loop {
            let rest = &bytes[at..];
            // One pass to the CRLF that ends the line, noting its first colon and any bare
            // CR or LF on the way.
            let (mut colon, mut bare, mut line_len) = (None, false, None);
            for (i, &byte) in rest.iter().enumerate() {
                match byte {
                    b'\r' if rest.get(i + 1) == Some(&b'\n') => {
                        line_len = Some(i);
                        break;
                    }
                    b'\r' | b'\n' => bare = true,
                    b':' if colon.is_none() => colon = Some(i),
                    _ => {}
                }
            }
            let line_len = line_len.ok_or(FieldError::Malformed("header line without CRLF"))?;
            if line_len == 0 {
                return Ok(Self { fields });
            }
            let line = &rest[..line_len];
            if matches!(line[0], b' ' | b'\t') {
                return Err(FieldError::Malformed("obsolete folded header line"));
            }
            if bare {
                return Err(FieldError::Malformed("bare CR or LF in a header line"));
            }
            let colon = colon.ok_or(FieldError::Malformed("header line without a colon"))?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().copied().all(is_token_byte) {
                return Err(FieldError::Malformed("invalid header name"));
            }
            if fields.len() == max_fields {
                return Err(FieldError::TooMany);
            }
            let value = &line[colon + 1..];
            let blank = |byte: &&u8| matches!(**byte, b' ' | b'\t');
            let leading = value.iter().take_while(blank).count();
            let trailing = value[leading..].iter().rev().take_while(blank).count();
            let value_start = at + colon + 1 + leading;
            let value_end = at + line_len - trailing;
            fields.push((at..at + colon, value_start..value_end));
            at += line_len + 2;
        }
    }

    /// Every `(name, value)`, in order.
    pub fn iter<'a>(
        &'a self,
        head: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + Clone + 'a {
        self.fields
            .iter()
            .map(move |(name, value)| (&head[name.clone()], &head[value.clone()]))
    }

    /// The values of every field named `name` (case-insensitive).
    pub fn all<'a>(
        &'a self,
        head: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + Clone + 'a {
        self.iter(head)
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The comma-separated elements of every field named `name`, trimmed, empty ones skipped.
    pub fn tokens<'a>(
        &'a self,
        head: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + Clone + 'a {
        self.all(head, name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim_matches([' ', '\t']))
            .filter(|t| !t.is_empty())
    }

    pub fn has_token(&self, head: &str, name: &str, token: &str) -> bool {
        self.tokens(head, name)
            .any(|t| t.eq_ignore_ascii_case(token))
    }
}

/// RFC 9110 `tchar`.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `fmt::Write` into a byte vector.
pub(crate) struct Writer<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_in_one_byte_pieces_keeps_what_follows() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nFRAMES";
        let mut reader = HeadReader::default();
        let mut done = None;
        for (i, byte) in input.iter().enumerate() {
            if let Some(n) = reader.feed(std::slice::from_ref(byte), 8192).ok().flatten() {
                done = Some((i, n));
                break;
            }
        }
        let (i, n) = done.expect("head completes");
        assert_eq!(
            (i, n),
            (input.len() - 7, 1),
            "completes on the last LF, which it consumed"
        );
        assert_eq!(reader.take(), &input[..input.len() - 6]);
    }

    #[test]
    fn limit_is_enforced_without_buffering_past_it() {
        let mut reader = HeadReader::default();
        assert!(reader.feed(&[b'a'; 100_000], 8192).is_err());
        let mut reader = HeadReader::default();
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'x', 200));
        head.extend(b"\r\n\r\n");
        assert!(reader.feed(&head, 100).is_err());
    }

    #[test]
    fn field_values_are_trimmed_and_bare_line_breaks_refused() {
        let head = "GET / HTTP/1.1\r\nA:\t x y \t\r\nB: \t \r\nC:d:e\r\n\r\n";
        let fields = Fields::parse(head, 16, 10).unwrap();
        let all: Vec<_> = fields.iter(head).collect();
        assert_eq!(all, [("A", "x y"), ("B", ""), ("C", "d:e")]);
        let malformed = |head: &str| match Fields::parse(head, 16, 10) {
            Err(FieldError::Malformed(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nA: b\nc\r\n\r\n"),
            "bare CR or LF in a header line"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"),
            "bare CR or LF in a header line"
        );
        assert_eq!(
            malformed("GET / HTTP/1.1\r\nA: b"),
            "header line without CRLF"
        );
    }

    #[test]
    fn fields() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive,  Upgrade\r\nX-Empty:\r\nconnection: close\r\n\r\n";
        let fields = Fields::parse(head, 16, 10).unwrap();
        assert_eq!(fields.all(head, "HOST").collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            fields.tokens(head, "connection").collect::<Vec<_>>(),
            ["keep-alive", "Upgrade", "close"]
        );
        assert!(fields.has_token(head, "Connection", "upgrade"));
        assert_eq!(fields.all(head, "x-empty").collect::<Vec<_>>(), [""]);
        assert_eq!(Fields::parse(head, 16, 3).unwrap_err(), FieldError::TooMany);
        assert!(Fields::parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 16, 10).is_err());
        assert!(Fields::parse("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 16, 10).is_err());
        assert!(Fields::parse("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 16, 10).is_err());
    }
}
