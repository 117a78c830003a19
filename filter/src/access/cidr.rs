//! CIDR ranges (std only): parsed strictly at configuration time, matched per request
//! on integers. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it carries, in
//! ranges and in addresses alike, so a dual-stack listener cannot sidestep an IPv4 rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One range: the network and its prefix length, IPv4 and IPv6 kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cidr {
    V4 { network: u32, prefix: u8 },
    V6 { network: u128, prefix: u8 },
}

/// A compiled list of ranges (an empty list matches nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<Cidr>);

impl Ranges {
    /// Parses every entry; on error, the index of the bad entry and the message.
    pub fn parse(entries: &[String]) -> Result<Ranges, (usize, String)> {
        let mut ranges = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            ranges.push(parse_cidr(entry).map_err(|message| (i, format!("{entry:?} {message}")))?);
        }
        Ok(Ranges(ranges))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match normalise(ip) {
            IpAddr::V4(v4) => {
                let ip = u32::from(v4);
                self.0.iter().any(|c| matches!(*c, Cidr::V4 { network, prefix } if ip & mask32(prefix) == network))
            }
            IpAddr::V6(v6) => {
                let ip = u128::from(v6);
                self.0.iter().any(|c| matches!(*c, Cidr::V6 { network, prefix } if ip & mask128(prefix) == network))
            }
        }
    }
}

/// IPv4-mapped IPv6 becomes the IPv4 address; everything else is unchanged.
pub fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A plain address as it appears in X-Forwarded-For (`203.0.113.7`, `2001:db8::1`;
/// surrounding spaces allowed). Anything else (ports, zone ids, names) is `None`.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse::<IpAddr>().ok().map(normalise)
}

/// The IP of proxy-wasm's `source.address` (`ip:port`, `[v6]:port`; a bare IP too).
/// A pipe path or anything else is `None`.
pub fn peer_ip(address: &str) -> Option<IpAddr> {
    match address.parse::<SocketAddr>() {
        // A zone (`[fe80::1%2]:80`) names a link, not a global address: refused.
        Ok(SocketAddr::V6(v6)) if v6.scope_id() != 0 => return None,
        Ok(socket) => return Some(normalise(socket.ip())),
        Err(_) => {}
    }
    address.parse::<IpAddr>().ok().map(normalise)
}

