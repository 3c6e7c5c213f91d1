//! The client's address behind HTTP proxies: `X-Forwarded-For`, believed only when the
//! connection comes from a proxy the operator trusts, and read from the right, as each
//! proxy appends the address it saw.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// A block of addresses: `10.0.0.0/8`, `2001:db8::/32`, or one address (`127.0.0.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(net.to_bits()), self.prefix, 32)
                    == mask(u128::from(ip.to_bits()), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(net.to_bits(), self.prefix, 128) == mask(ip.to_bits(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(width - prefix.min(width));
    (bits >> keep) << keep
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or a block such as 10.0.0.0/8"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= width)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0..={width}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The client's address for a request that came from `peer` with these `X-Forwarded-For`
/// values (every header line, in order). Unless `peer` is a trusted proxy the header is
/// ignored: anyone can send one. Otherwise the list is read from the right, skipping
/// trusted proxies; the first address that is not one is the client. The port is unknown
/// then (0). An entry that is not an address stops the walk at the last trusted hop.
pub(crate) fn client_addr<'a>(
    peer: SocketAddr,
    trusted: &[IpNet],
    forwarded_for: impl Iterator<Item = &'a str>,
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = SocketAddr::new(ip, 0);
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("a block")).collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn blocks_parse_and_match() {
        let net: IpNet = "10.1.0.0/16".parse().expect("v4");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("mapped")));
        let one: IpNet = "127.0.0.2".parse().expect("one address");
        assert!(one.contains("127.0.0.2".parse().expect("ip")));
        assert!(!one.contains("127.0.0.3".parse().expect("ip")));
        let v6: IpNet = "2001:db8::/32".parse().expect("v6");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(!v6.contains("10.1.0.1".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("203.0.113.9".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("proxy.example".parse::<IpNet>().is_err());
        assert_eq!(net.to_string().parse::<IpNet>(), Ok(net));
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        let from =
            |peer: &str, values: &[&str]| client_addr(addr(peer), &trusted, values.iter().copied());
        // Anyone may send the header: from an untrusted peer it means nothing.
        assert_eq!(
            from("203.0.113.9:4000", &["1.2.3.4"]),
            addr("203.0.113.9:4000")
        );
        assert_eq!(
            from("10.0.0.5:4000", &["198.51.100.7"]),
            addr("198.51.100.7:0")
        );
        // Read from the right: a client-supplied entry on the left is not believed.
        assert_eq!(
            from("10.0.0.5:4000", &["6.6.6.6, 198.51.100.7", "10.0.0.9"]),
            addr("198.51.100.7:0")
        );
        // Every hop trusted: the leftmost is the best there is.
        assert_eq!(
            from("10.0.0.5:4000", &["10.0.0.7, 10.0.0.8"]),
            addr("10.0.0.7:0")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            from("10.0.0.5:4000", &["198.51.100.7, junk"]),
            addr("10.0.0.5:4000")
        );
        assert_eq!(
            from("10.0.0.5:4000", &["[2001:db8::7]:443"]),
            addr("[2001:db8::7]:0")
        );
        assert_eq!(from("10.0.0.5:4000", &[]), addr("10.0.0.5:4000"));
    }
}
