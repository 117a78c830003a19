//! Why a JWT was rejected (below the verifier and its caches, which both name it).

/// Why a JWT was rejected; `as_str` names the metric and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not decodable: base64, JSON, segments, critical headers.
    Malformed,
    TooLarge,
    /// `alg` is not one of the provider's (`none`, HS256 against public keys, ...).
    Algorithm,
    UnknownKid,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingExp,
    /// No provider has the token's `iss` (with `unknown_issuer: reject`).
    UnknownIssuer,
    /// A mapped claim cannot be a header value (control characters, too long).
    ClaimHeader,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Malformed,
        Reason::TooLarge,
        Reason::Algorithm,
        Reason::UnknownKid,
        Reason::Signature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Issuer,
        Reason::Audience,
        Reason::MissingExp,
        Reason::UnknownIssuer,
        Reason::ClaimHeader,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::Algorithm => "algorithm",
            Reason::UnknownKid => "unknown_kid",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::MissingExp => "missing_exp",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::ClaimHeader => "claim_header",
        }
    }
}
