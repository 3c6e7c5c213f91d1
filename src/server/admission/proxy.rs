//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies them): the header a load
//! balancer sends before the client's bytes, naming the client's address. Sans-io: bytes in,
//! in any pieces, and the header out with how many bytes it took.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The twelve bytes every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";

/// What the load balancer said about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    /// The client's address; `None` for the balancer's own connections (v1 `UNKNOWN`, v2
    /// `LOCAL`, an unspecified or Unix family), which keep the address the socket reports.
    pub source: Option<SocketAddr>,
}

/// Whether `first`, the first bytes of a connection, look like a PROXY header: a listener
/// that does not expect one names the problem instead of answering "malformed request".
pub(crate) fn looks_like_header(first: &[u8]) -> bool {
    first.starts_with(V1_PREFIX) || first.starts_with(&V2_SIGNATURE)
}

/// Reads one PROXY header fed in pieces of any size.
#[derive(Debug)]
pub(crate) struct ProxyReader {
    buf: Vec<u8>,
    /// The longest v2 header accepted, TLVs included.
    max_len: usize,
}

impl ProxyReader {
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_len: max_len.max(V2_FIXED + 36),
        }
    }

    /// Takes the next bytes. Once the header is complete, returns it and how many bytes of
    /// `input` belonged to it: the rest are the client's. A malformed header is refused with
    /// a message naming the problem.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, String> {
        let before = self.buf.len();
        loop {
            let wanted = self.wanted()?;
            let take = input.len().min(wanted.saturating_sub(self.buf.len()));
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if let Some((header, len)) = self.parse()? {
                return Ok(Some((header, len - before)));
            }
            // Only a v2 header learns, after 16 bytes, that it wants more than it took.
            let wanted = self.wanted()?;
            if input.is_empty() || wanted <= self.buf.len() {
                return Ok(None);
            }
        }
    }

    /// How many bytes the header may need, as far as what has arrived tells.
    fn wanted(&self) -> Result<usize, String> {
        if self.buf.first() != Some(&V2_SIGNATURE[0]) || self.buf.len() < V2_FIXED {
            return Ok(V1_MAX.max(V2_FIXED));
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([self.buf[14], self.buf[15]]));
        if len > self.max_len {
            return Err(format!(
                "PROXY v2 header of {len} bytes: more than the {} this server takes",
                self.max_len
            ));
        }
        Ok(len)
    }

    /// The header, once complete, and its length.
    fn parse(&self) -> Result<Option<(ProxyHeader, usize)>, String> {
        let buf = &self.buf[..];
        let prefix_of = |expected: &[u8]| {
            let n = buf.len().min(expected.len());
            buf[..n] == expected[..n]
        };
        if prefix_of(V1_PREFIX) {
            return parse_v1(buf);
        }
        if prefix_of(&V2_SIGNATURE) {
            return parse_v2(buf);
        }
        Err("expected a PROXY protocol header (v1 or v2) first on this listener".into())
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(format!("PROXY v1 line longer than {V1_MAX} bytes"));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 line is not ASCII")?;
    let malformed = || format!("malformed PROXY v1 line `{line}`");
    let mut parts = line.split(' ').skip(1);
    let source = match parts.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [source, _destination, port, _destination_port] = fields[..] else {
                return Err(malformed());
            };
            let ip: IpAddr = source.parse().map_err(|_| malformed())?;
            if ip.is_ipv4() != (family == "TCP4") {
                return Err(format!("PROXY v1 line says {family} but holds `{source}`"));
            }
            let port: u16 = port.parse().map_err(|_| malformed())?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(malformed()),
    };
    Ok(Some((ProxyHeader { source }, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, String> {
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < len {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0F);
    if version != 2 {
        return Err(format!(
            "PROXY protocol version {version}: only 1 and 2 exist"
        ));
    }
    let addresses = &buf[V2_FIXED..len];
    let source = match command {
        // LOCAL: the balancer's own connection (a health check).
        0 => None,
        1 => match buf[13] >> 4 {
            0 | 3 => None,
            1 => {
                let [a, b, c, d, _, _, _, _, p0, p1, ..] = *addresses else {
                    return Err("PROXY v2 header too short for IPv4 addresses".into());
                };
                let ip = Ipv4Addr::new(a, b, c, d);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([p0, p1])))
            }
            2 => {
                if addresses.len() < 36 {
                    return Err("PROXY v2 header too short for IPv6 addresses".into());
                }
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addresses[..16]);
                let port = u16::from_be_bytes([addresses[32], addresses[33]]);
                Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
            }
            family => {
                return Err(format!(
                    "PROXY v2 header with unknown address family {family}"
                ));
            }
        },
        command => return Err(format!("PROXY v2 header with unknown command {command}")),
    };
    Ok(Some((ProxyHeader { source }, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    /// Feeds `input` in pieces of `step` bytes; returns the header and the bytes that
    /// followed it.
    fn read(input: &[u8], step: usize) -> Result<(ProxyHeader, Vec<u8>), String> {
        let mut reader = ProxyReader::new(MAX);
        for (at, piece) in input.chunks(step).enumerate() {
            if let Some((header, used)) = reader.feed(piece)? {
                let rest_start = at * step + used;
                return Ok((header, input[rest_start..].to_vec()));
            }
        }
        Err("incomplete".into())
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out
    }

    #[test]
    fn v1_in_any_pieces_keeps_what_follows() {
        let input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 9001\r\nGET / HTTP/1.1\r\n";
        for step in [1, 2, 7, 44, input.len()] {
            let (header, rest) = read(input, step).expect("a v1 header");
            assert_eq!(
                header.source,
                Some("203.0.113.7:51234".parse().expect("addr"))
            );
            assert_eq!(rest, b"GET / HTTP/1.1\r\n", "step {step}");
        }
        let (header, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 443 9001\r\n", 5).expect("v6");
        assert_eq!(
            header.source,
            Some("[2001:db8::1]:443".parse().expect("addr"))
        );
        let (header, rest) = read(b"PROXY UNKNOWN\r\nX", 3).expect("unknown");
        assert_eq!((header.source, rest), (None, b"X".to_vec()));
    }

    #[test]
    fn bad_v1_lines_are_named() {
        let err = |input: &[u8]| read(input, 4).expect_err("refused");
        assert!(err(b"PROXY TCP4 1.2.3.4\r\n").contains("malformed"));
        assert!(err(b"PROXY TCP4 ::1 ::1 1 2\r\n").contains("TCP4"));
        assert!(err(b"PROXY TCP4 1.2.3.4 1.2.3.5 99999 1\r\n").contains("malformed"));
        assert!(err(b"PROXY SCTP a b 1 2\r\n").contains("malformed"));
        assert!(err(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat()).contains("longer"));
        assert!(err(b"GET / HTTP/1.1\r\n\r\n").contains("expected a PROXY"));
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut v4 = vec![203, 0, 113, 7, 10, 0, 0, 1];
        v4.extend_from_slice(&51234u16.to_be_bytes());
        v4.extend_from_slice(&9001u16.to_be_bytes());
        // A TLV (type 0x04, a no-op) after the addresses is skipped.
        v4.extend_from_slice(&[0x04, 0x00, 0x02, 0xAA, 0xBB]);
        let mut input = v2(1, 0x11, &v4);
        input.extend_from_slice(b"GET");
        for step in [1, 3, 16, 17, input.len()] {
            let (header, rest) = read(&input, step).expect("a v2 header");
            assert_eq!(
                header.source,
                Some("203.0.113.7:51234".parse().expect("addr"))
            );
            assert_eq!(rest, b"GET", "step {step}");
        }
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&[0x01, 0xBB, 0x23, 0x29]);
        let (header, _) = read(&v2(1, 0x21, &v6), 5).expect("v6");
        assert_eq!(
            header.source,
            Some("[2001:db8::7]:443".parse().expect("addr"))
        );
        let (header, _) = read(&v2(0, 0x00, &[]), 4).expect("local");
        assert_eq!(header.source, None);
    }

    #[test]
    fn bad_v2_headers_are_named() {
        let err = |input: &[u8]| read(input, 64).expect_err("refused");
        assert!(err(&v2(1, 0x11, &[1, 2, 3])).contains("too short"));
        assert!(err(&v2(7, 0x11, &[0; 12])).contains("command"));
        let mut v3 = v2(1, 0x11, &[0; 12]);
        v3[12] = 0x31;
        assert!(err(&v3).contains("version 3"));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(err(&huge).contains("more than"));
    }

    #[test]
    fn headers_are_recognised_by_their_first_bytes() {
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(looks_like_header(&v2(1, 0x11, &[0; 12])));
        assert!(!looks_like_header(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_header(b"PROX"));
    }
}
