//! The access rules as users write them: top-level `source_ranges`, `trusted_proxies`,
//! `principals`, `principal_header`, and per public path an object entry
//! `{"path": "/hooks", "source_ranges": [...], "principals": [...], "otherwise": "check"}`
//! in place of the plain string. Compiled into [`AccessSettings`].

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::access::cidr::Ranges;
use crate::access::principal::Principals;
use crate::access::{AccessSettings, Otherwise, PathRule};
use crate::error::ConfigError;
use crate::policy::forward;
use crate::policy::headers::{is_connection_header, HeaderNames};
use crate::policy::route::PublicPaths;

/// The top-level fields (config.rs reads them with the rest of the top level).
#[derive(Debug, Default)]
pub struct RawAccess {
    pub source_ranges: Option<Vec<String>>,
    pub trusted_proxies: Option<Vec<String>>,
    pub principals: Option<Vec<String>>,
    pub principal_header: Option<String>,
    /// Whether a `policies` rule reads the client address (`remoteIpBlocks`,
    /// `remote.ip`): `trusted_proxies` then has a use without `source_ranges`.
    pub remote_ip_rules: bool,
}

/// One `public_paths` entry: a template, or a template with access rules.
#[derive(Debug)]
pub enum RawPublicPath {
    Path(String),
    Entry(RawPublicEntry),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublicEntry {
    path: String,
    source_ranges: Option<Vec<String>>,
    principals: Option<Vec<String>>,
    otherwise: Option<RawOtherwise>,
    deny_status: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOtherwise {
    Check,
    Deny,
}

// By hand rather than `#[serde(untagged)]`, whose one error ("did not match any
// variant") would hide which field of an entry is wrong.
impl<'de> Deserialize<'de> for RawPublicPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = RawPublicPath;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path string or an object with \"path\" and access rules")
            }

            fn visit_str<E: de::Error>(self, path: &str) -> Result<RawPublicPath, E> {
                Ok(RawPublicPath::Path(path.to_string()))
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<RawPublicPath, M::Error> {
                RawPublicEntry::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawPublicPath::Entry)
            }
        }
        // A format that cannot describe itself (the docs tracer, config/docs_reference.rs)
        // cannot say which one it holds: it walks the object shape.
        if !deserializer.is_human_readable() {
            return RawPublicEntry::deserialize(deserializer).map(RawPublicPath::Entry);
        }
        deserializer.deserialize_any(Entry)
    }
}

/// The templates (for policy/route.rs) and each entry's rules, by position.
pub fn split(paths: Option<Vec<RawPublicPath>>) -> (Option<Vec<String>>, Vec<Option<RawPublicEntry>>) {
    let Some(paths) = paths else { return (None, Vec::new()) };
    let mut templates = Vec::with_capacity(paths.len());
    let mut entries = Vec::with_capacity(paths.len());
    for path in paths {
        match path {
            RawPublicPath::Path(path) => {
                templates.push(path);
                entries.push(None);
            }
            RawPublicPath::Entry(entry) => {
                templates.push(entry.path.clone());
                entries.push(Some(entry));
            }
        }
    }
    (Some(templates), entries)
}

