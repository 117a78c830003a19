//! Public-path matching, safe against path confusion.
//!
//! The rule: a request target is public only if its path (before the first `?`) is in
//! canonical form, the same bytes every parser downstream reads the same way, and then
//! matches a template. Canonical means: starts with `/`; only the bytes
//! `A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , = : @ /`; no empty segment (one trailing `/`
//! aside); no segment made only of dots. Anything else (`%` escapes, `;`, `\`, NUL and
//! other controls, spaces, non-ASCII, `//`, `.`/`..`, `#`, absolute-form, `*`) is ambiguous
//! and therefore protected: it goes to the auth service. Envoy's `normalize_path` is not
//! needed and does not change the outcome.
//!
//! Templates follow Traefik `PathPrefix` on segment boundaries (`/hooks` covers `/hooks`
//! and `/hooks/...`, not `/hooksx`); `{name}` matches one segment. A leading `{prefix}`
//! matches one or more segments and the rest must end the path (an optional trailing `/`
//! aside): `/{prefix}/events/out`. A template starting with `=` is exact: that path (one
//! trailing `/` aside) and nothing below it, `=/api/events/out`; the Prefect preset uses
//! it for the WebSocket endpoints, which the `{prefix}` of Prefect's public-path list would open under any route
//! that ends the same way (`/api/admin/settings/events/out`). A template starting with `==`
//! is strict: its trailing `/` counts, so `==/api/health` is `/api/health` alone (not
//! `/api/health/`), `==/api/` is `/api/` alone, and `==/{prefix}/events/out` ends the path
//! exactly so; Istio's exact and suffix path matches are byte comparisons, and
//! `make convert` emits this form so that a migrated policy makes no more public than
//! before. matchit handles them all: prefix, exact and strict templates in a forward
//! router, `{prefix}` templates in a router over the path's segments reversed (a trailing
//! `/` reversed into a leading one), so the cost per request does not grow with the
//! number of templates.

use crate::error::ConfigError;

/// Prefect's public-path list (its proxy mode's Traefik router `public`; docs/configuration.md,
/// "Public paths"): the default `public_paths`.
pub const DEFAULT_PUBLIC_PATHS: [&str; 8] = [
    "/auth",
    "/api/docs",
    "/api/openapi.json",
    "/api/health",
    "/api/version",
    "/hooks",
    "/{prefix}/task_runs/subscriptions/scheduled",
    "/{prefix}/events/out",
];

/// Where a request target stands against the public paths ([`PublicPaths::classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMatch {
    /// Canonical and public by the template at this position.
    Public(usize),
    /// Canonical, matching no template.
    Protected,
    /// Not canonical: never public.
    NotCanonical,
}

/// The compiled public-path list.
#[derive(Debug)]
pub struct PublicPaths {
    forward: matchit::Router<usize>,
    reverse: matchit::Router<usize>,
    has_reverse: bool,
    /// The last segments a `{prefix}` template can end with (`None`: any, one ends with a
    /// parameter): a path ending otherwise skips the reverse router and the reversed copy
    /// of its segments (every protected request; measured with `make bench-callgrind`).
    suffix_ends: Option<Vec<String>>,
    templates: Vec<String>,
    /// For each template, the first one that compiles the same (itself if none).
    owners: Vec<usize>,
}

impl PublicPaths {
    /// The `public_paths` list (Prefect's public-path list when absent) plus the `frontend_prefix`, as
    /// users write them, compiled.
    pub(crate) fn from_config(
        public_paths: Option<Vec<String>>,
        frontend_prefix: Option<String>,
    ) -> Result<PublicPaths, ConfigError> {
        let mut templates =
            public_paths.unwrap_or_else(|| DEFAULT_PUBLIC_PATHS.iter().map(|s| s.to_string()).collect());
        let mut fields: Vec<String> = (0..templates.len()).map(|i| format!("public_paths[{i}]")).collect();
        if let Some(prefix) = frontend_prefix {
            if prefix.contains('{') {
                return Err(ConfigError::new("frontend_prefix", "must be a plain path, without {parameters}"));
            }
            templates.push(prefix);
            fields.push("frontend_prefix".to_string());
        }
        PublicPaths::compile(&templates, &fields)
    }

