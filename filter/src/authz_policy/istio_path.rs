//! An operation's `paths`/`notPaths` value as Istio renders it for Envoy's RBAC
//! (pilot/pkg/security/authz/model/generator.go `pathGenerator`): a plain value is a
//! string match on the path without its query (exact, `/x*` prefix, `*/x` suffix, `*`
//! any non-empty path); a value holding `{*}` or `{**}` is Envoy's `uri_template`
//! matcher, where `{*}` is one path segment and `{**}` any run of segments, both over
//! RFC 3986 `pchar` bytes (Envoy's uri_template_lib: `[a-zA-Z0-9-._~%!$&'()+,;:@=]+`
//! and the same with `/`, `*`). Templates are checked as Istio's
//! `CheckValidPathTemplate` does: segment by segment, `{**}` the last operator.

use crate::authz_policy::pattern::Pattern;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Plain(Pattern),
    Template(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    /// `{*}`: one or more `pchar` bytes, no `/`.
    One,
    /// `{**}`: zero or more `pchar` bytes or `/`.
    Many,
}

/// RFC 3986 `pchar` as Envoy's uri_template writes it (percent signs as bytes).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

impl PathPattern {
    pub fn parse(value: &str) -> Result<PathPattern, String> {
        if value.is_empty() {
            return Err("is empty".into());
        }
        if !(value.contains("{*}") || value.contains("{**}")) {
            return Ok(PathPattern::Plain(Pattern::parse(value, false, false)));
        }
        let mut pieces = Vec::new();
        let mut many = false;
        let mut literal = String::new();
        let trimmed_start = value.len() - value.trim_start_matches('/').len();
        literal.push_str(&value[..trimmed_start]);
        let body = value.trim_matches('/');
        let segments: Vec<&str> = body.split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            if i > 0 {
                literal.push('/');
            }
            let op = match *segment {
                "{*}" => Some(Piece::One),
                "{**}" => Some(Piece::Many),
                _ => None,
            };
            match op {
                Some(_) if many => {
                    return Err(format!("{value:?} has an operator after {{**}} ({{**}} must be the last operator)"))
                }
                Some(op) => {
                    many = op == Piece::Many;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(op);
                }
                None if segment.contains(['{', '}']) => {
                    return Err(format!("{value:?} has '{{' or '}}' beyond a supported path template"))
                }
                None if !segment.bytes().all(is_pchar) || segment.is_empty() => {
                    return Err(format!("{value:?} has the segment {segment:?}, not a valid template literal"))
                }
                None => literal.push_str(segment),
            }
        }
        literal.push_str(&value[trimmed_start + body.len()..]);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(PathPattern::Template(pieces))
    }

    /// Whether `path` (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(path),
            PathPattern::Template(pieces) => template_matches(pieces, path.as_bytes()),
        }
    }
}

fn template_matches(pieces: &[Piece], mut rest: &[u8]) -> bool {
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Literal(l) => match rest.strip_prefix(l.as_bytes()) {
                Some(r) => rest = r,
                None => return false,
            },
            Piece::One => {
                // Greedy is exact: what follows is a literal starting with `/`, or the end.
                let n = rest.iter().take_while(|&&b| is_pchar(b)).count();
                if n == 0 {
                    return false;
                }
                rest = &rest[n..];
            }
            // The last operator: only literals follow, so they must end the path.
            Piece::Many => {
                let tail: Vec<u8> = pieces[i + 1..]
                    .iter()
                    .flat_map(|p| match p {
                        Piece::Literal(l) => l.as_bytes().to_vec(),
                        _ => Vec::new(),
                    })
                    .collect();
                let Some(middle) = rest.strip_suffix(tail.as_slice()) else { return false };
                return middle.iter().all(|&b| is_pchar(b) || b == b'/');
            }
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn plain_forms() {
        assert!(m("/a", "/a") && !m("/a", "/a/"));
        assert!(m("/a/*", "/a/") && m("/a/*", "/a/b/c") && !m("/a/*", "/a"));
        assert!(m("*.js", "/x/y.js") && !m("*.js", "/x/y.jsx"));
        assert!(m("*", "/") && !m("*", ""));
        assert!(m("/{x", "/{x"), "a brace without an operator is a literal");
    }

    #[test]
    fn templates() {
        assert!(m("/a/{*}", "/a/b") && !m("/a/{*}", "/a/b/c") && !m("/a/{*}", "/a/"));
        assert!(m("/a/{*}/c", "/a/b/c") && !m("/a/{*}/c", "/a//c"));
        assert!(m("/a/{**}", "/a/") && m("/a/{**}", "/a/b/c") && !m("/a/{**}", "/a"));
        assert!(m("/{**}/x", "/a/b/x") && m("/{**}/x", "//x") && !m("/{**}/x", "/a/x/y"));
        assert!(!m("/a/{*}", "/a/b?c"), "? is not a pchar");
        assert!(m("/{*}/{**}", "/a/b/c"));
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(PathPattern::parse("/{**}/{*}").unwrap_err().contains("last operator"));
        assert!(PathPattern::parse("/{*}/{x}").unwrap_err().contains("beyond a supported"));
        assert!(PathPattern::parse("/{*}/a b").unwrap_err().contains("not a valid template literal"));
        assert!(PathPattern::parse("").is_err());
    }
}