/// `None` when no rule is configured: then the request path never looks at access.
/// `request_headers` are the client headers the callout forwards (`auth.request_headers`).
pub fn compile(
    raw: RawAccess,
    entries: Vec<Option<RawPublicEntry>>,
    public: &PublicPaths,
    request_headers: &HeaderNames,
) -> Result<Option<AccessSettings>, ConfigError> {
    let source_ranges = ranges("source_ranges", raw.source_ranges)?;
    let principals = principals("principals", raw.principals)?;
    let trusted_proxies = ranges("trusted_proxies", raw.trusted_proxies)?;
    let principal_header = match raw.principal_header {
        Some(name) => {
            HeaderNames::parse("principal_header", std::slice::from_ref(&name), false)
                .map_err(|e| ConfigError::new("principal_header", e.message))?;
            let name = name.to_ascii_lowercase();
            if is_connection_header(&name) {
                let message = format!("{name:?} is a connection-level header Envoy manages");
                return Err(ConfigError::new("principal_header", message));
            }
            // It is stripped from every client request: a forwarded credential would vanish.
            if request_headers.contains(&name) || forward::is_x_forwarded(&name) {
                let message = format!("{name:?} is a client header the callout forwards; name a header of its own");
                return Err(ConfigError::new("principal_header", message));
            }
            Some(name)
        }
        None => None,
    };
    let mut paths = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        paths.push(entry.map(|entry| path_rule(i, entry, public)).transpose()?);
    }
    let any_ranges = source_ranges.is_some() || paths.iter().flatten().any(|r| r.source_ranges.is_some());
    if trusted_proxies.is_some() && !any_ranges && !raw.remote_ip_rules {
        return Err(ConfigError::new(
            "trusted_proxies",
            "is only used by source_ranges and remoteIpBlocks, and none is configured",
        ));
    }
    let has_paths = paths.iter().any(Option::is_some);
    // Only `trusted_proxies` (for `remoteIpBlocks`): kept, the gate then admits everyone.
    let proxies_only = trusted_proxies.is_some() && raw.remote_ip_rules;
    if source_ranges.is_none() && principals.is_none() && principal_header.is_none() && !has_paths && !proxies_only {
        return Ok(None);
    }
    Ok(Some(AccessSettings {
        source_ranges,
        principals,
        trusted_proxies,
        principal_header,
        deny_rules: paths.iter().flatten().any(|rule| matches!(rule.otherwise, Otherwise::Deny(_))),
        paths: if has_paths { paths } else { Vec::new() },
    }))
}

fn path_rule(i: usize, entry: RawPublicEntry, public: &PublicPaths) -> Result<PathRule, ConfigError> {
    let field = format!("public_paths[{i}]");
    let source_ranges = ranges(&format!("{field}.source_ranges"), entry.source_ranges)?;
    let principals = principals(&format!("{field}.principals"), entry.principals)?;
    if source_ranges.is_none() && principals.is_none() {
        return Err(ConfigError::new(
            field,
            "an object entry needs source_ranges or principals (a path public from anywhere is a plain string)",
        ));
    }
    // Another entry with the same template would win the match and drop these rules.
    if let Some(other) = public.same_as(i) {
        return Err(ConfigError::new(
            field,
            format!("{:?} is the same public path as public_paths[{other}]; list it once, with its rules", entry.path),
        ));
    }
    let otherwise = match (entry.otherwise.unwrap_or(RawOtherwise::Check), entry.deny_status) {
        (RawOtherwise::Check, None) => Otherwise::Check,
        (RawOtherwise::Check, Some(_)) => {
            return Err(ConfigError::new(format!("{field}.deny_status"), "is only used with \"otherwise\": \"deny\""))
        }
        (RawOtherwise::Deny, status) => {
            let status = status.unwrap_or(403);
            if !(400..=599).contains(&status) {
                return Err(ConfigError::new(
                    format!("{field}.deny_status"),
                    format!("must be a 4xx or 5xx status, got {status}"),
                ));
            }
            Otherwise::Deny(status)
        }
    };
    Ok(PathRule { source_ranges, principals, otherwise })
}

fn ranges(field: &str, list: Option<Vec<String>>) -> Result<Option<Ranges>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    if list.is_empty() {
        return Err(ConfigError::new(field, "must list at least one range (leave it out to allow every address)"));
    }
    Ranges::parse(&list).map(Some).map_err(|(i, message)| ConfigError::new(format!("{field}[{i}]"), message))
}

