//! Peer principals: the verified client certificate's URI SAN (in Istio
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`), matched against globs
//! where `*` stands for any run of characters, `/` included, as in Istio's
//! `principals` (which only allows it at the start or the end; here it may be anywhere).

/// One compiled pattern: the literal pieces between the `*`s.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    /// `parts[0]` must start the principal, the last part must end it, the others
    /// appear in order between them; one part means no `*` (exact match).
    parts: Vec<String>,
}

/// A compiled allow-list of principal globs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principals(Vec<Glob>);

impl Principals {
    /// Parses every entry; on error, the index of the bad entry and the message.
    pub fn parse(entries: &[String]) -> Result<Principals, (usize, String)> {
        let mut globs = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            globs.push(parse_glob(entry).map_err(|message| (i, format!("{entry:?} {message}")))?);
        }
        Ok(Principals(globs))
    }

    /// Whether the verified principal matches one glob. No principal (no verified
    /// peer) never matches, not even `*`.
    pub fn matches(&self, principal: Option<&str>) -> bool {
        principal.is_some_and(|p| !p.is_empty() && self.0.iter().any(|g| g.matches(p)))
    }
}

fn parse_glob(text: &str) -> Result<Glob, String> {
    if text.is_empty() {
        return Err("is empty (use \"*\" for any verified peer)".into());
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("has a space, a control or a non-ASCII character".into());
    }
    if text.contains("**") {
        return Err("has \"**\"; one * already matches any run of characters".into());
    }
    // A principal is a URI; Istio writes `cluster.local/ns/a/sa/b` for
    // `spiffe://cluster.local/ns/a/sa/b`, which would silently never match here.
    let scheme_end = text.find("://");
    if !text.starts_with('*') && scheme_end.is_none_or(|end| text[..end].contains('*') || end == 0) {
        return Err(format!(
            "is not a URI; a verified peer is a URI SAN like \"spiffe://{text}\" (Istio's principals omit \"spiffe://\")"
        ));
    }
    Ok(Glob { parts: text.split('*').map(str::to_string).collect() })
}

impl Glob {
    fn matches(&self, principal: &str) -> bool {
        let [first, middle @ .., last] = self.parts.as_slice() else {
            return self.parts.first().is_some_and(|p| p == principal);
        };
        let Some(rest) = principal.strip_prefix(first.as_str()) else { return false };
        let Some(mut rest) = rest.strip_suffix(last.as_str()) else { return false };
        // The suffix must not overlap the prefix: `a*a` does not match "a".
        if principal.len() < first.len() + last.len() {
            return false;
        }
        // Greedy left-most placement of each middle part is optimal for `*` globs.
        for part in middle {
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn principals(list: &[&str]) -> Principals {
        Principals::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    const WEBHOOK: &str = "spiffe://cluster.local/ns/prefect/sa/webhook";

    #[test]
    fn exact_prefix_suffix_and_middle() {
        assert!(principals(&[WEBHOOK]).matches(Some(WEBHOOK)));
        assert!(!principals(&[WEBHOOK]).matches(Some("spiffe://cluster.local/ns/prefect/sa/webhook2")));
        assert!(!principals(&[WEBHOOK]).matches(Some("spiffe://cluster.local/ns/prefect/sa/webhoo")));
        let ns = principals(&["spiffe://cluster.local/ns/prefect/*"]);
        assert!(ns.matches(Some(WEBHOOK)));
        assert!(!ns.matches(Some("spiffe://cluster.local/ns/prefect2/sa/webhook")));
        let sa = principals(&["*/sa/webhook"]);
        assert!(sa.matches(Some(WEBHOOK)) && !sa.matches(Some("spiffe://x/ns/a/sa/webhook/x")));
        let any_ns = principals(&["spiffe://cluster.local/ns/*/sa/admin"]);
        assert!(any_ns.matches(Some("spiffe://cluster.local/ns/ops/sa/admin")));
        assert!(!any_ns.matches(Some("spiffe://cluster.local/ns/ops/sa/admins")));
        assert!(!any_ns.matches(Some("spiffe://other/ns/ops/sa/admin")));
        let overlap = principals(&["spiffe://a*a"]);
        assert!(!overlap.matches(Some("spiffe://a")), "prefix and suffix cannot share characters");
        assert!(overlap.matches(Some("spiffe://aa")));
        let parts = principals(&["spiffe://*/ns/*/sa/*-bot"]);
        assert!(parts.matches(Some("spiffe://td/ns/x/sa/ci-bot")));
        assert!(!parts.matches(Some("spiffe://td/ns/x/sa/ci-bots")));
    }

    #[test]
    fn no_verified_peer_never_matches() {
        let any = principals(&["*"]);
        assert!(any.matches(Some(WEBHOOK)));
        assert!(!any.matches(None), "* means any verified peer, not anyone");
        assert!(!any.matches(Some("")), "an empty SAN is no identity");
        assert!(!principals(&[]).matches(Some(WEBHOOK)));
    }

    #[test]
    fn bad_globs_say_why() {
        let cases = [
            ("", "\"\" is empty (use \"*\" for any verified peer)"),
            ("spiffe://a b", "\"spiffe://a b\" has a space, a control or a non-ASCII character"),
            ("spiffe://td/ns/**", "\"spiffe://td/ns/**\" has \"**\"; one * already matches any run of characters"),
            (
                "cluster.local/ns/a/sa/b",
                "\"cluster.local/ns/a/sa/b\" is not a URI; a verified peer is a URI SAN like \"spiffe://cluster.local/ns/a/sa/b\" (Istio's principals omit \"spiffe://\")",
            ),
            (
                "spi*://td",
                "\"spi*://td\" is not a URI; a verified peer is a URI SAN like \"spiffe://spi*://td\" (Istio's principals omit \"spiffe://\")",
            ),
        ];
        for (entry, expected) in cases {
            let err = Principals::parse(&["*".to_string(), entry.to_string()]).unwrap_err();
            assert_eq!(err, (1, expected.to_string()), "{entry:?}");
        }
    }
}
