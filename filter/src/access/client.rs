//! Who the client is, by address: the downstream peer (`source.address`), or behind
//! trusted proxies the right-most X-Forwarded-For address that is not one of them
//! (Traefik `forwardedHeaders.trustedIPs` + `ipStrategy.excludedIPs`). X-Forwarded-For
//! is read only when the peer itself is a trusted proxy, so without `trusted_proxies`
//! (the default) a client can never choose its own address.

use std::net::IpAddr;

use crate::access::cidr::{self, Ranges};
use crate::policy::headers::Header;

/// The client address for the access rules; `None` when there is none to trust (no
/// peer address, a malformed X-Forwarded-For entry, or only trusted proxies in it).
pub fn client_ip<H: Header>(peer: Option<IpAddr>, headers: &[H], trusted: Option<&Ranges>) -> Option<IpAddr> {
    let peer = peer?;
    let Some(trusted) = trusted.filter(|t| t.contains(peer)) else { return Some(peer) };
    // Every X-Forwarded-For line, in order, as one list; walk it from the right.
    let lines: Vec<&[u8]> =
        headers.iter().filter(|h| h.name().eq_ignore_ascii_case("x-forwarded-for")).map(Header::value).collect();
    for line in lines.iter().rev() {
        let text = std::str::from_utf8(line).ok()?;
        for entry in text.rsplit(',') {
            let ip = cidr::parse_ip(entry)?;
            if !trusted.contains(ip) {
                return Some(ip);
            }
        }
    }
    None
}

/// Whether an X-Forwarded-For entry names `ip`: then Envoy may have taken its remote
/// address (`source.address`) from the header rather than the TCP peer. With
/// `use_remote_address: false` (every Istio sidecar) or `xff_num_trusted_hops` it takes
/// an entry (Envoy's `ConnectionManagerUtility::mutateRequestHeaders`), and an entry it
/// takes is one it parsed as an address, so an address no entry names is the peer's.
pub fn x_forwarded_for_names<H: Header>(headers: &[H], ip: IpAddr) -> bool {
    let ip = cidr::normalise(ip);
    headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|h| h.value().split(|&b| b == b','))
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .any(|entry| cidr::parse_ip(entry).or_else(|| cidr::peer_ip(entry.trim())) == Some(ip))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn xff(values: &[&str]) -> Vec<(String, Vec<u8>)> {
        values.iter().map(|v| ("X-Forwarded-For".to_string(), v.as_bytes().to_vec())).collect()
    }

    fn trusted() -> Ranges {
        Ranges::parse(&["10.0.0.0/8".to_string(), "127.0.0.1/32".to_string()]).unwrap()
    }

    #[test]
    fn an_address_some_x_forwarded_for_entry_names() {
        let headers = xff(&["198.51.100.1, 203.0.113.7 ", "2001:db8::1", "junk,10.0.0.9:443"]);
        for named in ["198.51.100.1", "203.0.113.7", "2001:db8::1", "::ffff:203.0.113.7", "10.0.0.9"] {
            assert!(x_forwarded_for_names(&headers, named.parse().unwrap()), "{named}");
        }
        for unnamed in ["198.51.100.2", "2001:db8::2", "127.0.0.1"] {
            assert!(!x_forwarded_for_names(&headers, unnamed.parse().unwrap()), "{unnamed}");
        }
        assert!(!x_forwarded_for_names::<(String, Vec<u8>)>(&[], "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let headers = xff(&["203.0.113.7"]);
        assert_eq!(client_ip(ip("198.51.100.1"), &headers, None), ip("198.51.100.1"), "X-Forwarded-For ignored");
        let t = trusted();
        assert_eq!(client_ip(ip("198.51.100.1"), &headers, Some(&t)), ip("198.51.100.1"), "peer not trusted");
        assert_eq!(client_ip(None, &headers, Some(&t)), None);
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address() {
        let t = trusted();
        let peer = ip("10.0.0.5");
        // The client forged the left-most entry; the proxies appended the real one.
        let headers = xff(&["203.0.113.7, 198.51.100.9, 10.1.1.1"]);
        assert_eq!(client_ip(peer, &headers, Some(&t)), ip("198.51.100.9"));
        // Several header lines are one list, in order.
        let headers = xff(&["203.0.113.7", "198.51.100.9,10.1.1.1"]);
        assert_eq!(client_ip(peer, &headers, Some(&t)), ip("198.51.100.9"));
        // Envoy's use_remote_address appends the peer itself: it is trusted, skipped.
        let headers = xff(&["198.51.100.9, 10.0.0.5"]);
        assert_eq!(client_ip(peer, &headers, Some(&t)), ip("198.51.100.9"));
        assert_eq!(client_ip(peer, &xff(&[" ::ffff:198.51.100.9 "]), Some(&t)), ip("198.51.100.9"));
    }

    #[test]
    fn nothing_to_trust_is_no_client() {
        let t = trusted();
        let peer = ip("127.0.0.1");
        assert_eq!(client_ip(peer, &xff(&[]), Some(&t)), None, "no header");
        assert_eq!(client_ip(peer, &xff(&["10.0.0.1, 10.0.0.2"]), Some(&t)), None, "only proxies");
        assert_eq!(client_ip(peer, &xff(&["203.0.113.7, garbage"]), Some(&t)), None, "malformed right of the client");
        assert_eq!(client_ip(peer, &xff(&["203.0.113.7,"]), Some(&t)), None, "empty entry");
        assert_eq!(client_ip(peer, &xff(&["203.0.113.7:80"]), Some(&t)), None, "ports are not addresses");
        let bytes = vec![("x-forwarded-for".to_string(), b"203.0.113.7\xff".to_vec())];
        assert_eq!(client_ip(peer, &bytes, Some(&t)), None, "not text");
        // Malformed entries left of the client do not matter: they are never reached.
        assert_eq!(client_ip(peer, &xff(&["garbage, 203.0.113.7"]), Some(&t)), ip("203.0.113.7"));
    }
}