    /// Compiles `templates`; `fields[i]` names `templates[i]` in errors.
    pub fn compile(templates: &[String], fields: &[String]) -> Result<PublicPaths, ConfigError> {
        let mut paths = PublicPaths {
            forward: matchit::Router::new(),
            reverse: matchit::Router::new(),
            has_reverse: false,
            suffix_ends: Some(Vec::new()),
            templates: templates.to_vec(),
            owners: Vec::with_capacity(templates.len()),
        };
        // The templates compiled so far and where each first appeared. A list, not a
        // hash map: a start-up step does not need one, and a map of `Template`s would be
        // 2 KB of module code of its own that every sidecar's V8 compiles.
        let mut seen: Vec<(Template, usize)> = Vec::new();
        for (index, template) in templates.iter().enumerate() {
            let field = fields.get(index).cloned().unwrap_or_else(|| format!("public_paths[{index}]"));
            let error = |message: String| ConfigError { field: field.clone(), message };
            let compiled = Template::parse(template).map_err(|m| error(format!("{template:?}{m}")))?;
            let owner = match seen.iter().find(|(t, _)| *t == compiled) {
                Some((_, owner)) => *owner,
                None => {
                    seen.push((compiled.clone(), index));
                    index
                }
            };
            paths.owners.push(owner);
            if owner != index {
                continue; // A duplicate adds nothing.
            }
            let (router, routes) = match compiled {
                Template::Prefix(route) => {
                    let routes = vec![format!("{route}/"), format!("{route}/{{*rest}}"), route];
                    (&mut paths.forward, routes)
                }
                Template::Exact(route) => (&mut paths.forward, vec![format!("{route}/"), route]),
                Template::Strict(route) => (&mut paths.forward, vec![route]),
                Template::Suffix(reversed, ending) => {
                    paths.has_reverse = true;
                    let end = reversed.trim_start_matches('/').split('/').next().unwrap_or_default();
                    match (&mut paths.suffix_ends, end.starts_with('{')) {
                        (_, true) => paths.suffix_ends = None,
                        (Some(ends), false) if !ends.iter().any(|e| e == end) => ends.push(end.to_string()),
                        _ => {}
                    }
                    // reversed_segments turns a trailing `/` into a leading one.
                    let bare = format!("{reversed}/{{*prefix}}");
                    let routes = match ending {
                        Ending::Either => vec![format!("/{bare}"), bare],
                        Ending::Bare => vec![bare],
                        Ending::Slash => vec![format!("/{bare}")],
                    };
                    (&mut paths.reverse, routes)
                }
            };
            for route in routes {
                router.insert(route, index).map_err(|e| {
                    error(format!("{template:?} overlaps another public path ({e}); keep the broader one"))
                })?;
            }
        }
        Ok(paths)
    }

    /// The template that makes `target` (a raw `:path`) public, if any.
    pub fn find(&self, target: &[u8]) -> Option<&str> {
        self.find_index(target).and_then(|index| self.template(index))
    }

    /// The template at `index`, as written.
    pub fn template(&self, index: usize) -> Option<&str> {
        self.templates.get(index).map(String::as_str)
    }

    /// The position (in the list compiled) of the template that makes `target` public.
    pub fn find_index(&self, target: &[u8]) -> Option<usize> {
        match self.classify(target) {
            PathMatch::Public(index) => Some(index),
            PathMatch::Protected | PathMatch::NotCanonical => None,
        }
    }

    /// Where `target` (a raw `:path`) stands: public by a template, canonical but
    /// protected, or not canonical (protected, and read differently by some parser).
    pub fn classify(&self, target: &[u8]) -> PathMatch {
        match canonical_path(target) {
            None => PathMatch::NotCanonical,
            Some(path) => self.template_of(path).map_or(PathMatch::Protected, PathMatch::Public),
        }
    }