/// `a.b.c.d/n`, `x:y::/n`, or a bare address (a /32 or /128). Host bits must be zero:
/// `10.0.0.1/8` is refused rather than guessed at (a typo would otherwise widen the range).
fn parse_cidr(text: &str) -> Result<Cidr, String> {
    if text.contains('%') {
        return Err("has a zone id ('%'); ranges are global addresses".into());
    }
    if text.trim() != text || text.is_empty() {
        return Err("is not a CIDR range (like 203.0.113.0/24 or 2001:db8::/32)".into());
    }
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let ip: IpAddr = address.parse().map_err(|_| "is not a CIDR range (like 203.0.113.0/24 or 2001:db8::/32)")?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        // Digits only: u8's parser would accept "+24".
        Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("has a prefix length over {max}"))?
        }
        Some(_) => return Err("has a prefix length that is not a number".into()),
    };
    let cidr = match ip {
        IpAddr::V4(v4) => {
            let network = u32::from(v4) & mask32(prefix);
            if network != u32::from(v4) {
                return Err(format!("has host bits set (did you mean {}/{prefix}?)", Ipv4Addr::from(network)));
            }
            Cidr::V4 { network, prefix }
        }
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & mask128(prefix);
            if network != u128::from(v6) {
                return Err(format!("has host bits set (did you mean {}/{prefix}?)", Ipv6Addr::from(network)));
            }
            match v6.to_ipv4_mapped() {
                // ::ffff:0:0/96 and longer: the IPv4 range it spells.
                Some(v4) if prefix >= 96 => Cidr::V4 { network: u32::from(v4), prefix: prefix - 96 },
                _ => Cidr::V6 { network, prefix },
            }
        }
    };
    Ok(cidr)
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ranges(list: &[&str]) -> Ranges {
        Ranges::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_prefixes() {
        let r = ranges(&["203.0.113.0/24"]);
        assert!(r.contains(ip("203.0.113.0")) && r.contains(ip("203.0.113.255")));
        assert!(!r.contains(ip("203.0.114.0")) && !r.contains(ip("203.0.112.255")));
        let host = ranges(&["127.0.0.2/32"]);
        assert!(host.contains(ip("127.0.0.2")));
        assert!(!host.contains(ip("127.0.0.3")));
        let bare = ranges(&["127.0.0.2"]);
        assert!(bare.contains(ip("127.0.0.2")) && !bare.contains(ip("127.0.0.1")), "a bare address is a /32");
        let all = ranges(&["0.0.0.0/0"]);
        assert!(all.contains(ip("1.2.3.4")) && all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("2001:db8::1")), "an IPv4 /0 is not every IPv6 address");
        assert!(!ranges(&[]).contains(ip("127.0.0.1")), "no ranges match nothing");
    }

    #[test]
    fn ipv6_prefixes() {
        let r = ranges(&["2001:db8::/32"]);
        assert!(r.contains(ip("2001:db8:ffff::1")));
        assert!(!r.contains(ip("2001:db9::1")));
        assert!(!r.contains(ip("203.0.113.1")));
        let host = ranges(&["::1/128"]);
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        let all = ranges(&["::/0"]);
        assert!(all.contains(ip("fe80::1")) && !all.contains(ip("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_ipv4() {
        let v4 = ranges(&["10.0.0.0/8"]);
        assert!(v4.contains(ip("::ffff:10.1.2.3")), "a mapped address matches the IPv4 range");
        assert!(!v4.contains(ip("::ffff:11.1.2.3")));
        let mapped = ranges(&["::ffff:10.0.0.0/104"]);
        assert_eq!(mapped, v4, "a mapped range is the IPv4 range");
        assert!(mapped.contains(ip("10.9.9.9")));
        assert_eq!(peer_ip("[::ffff:127.0.0.2]:5000"), Some(ip("127.0.0.2")));
        assert_eq!(parse_ip(" ::ffff:203.0.113.9 "), Some(ip("203.0.113.9")));
        // ::/0 covers the mapped space as IPv6 only; mapped addresses are IPv4 here.
        assert!(!ranges(&["::/0"]).contains(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(peer_ip("127.0.0.2:40000"), Some(ip("127.0.0.2")));
        assert_eq!(peer_ip("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(peer_ip("10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(peer_ip("/tmp/envoy.sock"), None);
        assert_eq!(peer_ip("[fe80::1%eth0]:80"), None, "zone ids are refused");
        assert_eq!(peer_ip("[fe80::1%2]:80"), None, "numeric zone ids too");
        assert_eq!(peer_ip("[fe80::1]:80"), Some(ip("fe80::1")));
        assert_eq!(parse_ip("fe80::1%eth0"), None);
        assert_eq!(parse_ip("203.0.113.7:80"), None, "X-Forwarded-For holds addresses, not ports");
        assert_eq!(parse_ip("unknown"), None);
    }

    #[test]
    fn bad_ranges_say_why() {
        let cases = [
            ("10.0.0.1/8", "\"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)"),
            ("2001:db8::1/32", "\"2001:db8::1/32\" has host bits set (did you mean 2001:db8::/32?)"),
            ("10.0.0.0/33", "\"10.0.0.0/33\" has a prefix length over 32"),
            ("::/129", "\"::/129\" has a prefix length over 128"),
            ("10.0.0.0/+8", "\"10.0.0.0/+8\" has a prefix length that is not a number"),
            ("10.0.0.0/", "\"10.0.0.0/\" has a prefix length that is not a number"),
            ("fe80::%eth0/64", "\"fe80::%eth0/64\" has a zone id ('%'); ranges are global addresses"),
            ("10.0.0/8", "\"10.0.0/8\" is not a CIDR range (like 203.0.113.0/24 or 2001:db8::/32)"),
            (" 10.0.0.0/8", "\" 10.0.0.0/8\" is not a CIDR range (like 203.0.113.0/24 or 2001:db8::/32)"),
            ("", "\"\" is not a CIDR range (like 203.0.113.0/24 or 2001:db8::/32)"),
            ("localhost", "\"localhost\" is not a CIDR range (like 203.0.113.0/24 or 2001:db8::/32)"),
        ];
        for (entry, expected) in cases {
            let err = Ranges::parse(&["127.0.0.1/32".to_string(), entry.to_string()]).unwrap_err();
            assert_eq!(err, (1, expected.to_string()), "{entry}");
        }
    }
}
