//! How long the auth service lets its answer be reused, from its `Cache-Control` (and
//! `Age`) headers. Conservative: anything we do not understand means "do not store".

use crate::policy::headers::Header;

/// What the auth response says about reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// `no-store`, `no-cache`, a malformed directive, or a lifetime of 0: never stored.
    Forbidden,
    /// Reusable for this many seconds (`s-maxage` wins over `max-age`, minus `Age`).
    Seconds(u64),
    /// No lifetime given: the configured default applies.
    Silent,
}

/// Reads every `cache-control` and `age` header of a response (names lower-case).
///
/// `private` does not forbid storing: the cache key covers every byte the auth service
/// saw, credentials included, so an entry is only ever reused for the same credential.
/// `public`, `must-revalidate`, `proxy-revalidate`, `immutable` and unknown extension
/// directives without a value change nothing. `Expires` is ignored.
pub fn freshness<H: Header>(headers: &[H]) -> Freshness {
    let mut max_age = None;
    let mut s_maxage = None;
    let mut age = 0u64;
    for header in headers {
        let value = header.value();
        match header.name() {
            "cache-control" => {
                let Ok(value) = std::str::from_utf8(value) else {
                    return Freshness::Forbidden;
                };
                for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                    let (name, arg) = match directive.split_once('=') {
                        Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                        None => (directive, None),
                    };
                    let name = name.to_ascii_lowercase();
                    match (name.as_str(), arg) {
                        ("no-store" | "no-cache", _) => return Freshness::Forbidden,
                        ("max-age", Some(arg)) => match seconds(arg) {
                            Some(n) => max_age = Some(max_age.map_or(n, |m: u64| m.min(n))),
                            None => return Freshness::Forbidden,
                        },
                        ("s-maxage", Some(arg)) => match seconds(arg) {
                            Some(n) => s_maxage = Some(s_maxage.map_or(n, |m: u64| m.min(n))),
                            None => return Freshness::Forbidden,
                        },
                        ("max-age" | "s-maxage", None) => return Freshness::Forbidden,
                        _ => {}
                    }
                }
            }
            "age" => match std::str::from_utf8(value).ok().and_then(|v| seconds(v.trim())) {
                Some(n) => age = age.max(n),
                None => return Freshness::Forbidden,
            },
            _ => {}
        }
    }
    // We are a shared cache (all workers, all clients): s-maxage is ours when present.
    match s_maxage.or(max_age) {
        Some(lifetime) => match lifetime.saturating_sub(age) {
            0 => Freshness::Forbidden,
            n => Freshness::Seconds(n),
        },
        None => Freshness::Silent,
    }
}

/// A delta-seconds value: ASCII digits only; huge values saturate.
fn seconds(arg: &str) -> Option<u64> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(arg.bytes().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn f(pairs: &[(&str, &[u8])]) -> Freshness {
        let headers: Vec<(String, Vec<u8>)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        freshness(&headers)
    }

    type Headers<'a> = &'a [(&'a str, &'a [u8])];

    #[test]
    fn lifetimes() {
        use Freshness::*;
        let cases: &[(Headers, Freshness)] = &[
            (&[], Silent),
            (&[("content-type", b"text/plain")], Silent),
            (&[("cache-control", b"max-age=30")], Seconds(30)),
            (&[("cache-control", b"Max-Age=30, private")], Seconds(30)),
            (&[("cache-control", b"max-age=\"30\"")], Seconds(30)),
            (&[("cache-control", b"max-age=60, s-maxage=10")], Seconds(10)),
            (&[("cache-control", b"s-maxage=10"), ("cache-control", b"max-age=60")], Seconds(10)),
            (&[("cache-control", b"max-age=30, max-age=20")], Seconds(20)),
            (&[("cache-control", b"max-age=30"), ("age", b"25")], Seconds(5)),
            (&[("cache-control", b"max-age=30"), ("age", b"30")], Forbidden),
            (&[("cache-control", b"max-age=0")], Forbidden),
            (&[("cache-control", b"max-age=99999999999999999999999")], Seconds(u64::MAX)),
            (&[("cache-control", b"public")], Silent),
            (&[("cache-control", b"private")], Silent),
            (&[("cache-control", b"must-revalidate, x-ext")], Silent),
            (&[("cache-control", b"no-store")], Forbidden),
            (&[("cache-control", b"max-age=30, No-Cache")], Forbidden),
            (&[("cache-control", b"no-cache=\"set-cookie\"")], Forbidden),
            (&[("cache-control", b"max-age=30"), ("cache-control", b"no-store")], Forbidden),
            (&[("cache-control", b"max-age=abc")], Forbidden),
            (&[("cache-control", b"max-age=-1")], Forbidden),
            (&[("cache-control", b"max-age")], Forbidden),
            (&[("cache-control", b"max-age=")], Forbidden),
            (&[("cache-control", b"max-age=1\xff")], Forbidden),
            (&[("cache-control", b"max-age=30"), ("age", b"x")], Forbidden),
            (&[("cache-control", b" , ,")], Silent),
        ];
        for (headers, want) in cases {
            assert_eq!(f(headers), *want, "{headers:?}");
        }
    }
}