    /// The template that covers `path`, a path already normalised (starting with `/`,
    /// no empty segment; it may hold any other byte, dot segments included): the
    /// public-path match without the canonical-form check, for the deny side of the
    /// access rules, which asks where each reading of a non-canonical target falls.
    #[inline]
    pub fn template_of(&self, path: &str) -> Option<usize> {
        match self.forward.at(path) {
            Ok(found) => Some(*found.value),
            Err(_) if self.may_end_a_suffix(path) => Some(*self.reverse.at(&reversed_segments(path)).ok()?.value),
            Err(_) => None,
        }
    }

    /// Whether a `{prefix}` template could match `path` (canonical), judged by its last
    /// segment (one trailing `/` aside, as [`reversed_segments`] does).
    fn may_end_a_suffix(&self, path: &str) -> bool {
        if !self.has_reverse {
            return false;
        }
        let Some(ends) = &self.suffix_ends else { return true };
        let body = path.strip_suffix('/').unwrap_or(path);
        let last = body.rsplit('/').next().unwrap_or_default();
        ends.iter().any(|end| end == last)
    }

    /// Another template that compiles the same as template `index` (`/hooks` and
    /// `/hooks/`): only one of them is ever matched.
    pub fn same_as(&self, index: usize) -> Option<usize> {
        let owner = *self.owners.get(index)?;
        if owner != index {
            return Some(owner);
        }
        self.owners.iter().enumerate().find(|&(i, &o)| o == index && i != index).map(|(i, _)| i)
    }

    pub fn is_public(&self, target: &[u8]) -> bool {
        self.find(target).is_some()
    }
}

/// A validated template as matchit routes: parameters renamed by position so that
/// `/a/{x}` and `/a/{y}` are the same route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Template {
    /// Route for the forward router (`/hooks`, `/api/{p1}/x`), and everything below it.
    Prefix(String),
    /// Route for the forward router, only itself (`=/api/events/out`), one trailing `/`
    /// aside.
    Exact(String),
    /// Route for the forward router, byte for byte: `==/api/health` (not `/api/health/`).
    Strict(String),
    /// Segments after a leading `{prefix}`, reversed (`/out/events`), and how the path
    /// may end.
    Suffix(String, Ending),
}

/// How a path matched by a `{prefix}` template may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// With or without one trailing `/` (`/{prefix}/events/out`).
    Either,
    /// Without (`==/{prefix}/events/out`).
    Bare,
    /// With (`==/{prefix}/events/out/`).
    Slash,
}

impl Template {
    /// On error, the message follows the quoted template.
    fn parse(template: &str) -> Result<Template, String> {
        if let Some(strict) = template.strip_prefix("==") {
            if strict == "/" {
                return Ok(Template::Strict(strict.to_string()));
            }
            let slash = strict.ends_with('/');
            return match Template::parse(strict)? {
                Template::Prefix(route) if slash => Ok(Template::Strict(format!("{route}/"))),
                Template::Prefix(route) => Ok(Template::Strict(route)),
                Template::Suffix(reversed, _) => {
                    Ok(Template::Suffix(reversed, if slash { Ending::Slash } else { Ending::Bare }))
                }
                Template::Exact(_) | Template::Strict(_) => Err(": '=' (exact) or '==' (strict), not more".into()),
            };
        }
        if let Some(exact) = template.strip_prefix('=') {
            return match Template::parse(exact)? {
                Template::Prefix(route) => Ok(Template::Exact(route)),
                Template::Suffix(..) => {
                    Err(": '=' (exact) and {prefix} (any prefix) exclude each other; '==' takes both".into())
                }
                Template::Exact(_) | Template::Strict(_) => Err(": '=' (exact) or '==' (strict), not more".into()),
            };
        }
        let Some(body) = template.strip_prefix('/') else {
            return Err(" must start with '/'".into());
        };
        let body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            return Err(" would make every path public".into());
        }
        let mut segments = Vec::new();
        for (i, segment) in body.split('/').enumerate() {
            if segment.contains(['{', '}']) {
                let name = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
                let name = name.ok_or(": a {parameter} must be a whole segment")?;
                if name.starts_with('*') {
                    return Err(": {*catch-all} is implied (every public path covers what is below it)".into());
                }
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(": parameter names are letters, digits and '_'".into());
                }
                if name == "prefix" && i > 0 {
                    return Err(": {prefix} may only be the first segment".into());
                }
                segments.push(if name == "prefix" { "{prefix}".to_string() } else { format!("{{p{i}}}") });
            } else if segment.is_empty() || segment.bytes().all(|b| b == b'.') {
                return Err(" has an empty, '.' or '..' segment".into());
            } else if !segment.bytes().all(is_canonical_byte) {
                return Err(
                    " has a character that is never public ('%', ';', '\\', spaces, controls or non-ASCII)".into()
                );
            } else {
                segments.push(segment.to_string());
            }
        }
        if segments[0] == "{prefix}" {
            if segments.len() == 1 {
                return Err(": {prefix} must be followed by at least one segment".into());
            }
            let rest: Vec<&str> = segments[1..].iter().rev().map(String::as_str).collect();
            Ok(Template::Suffix(format!("/{}", rest.join("/")), Ending::Either))
        } else {
            Ok(Template::Prefix(format!("/{}", segments.join("/"))))
        }
    }
}