fn principals(field: &str, list: Option<Vec<String>>) -> Result<Option<Principals>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    if list.is_empty() {
        return Err(ConfigError::new(field, "must list at least one principal (leave it out to allow every peer)"));
    }
    Principals::parse(&list).map(Some).map_err(|(i, message)| ConfigError::new(format!("{field}[{i}]"), message))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use crate::access::Otherwise;
    use crate::plugin_config::Settings;

    fn err(json: &str) -> String {
        Settings::from_json(json.as_bytes()).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn no_rules_means_no_access_settings() {
        let s = Settings::from_json(br#"{"auth": {"cluster": "a"}, "public_paths": ["/hooks"]}"#).unwrap();
        assert!(s.access.is_none(), "the request path must not even look at access");
    }

    #[test]
    fn rules_compile() {
        let s = Settings::from_json(
            br#"{"auth": {"cluster": "a"},
                 "source_ranges": ["127.0.0.0/8", "::1"],
                 "trusted_proxies": ["10.0.0.0/8"],
                 "principals": ["spiffe://cluster.local/ns/prefect/*"],
                 "principal_header": "X-Nebula-Peer",
                 "public_paths": ["/api/health",
                   {"path": "/hooks", "source_ranges": ["203.0.113.0/24"]},
                   {"path": "/admin", "principals": ["spiffe://td/sa/admin"], "otherwise": "deny", "deny_status": 404}]}"#,
        )
        .unwrap();
        let access = s.access.as_ref().unwrap();
        assert!(access.source_ranges.is_some() && access.principals.is_some() && access.trusted_proxies.is_some());
        assert_eq!(access.principal_header.as_deref(), Some("x-nebula-peer"));
        assert!(s.strip.contains("x-nebula-peer"), "the identity header is stripped from clients");
        assert!(access.paths[0].is_none());
        assert_eq!(access.paths[1].as_ref().unwrap().otherwise, Otherwise::Check, "check is the default");
        assert_eq!(access.paths[2].as_ref().unwrap().otherwise, Otherwise::Deny(404));
        assert_eq!(s.public.find(b"/hooks/x"), Some("/hooks"), "object entries are public paths too");
        assert_eq!(s.public.find_index(b"/admin/x"), Some(2));
    }

    /// The exact texts users see; each names the field.
    #[test]
    fn bad_access_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#""source_ranges": ["10.0.0.0/8", "10.0.0.1/8"]"#,
                "invalid plugin configuration: source_ranges[1]: \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)",
            ),
            (
                r#""source_ranges": []"#,
                "invalid plugin configuration: source_ranges: must list at least one range (leave it out to allow every address)",
            ),
            (
                r#""source_ranges": "10.0.0.0/8""#,
                "invalid plugin configuration: source_ranges: invalid type: string \"10.0.0.0/8\", expected a sequence",
            ),
            (
                r#""source_ranges": ["fe80::/10"], "trusted_proxies": ["fe80::1%eth0"]"#,
                "invalid plugin configuration: trusted_proxies[0]: \"fe80::1%eth0\" has a zone id ('%'); ranges are global addresses",
            ),
            (
                r#""trusted_proxies": ["10.0.0.0/8"]"#,
                "invalid plugin configuration: trusted_proxies: is only used by source_ranges and remoteIpBlocks, and none is configured",
            ),
            (
                r#""principals": ["cluster.local/ns/a/sa/b"]"#,
                "invalid plugin configuration: principals[0]: \"cluster.local/ns/a/sa/b\" is not a URI; a verified peer is a URI SAN like \"spiffe://cluster.local/ns/a/sa/b\" (Istio's principals omit \"spiffe://\")",
            ),
            (
                r#""principals": []"#,
                "invalid plugin configuration: principals: must list at least one principal (leave it out to allow every peer)",
            ),
            (r#""principal_header": "bad header""#, "invalid plugin configuration: principal_header: \"bad header\" is not a valid header name"),
            (
                r#""principal_header": "x-peer-*""#,
                "invalid plugin configuration: principal_header: \"x-peer-*\" is not a valid header name (patterns are not allowed here)",
            ),
            (
                r#""principal_header": "Transfer-Encoding""#,
                "invalid plugin configuration: principal_header: \"transfer-encoding\" is a connection-level header Envoy manages",
            ),
            (
                r#""principal_header": "Authorization""#,
                "invalid plugin configuration: principal_header: \"authorization\" is a client header the callout forwards; name a header of its own",
            ),
            (
                r#""principal_header": "x-forwarded-for""#,
                "invalid plugin configuration: principal_header: \"x-forwarded-for\" is a client header the callout forwards; name a header of its own",
            ),
            (
                r#""public_paths": [{"path": "/hooks", "source_ranges": ["203.0.113.0/33"]}]"#,
                "invalid plugin configuration: public_paths[0].source_ranges[0]: \"203.0.113.0/33\" has a prefix length over 32",
            ),
            (
                r#""public_paths": ["/api/health", {"path": "/admin", "principals": ["spiffe://td/**"]}]"#,
                "invalid plugin configuration: public_paths[1].principals[0]: \"spiffe://td/**\" has \"**\"; one * already matches any run of characters",
            ),
            (
                r#""public_paths": [{"path": "/hooks"}]"#,
                "invalid plugin configuration: public_paths[0]: an object entry needs source_ranges or principals (a path public from anywhere is a plain string)",
            ),
            (
                r#""public_paths": [{"path": "/hooks", "source_range": ["203.0.113.0/24"]}]"#,
                "invalid plugin configuration: public_paths[0].source_range: unknown field `source_range`, expected one of `path`, `source_ranges`, `principals`, `otherwise`, `deny_status`",
            ),
            (
                r#""public_paths": [{"source_ranges": ["203.0.113.0/24"]}]"#,
                "invalid plugin configuration: public_paths[0]: missing field `path`",
            ),
            (
                r#""public_paths": [{"path": "hooks", "source_ranges": ["203.0.113.0/24"]}]"#,
                "invalid plugin configuration: public_paths[0]: \"hooks\" must start with '/'",
            ),
            (
                r#""public_paths": [{"path": "/hooks", "source_ranges": ["203.0.113.0/24"], "otherwise": "allow"}]"#,
                "invalid plugin configuration: public_paths[0].otherwise: unknown variant `allow`, expected `check` or `deny`",
            ),
            (
                r#""public_paths": [{"path": "/hooks", "source_ranges": ["203.0.113.0/24"], "deny_status": 404}]"#,
                "invalid plugin configuration: public_paths[0].deny_status: is only used with \"otherwise\": \"deny\"",
            ),
            (
                r#""public_paths": [{"path": "/hooks", "source_ranges": ["203.0.113.0/24"], "otherwise": "deny", "deny_status": 302}]"#,
                "invalid plugin configuration: public_paths[0].deny_status: must be a 4xx or 5xx status, got 302",
            ),
            (
                r#""public_paths": ["/hooks/", {"path": "/hooks", "source_ranges": ["203.0.113.0/24"]}]"#,
                "invalid plugin configuration: public_paths[1]: \"/hooks\" is the same public path as public_paths[0]; list it once, with its rules",
            ),
            (
                r#""public_paths": [{"path": "/hooks", "source_ranges": ["203.0.113.0/24"]}, "/hooks"]"#,
                "invalid plugin configuration: public_paths[0]: \"/hooks\" is the same public path as public_paths[1]; list it once, with its rules",
            ),
            (
                r#""public_paths": [7]"#,
                "invalid plugin configuration: public_paths[0]: invalid type: integer `7`, expected a path string or an object with \"path\" and access rules",
            ),
        ];
        for (fields, expected) in cases {
            let json = format!(r#"{{"auth": {{"cluster": "a"}}, {fields}}}"#);
            assert_eq!(&err(&json), expected, "config: {json}");
        }
    }
}
