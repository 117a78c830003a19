//! One Istio rule value as Envoy's RBAC matches it: exact, prefix `x*`, suffix `*x`, or
//! `*` alone (pilot/pkg/security/authz/matcher: `StringMatcher`, `HeaderMatcher`,
//! `HostMatcher`). What `*` alone means depends on the field: a present header
//! (`HeaderMatcher`'s `present_match`, an empty value included) or a non-empty value
//! (`StringMatcher`'s regex `.+`).

/// A compiled value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any value (`present`), or any non-empty value.
    Any {
        present: bool,
    },
}

impl Pattern {
    /// Istio's reading of `value`: `*` first (Envoy refuses an empty prefix or suffix),
    /// then a leading, then a trailing `*`. `lower`: compiled lower-case, for a
    /// case-insensitive match (`:authority`). `present`: what `*` alone means.
    pub fn parse(value: &str, lower: bool, present: bool) -> Pattern {
        let value = if lower { value.to_ascii_lowercase() } else { value.to_string() };
        if value == "*" {
            Pattern::Any { present }
        } else if let Some(rest) = value.strip_prefix('*') {
            Pattern::Suffix(rest.to_string())
        } else if let Some(rest) = value.strip_suffix('*') {
            Pattern::Prefix(rest.to_string())
        } else {
            Pattern::Exact(value)
        }
    }

    /// Whether `text` matches (compare it lower-cased for a pattern parsed `lower`).
    pub fn matches(&self, text: &str) -> bool {
        self.matches_bytes(text.as_bytes())
    }

    /// [`Pattern::matches`] on raw bytes: Envoy compares header values byte for byte,
    /// obs-text (RFC 9110 §5.5) included.
    pub fn matches_bytes(&self, text: &[u8]) -> bool {
        match self {
            Pattern::Exact(v) => text == v.as_bytes(),
            Pattern::Prefix(v) => text.starts_with(v.as_bytes()),
            Pattern::Suffix(v) => text.ends_with(v.as_bytes()),
            Pattern::Any { present } => *present || !text.is_empty(),
        }
    }

    /// [`Pattern::matches`], ASCII case-insensitively (the pattern was parsed `lower`).
    pub fn matches_ignoring_case(&self, text: &str) -> bool {
        let eq = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
        let t = text.as_bytes();
        match self {
            Pattern::Exact(v) => eq(t, v),
            Pattern::Prefix(v) => t.len() >= v.len() && eq(&t[..v.len()], v),
            Pattern::Suffix(v) => t.len() >= v.len() && eq(&t[t.len() - v.len()..], v),
            Pattern::Any { present } => *present || !text.is_empty(),
        }
    }
}

/// Values and their negation, as Istio turns one field into RBAC: `values` (any of
/// them) and not `notValues` (none of them). An absent field has both empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Either<M> {
    pub values: Vec<M>,
    pub not_values: Vec<M>,
}

impl<M> Default for Either<M> {
    fn default() -> Self {
        Either { values: Vec::new(), not_values: Vec::new() }
    }
}

impl<M> Either<M> {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// Compiles both lists with `compile(value, index, is_not)`.
    pub fn compile<E>(
        values: Option<&[String]>,
        not_values: Option<&[String]>,
        mut compile: impl FnMut(&str, usize, bool) -> Result<M, E>,
    ) -> Result<Either<M>, E> {
        let mut out = Either::default();
        for (i, v) in values.unwrap_or_default().iter().enumerate() {
            out.values.push(compile(v, i, false)?);
        }
        for (i, v) in not_values.unwrap_or_default().iter().enumerate() {
            out.not_values.push(compile(v, i, true)?);
        }
        Ok(out)
    }

    /// Istio's `values AND NOT notValues`, with `holds` telling whether one matcher
    /// matches: an absent fact matches no value, so fails `values` and passes `notValues`.
    pub fn holds(&self, mut holds: impl FnMut(&M) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&mut holds)) && !self.not_values.iter().any(holds)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn istio_value_forms() {
        assert_eq!(Pattern::parse("*", false, true), Pattern::Any { present: true });
        assert_eq!(Pattern::parse("*.a.com", false, true), Pattern::Suffix(".a.com".into()));
        assert_eq!(Pattern::parse("/api/*", false, true), Pattern::Prefix("/api/".into()));
        assert_eq!(Pattern::parse("A.com", true, true), Pattern::Exact("a.com".into()));
        assert!(Pattern::parse("*", false, true).matches(""));
        assert!(!Pattern::parse("*", false, false).matches(""), "regex .+ needs one character");
        assert!(Pattern::parse("a.com*", true, true).matches_ignoring_case("A.COM:80"));
        assert!(!Pattern::parse("*.a.com", true, true).matches_ignoring_case("a.com"));
    }
}