/// RFC 3986 `pchar` without `%` (escapes) and `;` (path parameters), plus `/`.
fn is_canonical_byte(b: u8) -> bool {
    CANONICAL[b as usize]
}

/// [`is_canonical_byte`] as a table: every byte of every path is looked up (a table beats the branches, measured with
/// `make bench-callgrind`).
const CANONICAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,=:@/";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// The path of `target` if it is canonical (see the module docs), else `None`.
pub fn canonical_path(target: &[u8]) -> Option<&str> {
    let end = target.iter().position(|&b| b == b'?').unwrap_or(target.len());
    let path = &target[..end];
    let body = path.strip_prefix(b"/")?;
    let body = body.strip_suffix(b"/").unwrap_or(body);
    // One pass over the segments (every request's path): canonical bytes only, no empty
    // and no dot-only segment. `/` and the two slashes around `body` are canonical.
    if !body.is_empty() {
        let (mut len, mut dots) = (0, true);
        for &b in body {
            if b == b'/' {
                if len == 0 || dots {
                    return None;
                }
                (len, dots) = (0, true);
            } else if is_canonical_byte(b) {
                (len, dots) = (len + 1, dots && b == b'.');
            } else {
                return None;
            }
        }
        if len == 0 || dots {
            return None;
        }
    }
    debug_assert!(path.iter().all(|&b| is_canonical_byte(b)));
    // SAFETY: `path` is `/`, `body` (checked above: canonical bytes only) and maybe `/`:
    // ASCII, hence UTF-8, without a second pass over it.
    Some(unsafe { std::str::from_utf8_unchecked(path) })
}

/// `/a/b/c` -> `/c/b/a`, `/a/b/c/` -> `//c/b/a`: the form `{prefix}` templates are routed
/// in; the trailing `/`, kept as a leading one, tells `==` templates' endings apart.
fn reversed_segments(path: &str) -> String {
    let body = path.trim_start_matches('/');
    let mut out = String::with_capacity(path.len() + 2);
    let body = match body.strip_suffix('/') {
        Some(body) => {
            out.push('/');
            body
        }
        None => body,
    };
    for segment in body.rsplit('/') {
        out.push('/');
        out.push_str(segment);
    }
    out
}

/// A request target of tests/data/paths.tsv: `\xHH` stands for one raw byte.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn table_target(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"\\x") && i + 4 <= bytes.len() {
            out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn compile(templates: &[&str]) -> PublicPaths {
        let templates: Vec<String> = templates.iter().map(|s| s.to_string()).collect();
        PublicPaths::compile(&templates, &[]).unwrap()
    }

    fn unescape(text: &str) -> Vec<u8> {
        table_target(text)
    }

    /// The shared hostile-path table, also replayed through a real Envoy by tests/.
    #[test]
    fn path_table() {
        let paths = compile(&DEFAULT_PUBLIC_PATHS);
        let table = include_str!("../../../tests/data/paths.tsv");
        let mut rows = 0;
        let mut protected = 0;
        for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            assert!(cols.len() >= 2, "bad row: {line:?}");
            let target = unescape(cols[1]);
            let expected = match cols[0] {
                "public" => true,
                "protected" => false,
                other => panic!("bad expectation {other:?} in {line:?}"),
            };
            assert_eq!(paths.is_public(&target), expected, "{} ({})", cols[1], cols.get(2).unwrap_or(&""));
            rows += 1;
            protected += usize::from(!expected);
        }
        assert!(protected >= 30, "the table must keep at least 30 protected rows, has {protected}");
        assert!(rows >= 60, "{rows}");
    }

    /// The Prefect preset's public paths, as shipped.
    fn preset_paths() -> PublicPaths {
        let preset: serde_json::Value =
            serde_json::from_str(include_str!("../../../envoy/presets/prefect.json")).unwrap();
        let templates: Vec<String> =
            preset["public_paths"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        PublicPaths::compile(&templates, &[]).unwrap()
    }

    /// tests/data/paths_prefix.tsv: Prefect's public-path list (column 0) and the preset (column 1).
    #[test]
    fn prefix_table_against_both_templates() {
        let seed = compile(&DEFAULT_PUBLIC_PATHS);
        let tight = preset_paths();
        let table = include_str!("../../../tests/data/paths_prefix.tsv");
        let mut differ = 0;
        for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            assert!(cols.len() >= 3, "bad row: {line:?}");
            let target = unescape(cols[2]);
            for (paths, expected, which) in [(&seed, cols[0], "Prefect's list"), (&tight, cols[1], "preset")] {
                assert!(expected == "public" || expected == "protected", "bad expectation in {line:?}");
                assert_eq!(paths.is_public(&target), expected == "public", "{which}: {}", cols[2]);
            }
            differ += usize::from(cols[0] != cols[1]);
        }
        assert!(differ >= 10, "{differ}");
    }

    /// tests/data/paths.tsv holds for the preset's templates too.
    #[test]
    fn path_table_against_the_preset() {
        let tight = preset_paths();
        let table = include_str!("../../../tests/data/paths.tsv");
        for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(tight.is_public(&unescape(cols[1])), cols[0] == "public", "{}", cols[1]);
        }
    }

    #[test]
    fn exact_templates() {
        let paths = compile(&["=/api/events/out", "=/api/accounts/{a}/workspaces/{w}/events/out", "/hooks"]);
        assert!(paths.is_public(b"/api/events/out"));
        assert!(paths.is_public(b"/api/events/out/"));
        assert!(paths.is_public(b"/api/events/out?x=1"));
        assert!(!paths.is_public(b"/api/events/out/x"));
        assert!(!paths.is_public(b"/api/events/outx"));
        assert!(paths.is_public(b"/api/accounts/1/workspaces/2/events/out"));
        assert!(!paths.is_public(b"/api/accounts/1/workspaces/2/events/out/x"));
        assert!(!paths.is_public(b"/api/admin/settings/events/out"));
        assert_eq!(paths.find(b"/api/events/out"), Some("=/api/events/out"));
        assert!(paths.is_public(b"/hooks/x"), "prefix templates still cover what is below them");
        // An exact template below a prefix one adds nothing, and is allowed.
        assert!(compile(&["/hooks", "=/hooks/a"]).is_public(b"/hooks/a/b"));
    }

    #[test]
    fn exact_template_errors() {
        for (template, message) in [
            (
                "=/{prefix}/events/out",
                "\"=/{prefix}/events/out\": '=' (exact) and {prefix} (any prefix) exclude each other; '==' takes both",
            ),
            ("===/a", "\"===/a\": '=' (exact) or '==' (strict), not more"),
            ("====/a", "\"====/a\": '=' (exact) or '==' (strict), not more"),
            ("==api", "\"==api\" must start with '/'"),
            ("==//", "\"==//\" would make every path public"),
            ("==/a//", "\"==/a//\" has an empty, '.' or '..' segment"),
            ("==/{prefix}", "\"==/{prefix}\": {prefix} must be followed by at least one segment"),
            ("=api", "\"=api\" must start with '/'"),
            ("=/", "\"=/\" would make every path public"),
        ] {
            let err = PublicPaths::compile(&[template.to_string()], &[]).unwrap_err();
            assert_eq!(err.message, message, "{template}");
        }
        let err = PublicPaths::compile(&["/a".into(), "=/a".into()], &[]).unwrap_err();
        assert!(err.message.contains("overlaps another public path"), "{}", err.message);
    }

    #[test]
    fn strict_templates_count_the_trailing_slash() {
        let paths = compile(&["==/api/health", "==/api/", "==/", "==/a/{id}/b", "/hooks"]);
        for (target, public) in [
            (&b"/api/health"[..], true),
            (b"/api/health?probe=1", true),
            (b"/api/health/", false),
            (b"/api/health/x", false),
            (b"/api/healthz", false),
            (b"/api/", true),
            (b"/api", false),
            (b"/api/x", false),
            (b"/", true),
            (b"//", false),
            (b"/a/1/b", true),
            (b"/a/1/b/", false),
            (b"/a/1/b/c", false),
            (b"/hooks/x", true),
        ] {
            assert_eq!(paths.is_public(target), public, "{}", String::from_utf8_lossy(target));
        }
        assert_eq!(paths.find(b"/api/health"), Some("==/api/health"));
        // A strict and an exact template of one path are not the same route set.
        assert!(compile(&["==/x", "==/x/", "/x/{any}"]).is_public(b"/x/y/z"));
        let err = PublicPaths::compile(&["=/x".into(), "==/x".into()], &[]).unwrap_err();
        assert!(err.message.contains("overlaps another public path"), "{}", err.message);
    }

    #[test]
    fn strict_suffix_templates_count_the_trailing_slash() {
        let bare = compile(&["==/{prefix}/events/out", "==/{prefix}/flows/{id}"]);
        let slash = compile(&["==/{prefix}/events/out/"]);
        let either = compile(&["/{prefix}/events/out"]);
        for (target, bare_public, slash_public, either_public) in [
            (&b"/api/events/out"[..], true, false, true),
            (b"/api/events/out/", false, true, true),
            (b"/a/b/c/events/out", true, false, true),
            (b"/a/b/c/events/out/", false, true, true),
            (b"/events/out", false, false, false),
            (b"/api/events/out/x", false, false, false),
            (b"/api/events/outx", false, false, false),
            (b"/api/events/out//", false, false, false),
        ] {
            let name = String::from_utf8_lossy(target);
            assert_eq!(bare.is_public(target), bare_public, "bare {name}");
            assert_eq!(slash.is_public(target), slash_public, "slash {name}");
            assert_eq!(either.is_public(target), either_public, "either {name}");
        }
        // An empty segment never stands for a parameter, so `//` (a trailing slash,
        // reversed) cannot pass for `{id}`.
        assert!(bare.is_public(b"/api/flows/1"));
        assert!(!bare.is_public(b"/api/flows/1/"));
        let err = PublicPaths::compile(&["/{prefix}/out".into(), "==/{prefix}/out".into()], &[]).unwrap_err();
        assert!(err.message.contains("overlaps another public path"), "{}", err.message);
        assert!(compile(&["==/{prefix}/out", "==/{prefix}/out/"]).is_public(b"/a/out/"));
    }

    #[test]
    fn find_names_the_template() {
        let paths = compile(&DEFAULT_PUBLIC_PATHS);
        assert_eq!(paths.find(b"/hooks/abc"), Some("/hooks"));
        assert_eq!(paths.find(b"/api/x/events/out"), Some("/{prefix}/events/out"));
        assert_eq!(paths.find(b"/api/flows"), None);
    }

    #[test]
    fn parameters_match_one_segment() {
        let paths =
            compile(&["/api/accounts/{account}/workspaces/{workspace}/ui-settings", "/{prefix}/flows/{id}/graph"]);
        assert!(paths.is_public(b"/api/accounts/a/workspaces/w/ui-settings"));
        assert!(paths.is_public(b"/api/accounts/a/workspaces/w/ui-settings/x"));
        assert!(!paths.is_public(b"/api/accounts/a/b/workspaces/w/ui-settings"));
        assert!(paths.is_public(b"/api/x/flows/123/graph"));
        assert!(!paths.is_public(b"/api/x/flows/123/graph/more"));
        assert!(!paths.is_public(b"/flows/123/graph"));
    }

    #[test]
    fn suffix_templates_are_skipped_only_by_their_last_segment() {
        let literal = compile(&["/{prefix}/events/out", "/{prefix}/task_runs/subscriptions/scheduled"]);
        assert_eq!(literal.suffix_ends, Some(vec!["out".to_string(), "scheduled".to_string()]));
        assert!(!literal.may_end_a_suffix("/api/flows"));
        assert!(literal.may_end_a_suffix("/api/events/out/"), "one trailing slash aside");
        assert!(literal.is_public(b"/api/events/out/"));
        assert!(literal.is_public(b"/a/b/task_runs/subscriptions/scheduled"));
        assert!(!literal.is_public(b"/api/events/outx"));
        // A template ending with a parameter can end with any segment.
        let any = compile(&["/{prefix}/events/out", "/{prefix}/flows/{id}"]);
        assert_eq!(any.suffix_ends, None);
        assert!(any.is_public(b"/api/flows/123"));
        assert!(any.is_public(b"/api/events/out"));
        assert!(!compile(&["/hooks"]).may_end_a_suffix("/hooks/out"), "no suffix template at all");
    }

    #[test]
    fn overlapping_and_duplicate_templates() {
        let paths = compile(&["/hooks", "/hooks/", "/hooks", "/hooks/special"]);
        assert!(paths.is_public(b"/hooks/special/x"));
        assert!(paths.is_public(b"/hooks/other"));
        let err = PublicPaths::compile(&["/{prefix}/out".into(), "/{prefix}/{id}/out".into()], &[]).unwrap_err();
        assert_eq!(err.field, "public_paths[1]");
        assert!(err.message.contains("overlaps another public path"), "{}", err.message);
    }

    #[test]
    fn no_templates_means_nothing_is_public() {
        let paths = compile(&[]);
        assert!(!paths.is_public(b"/api/health"));
    }

    #[test]
    fn canonical_form() {
        assert_eq!(canonical_path(b"/a/b?x=/../"), Some("/a/b"));
        assert_eq!(canonical_path(b"/"), Some("/"));
        assert_eq!(canonical_path(b"/a/"), Some("/a/"));
        assert_eq!(canonical_path(b"/a/.../b"), None, "dot-only segments are never canonical");
        assert_eq!(canonical_path(b"/a/.b"), Some("/a/.b"));
        assert_eq!(canonical_path(b""), None);
        assert_eq!(canonical_path(b"?/hooks"), None);
        assert_eq!(canonical_path(b"//"), Some("//"), "one trailing slash after the root");
        for path in [&b"///"[..], b"/a//b", b"/a/./b", b"/a/..", b"/a/../", b"/a%2fb", b"/a b", b"a/b", b"/a/\xff"] {
            assert_eq!(canonical_path(path), None, "{}", String::from_utf8_lossy(path));
        }
        assert_eq!(canonical_path(b"/a/b./c/"), Some("/a/b./c/"));
    }

    #[test]
    fn reversal() {
        assert_eq!(reversed_segments("/a/b/c"), "/c/b/a");
        assert_eq!(reversed_segments("/a/b/c/"), "//c/b/a");
        assert_eq!(reversed_segments("/a"), "/a");
    }
}
