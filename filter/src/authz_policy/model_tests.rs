//! The rule matcher against an independent model of Istio's matching, over generated
//! rules and requests. The model renders each rule value the way istiod does for
//! Envoy's RBAC (pilot/pkg/security/authz/model/generator.go and matcher/: a regex, a
//! prefix/suffix/exact string match, a CIDR), and combines them as model.go does, with
//! regexes (regex-lite) rather than the matcher's own code.
//!
//! Properties: on a request whose path and host are canonical (no trailing slash, no
//! port), the filter selects exactly what Istio selects; on any other spelling of a
//! request Istio selects, the filter selects it too (the safe side).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The model slices as istiod's Go does (`strings.TrimPrefix` after `HasPrefix`).
#![allow(clippy::manual_strip)]

use std::net::{IpAddr, Ipv4Addr};

use regex_lite::Regex;
use serde_json::{json, Map, Value};

use crate::authz_policy::policy_config::RawRule;
use crate::authz_policy::request_facts::{Connection, RequestFacts};
use crate::authz_policy::rule::Rule;

/// xorshift64*: the runs are reproducible from the seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn some<'a>(&mut self, items: &[&'a str]) -> Vec<&'a str> {
        (0..1 + self.below(3)).map(|_| self.pick(items)).collect()
    }
}

// The vocabulary: requests and values drawn from the same small sets, so they meet.
const SEGMENTS: &[&str] = &["api", "admin", "flows", "ui", "x.js", "health", "a"];
const HOSTS: &[&str] = &["prefect.example.com", "api.example.com", "Prefect.Example.com", "other.org"];
const METHODS: &[&str] = &["GET", "POST", "DELETE", "get"];
const PORTS: &[u16] = &[8080, 9090, 443];
const PRINCIPALS: &[&str] = &[
    "spiffe://cluster.local/ns/prefect/sa/web",
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway",
    "spiffe://other.td/ns/prefect/sa/worker",
];
const ISSUERS: &[&str] = &["https://idp.example/realms/a", "issuer"];
const SUBJECTS: &[&str] = &["alice", "bob"];
const IPS: &[&str] = &["10.0.0.7", "10.1.2.3", "192.168.1.9"];

const PATH_VALUES: &[&str] = &[
    "/api/flows",
    "/api/*",
    "*/health",
    "*",
    "/ui",
    "/admin/*",
    "*.js",
    "/api/{*}",
    "/{*}/flows",
    "/api/{**}",
    "/{**}/health",
    "/a/{*}/{**}",
];
const HOST_VALUES: &[&str] = &["prefect.example.com", "*.example.com", "prefect.*", "*", "PREFECT.example.com"];
const METHOD_VALUES: &[&str] = &["GET", "POST", "G*", "*T", "*"];
const PORT_VALUES: &[&str] = &["8080", "443"];
const PRINCIPAL_VALUES: &[&str] =
    &["cluster.local/ns/prefect/sa/web", "cluster.local/ns/istio-system/*", "*/sa/worker", "*", "other.td/*"];
const NAMESPACE_VALUES: &[&str] = &["prefect", "istio-*", "*", "*system"];
const REQUEST_PRINCIPAL_VALUES: &[&str] =
    &["https://idp.example/realms/a/alice", "issuer/*", "*/bob", "*", "https://idp.example/realms/a/*"];
const CIDR_VALUES: &[&str] = &["10.0.0.0/8", "10.0.0.7", "192.168.0.0/16", "10.1.0.0/16"];
const TENANT_VALUES: &[&str] = &["acme", "ac*", "*me", "*"];

#[derive(Debug, Clone)]
struct Req {
    path: String,
    authority: String,
    method: String,
    port: u16,
    principal: Option<String>,
    source: IpAddr,
    claims: Option<(String, String)>,
    /// `x-tenant`, once per value (none, one, or a repeated header).
    tenants: Vec<String>,
}

fn gen_request(g: &mut Gen) -> Req {
    let depth = 1 + g.below(3);
    let path: String = (0..depth).map(|_| format!("/{}", g.pick(SEGMENTS))).collect();
    Req {
        path,
        authority: g.pick(HOSTS).to_string(),
        method: g.pick(METHODS).to_string(),
        port: PORTS[g.below(PORTS.len())],
        principal: g.chance(70).then(|| g.pick(PRINCIPALS).to_string()),
        source: g.pick(IPS).parse().unwrap(),
        claims: g.chance(60).then(|| (g.pick(ISSUERS).to_string(), g.pick(SUBJECTS).to_string())),
        tenants: (0..[0, 0, 1, 1, 2][g.below(5)])
            .map(|_| g.pick(&["acme", "globex", "", "acme,globex"]).to_string())
            .collect(),
    }
}

/// A field with values, `not` values, or both (Istio's `values`/`notValues`).
fn field(g: &mut Gen, rule: &mut Map<String, Value>, name: &str, vocabulary: &[&str]) {
    let not = format!("not{}{}", name[..1].to_ascii_uppercase(), &name[1..]);
    match g.below(4) {
        0 => {
            rule.insert(name.into(), json!(g.some(vocabulary)));
        }
        1 => {
            rule.insert(not, json!(g.some(vocabulary)));
        }
        2 => {
            rule.insert(name.into(), json!(g.some(vocabulary)));
            rule.insert(not, json!(g.some(vocabulary)));
        }
        _ => {}
    }
}

fn gen_rule(g: &mut Gen) -> Value {
    let mut rule = Map::new();
    if g.chance(60) {
        let to: Vec<Value> = (0..1 + g.below(2))
            .map(|_| {
                let mut op = Map::new();
                for _ in 0..1 + g.below(2) {
                    match g.below(4) {
                        0 => field(g, &mut op, "paths", PATH_VALUES),
                        1 => field(g, &mut op, "hosts", HOST_VALUES),
                        2 => field(g, &mut op, "methods", METHOD_VALUES),
                        _ => field(g, &mut op, "ports", PORT_VALUES),
                    }
                }
                json!({ "operation": op })
            })
            .collect();
        rule.insert("to".into(), json!(to));
    }
    if g.chance(50) {
        let from: Vec<Value> = (0..1 + g.below(2))
            .map(|_| {
                let mut source = Map::new();
                match g.below(4) {
                    0 => field(g, &mut source, "principals", PRINCIPAL_VALUES),
                    1 => field(g, &mut source, "namespaces", NAMESPACE_VALUES),
                    2 => field(g, &mut source, "requestPrincipals", REQUEST_PRINCIPAL_VALUES),
                    _ => field(g, &mut source, "ipBlocks", CIDR_VALUES),
                }
                json!({ "source": source })
            })
            .collect();
        rule.insert("from".into(), json!(from));
    }
    if g.chance(40) {
        let when = match g.below(3) {
            0 => {
                let mut c = Map::new();
                c.insert("key".into(), json!("request.headers[x-tenant]"));
                field(g, &mut c, "values", TENANT_VALUES);
                if c.len() == 1 {
                    c.insert("notValues".into(), json!(g.some(TENANT_VALUES)));
                }
                Value::Object(c)
            }
            1 => json!({ "key": "destination.port", "notValues": g.some(PORT_VALUES) }),
            _ => json!({ "key": "source.principal", "values": g.some(PRINCIPAL_VALUES) }),
        };
        rule.insert("when".into(), json!([when]));
    }
    Value::Object(rule)
}

// ---- The model: Istio's rendering, as regexes and plain comparisons. ----

fn full(regex: &str) -> Regex {
    Regex::new(&format!("^(?:{regex})$")).unwrap()
}

/// `matcher.StringMatcherWithPrefix(v, prefix)` as a regex (`ci`: `ignore_case`).
fn string_matcher(v: &str, prefix: &str, ci: bool) -> Regex {
    let q = regex_lite::escape;
    let flags = if ci { "(?i)" } else { "" };
    let r = if v == "*" {
        ".+".to_string()
    } else if let Some(s) = v.strip_prefix('*') {
        format!("{}.*{}", q(prefix), q(s))
    } else if let Some(p) = v.strip_suffix('*') {
        format!("{}{}.*", q(prefix), q(p))
    } else {
        format!("{}{}", q(prefix), q(v))
    };
    full(&format!("{flags}{r}"))
}

/// `HeaderMatcher`/`HostMatcher`: `*` is present_match (an empty value too).
fn header_matcher(v: &str, value: Option<&str>, ci: bool) -> bool {
    match value {
        None => false,
        Some(_) if v == "*" => true,
        Some(text) => string_matcher(v, "", ci).is_match(text),
    }
}

/// Envoy's uri_template for Istio's `{*}`/`{**}` (pilot matcher/template.go).
fn path_matcher(v: &str, path: &str) -> bool {
    if v.contains("{*}") || v.contains("{**}") {
        let pchar = "[a-zA-Z0-9\\-._~%!$&'()+,;:@=]";
        let mut regex = String::new();
        let mut rest = v;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("{**}") {
                regex.push_str(&format!("(?:{pchar}|/)*"));
                rest = r;
            } else if let Some(r) = rest.strip_prefix("{*}") {
                regex.push_str(&format!("{pchar}+"));
                rest = r;
            } else {
                let c = rest.chars().next().unwrap();
                regex.push_str(&regex_lite::escape(&c.to_string()));
                rest = &rest[c.len_utf8()..];
            }
        }
        return full(&regex).is_match(path);
    }
    string_matcher(v, "", false).is_match(path)
}

fn cidr(v: &str, ip: IpAddr) -> bool {
    let (net, len) = v.split_once('/').unwrap_or((v, "32"));
    let (net, len): (Ipv4Addr, u32) = (net.parse().unwrap(), len.parse().unwrap());
    let IpAddr::V4(ip) = ip else { return false };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn request_principal(v: &str, claims: Option<&(String, String)>) -> bool {
    let Some((iss, sub)) = claims else { return false };
    let any = ".+".to_string();
    let q = regex_lite::escape;
    let (i, s) = match v.rfind('/') {
        Some(at) => (&v[..at], Some(&v[at + 1..])),
        None => (v, None),
    };
    let (ri, rs) = if v == "*" {
        (any.clone(), any)
    } else if v.starts_with('*') {
        match s {
            Some(s) if i == "*" => (any, q(s)),
            Some(s) => (format!(".*{}", q(&i[1..])), q(s)),
            None => (any, format!(".*{}", q(&v[1..]))),
        }
    } else if v.ends_with('*') {
        match s {
            Some("*") => (q(i), any),
            Some(s) => (q(i), format!("{}.*", q(&s[..s.len() - 1]))),
            None => (format!("{}.*", q(&v[..v.len() - 1])), any),
        }
    } else {
        (q(i), q(s.unwrap_or_default()))
    };
    full(&ri).is_match(iss) && full(&rs).is_match(sub)
}

/// One field: any of `values` (if given) and none of `notValues`.
fn either(rule: &Map<String, Value>, name: &str, mut matches: impl FnMut(&str) -> bool) -> bool {
    let not = format!("not{}{}", name[..1].to_ascii_uppercase(), &name[1..]);
    let list = |k: &str| -> Vec<String> {
        rule.get(k).and_then(Value::as_array).map_or(vec![], |a| a.iter().map(|v| v.as_str().unwrap().into()).collect())
    };
    let (values, nots) = (list(name), list(&not));
    (values.is_empty() || values.iter().any(|v| matches(v))) && !nots.iter().any(|v| matches(v))
}

fn model(rule: &Value, r: &Req) -> bool {
    let principal = r.principal.as_deref();
    let to = rule.get("to").and_then(Value::as_array).cloned().unwrap_or_default();
    let from = rule.get("from").and_then(Value::as_array).cloned().unwrap_or_default();
    let when = rule.get("when").and_then(Value::as_array).cloned().unwrap_or_default();
    let operation = |t: &Value| {
        let op = t["operation"].as_object().unwrap();
        either(op, "paths", |v| path_matcher(v, &r.path))
            && either(op, "hosts", |v| header_matcher(v, Some(&r.authority), true))
            && either(op, "methods", |v| header_matcher(v, Some(&r.method), false))
            && either(op, "ports", |v| v.parse::<u16>().unwrap() == r.port)
    };
    let source = |f: &Value| {
        let s = f["source"].as_object().unwrap();
        either(s, "principals", |v| principal.is_some_and(|p| string_matcher(v, "spiffe://", false).is_match(p)))
            && either(s, "namespaces", |v| {
                let ns = v.split('*').map(regex_lite::escape).collect::<Vec<_>>().join(".*");
                principal.is_some_and(|p| full(&format!(".*/ns/{ns}/.*")).is_match(p))
            })
            && either(s, "requestPrincipals", |v| request_principal(v, r.claims.as_ref()))
            && either(s, "ipBlocks", |v| cidr(v, r.source))
    };
    let condition = |c: &Value| {
        let c = c.as_object().unwrap();
        match c["key"].as_str().unwrap() {
            // Envoy 1.40's RBAC: each value of a repeated header on its own (measured).
            "request.headers[x-tenant]" => {
                either(c, "values", |v| r.tenants.iter().any(|t| header_matcher(v, Some(t), false)))
            }
            "destination.port" => either(c, "values", |v| v.parse::<u16>().unwrap() == r.port),
            "source.principal" => {
                either(c, "values", |v| principal.is_some_and(|p| string_matcher(v, "spiffe://", false).is_match(p)))
            }
            key => panic!("the model has no {key}"),
        }
    };
    (to.is_empty() || to.iter().any(operation))
        && (from.is_empty() || from.iter().any(source))
        && when.iter().all(condition)
}

// ---- The filter's side. ----

struct TestConnection<'a>(&'a Req);

impl Connection for TestConnection<'_> {
    fn source_ip(&mut self) -> Option<IpAddr> {
        Some(self.0.source)
    }
    fn remote_ip(&mut self) -> Option<IpAddr> {
        Some(self.0.source)
    }
    fn principal(&mut self) -> Option<&str> {
        self.0.principal.as_deref()
    }
    fn destination_ip(&mut self) -> Option<IpAddr> {
        None
    }
    fn destination_port(&mut self) -> Option<u16> {
        Some(self.0.port)
    }
    fn sni(&mut self) -> Option<&str> {
        None
    }
}

fn filter_selects(rule: &Rule, r: &Req) -> bool {
    let mut headers: Vec<(&str, &[u8])> =
        vec![(":path", r.path.as_bytes()), (":authority", r.authority.as_bytes()), (":method", r.method.as_bytes())];
    for t in &r.tenants {
        headers.push(("x-tenant", t.as_bytes()));
    }
    let claims = r.claims.as_ref().map(|(iss, sub)| {
        let mut m = Map::new();
        m.insert("iss".into(), json!(iss));
        m.insert("sub".into(), json!(sub));
        m
    });
    let mut facts = RequestFacts::new(&headers, claims.as_ref(), TestConnection(r));
    rule.matches(&mut facts)
}

fn compile(rule: &Value) -> Rule {
    let raw = RawRule::parse("rule", rule).unwrap();
    Rule::compile("rule", raw).unwrap()
}

/// Spellings of a canonical path that a server behind the filter reads as it.
fn respell_path(g: &mut Gen, path: &str) -> String {
    match g.below(6) {
        0 => format!("/x/..{path}"),
        1 => format!("/{path}"),
        2 => path.replacen('a', "%61", 1),
        3 => format!("{path}/"),
        4 => path.replacen('/', "/./", 1),
        _ => format!("{path};v=1"),
    }
}

fn respell_host(g: &mut Gen, host: &str) -> String {
    match g.below(3) {
        0 => format!("{host}:8443"),
        1 => format!("{host}."),
        _ => host.to_ascii_uppercase(),
    }
}

#[test]
fn the_filter_selects_what_istio_selects_on_canonical_requests() {
    let mut g = Gen(0x5eed_1570);
    let (mut selected, mut total, mut repeated_selected) = (0, 0, 0);
    for _ in 0..3000 {
        let rule_json = gen_rule(&mut g);
        let rule = compile(&rule_json);
        for _ in 0..8 {
            let r = gen_request(&mut g);
            let (want, got) = (model(&rule_json, &r), filter_selects(&rule, &r));
            if r.tenants.len() > 1 {
                // A repeated header: the filter also selects what the joined reading
                // of older Envoys selects (the safe side), so only a superset holds.
                assert!(got || !want, "rule {rule_json}\nrequest {r:?}");
                repeated_selected += usize::from(want);
            } else {
                assert_eq!(got, want, "rule {rule_json}\nrequest {r:?}");
            }
            selected += usize::from(want);
            total += 1;
        }
    }
    // The generator must exercise both answers, or the test proves nothing.
    assert!(selected > total / 10 && selected < total * 9 / 10, "{selected} of {total} selected");
    assert!(repeated_selected > 100, "only {repeated_selected} selected requests repeat x-tenant");
}

#[test]
fn every_spelling_of_a_selected_request_is_selected() {
    let mut g = Gen(0xdecaf);
    let mut checked = 0;
    for _ in 0..3000 {
        let rule_json = gen_rule(&mut g);
        let rule = compile(&rule_json);
        for _ in 0..8 {
            let base = gen_request(&mut g);
            if !model(&rule_json, &base) {
                continue;
            }
            let mut spelled = base.clone();
            if g.chance(70) {
                spelled.path = respell_path(&mut g, &base.path);
            }
            if g.chance(50) {
                spelled.authority = respell_host(&mut g, &base.authority);
            }
            assert!(filter_selects(&rule, &spelled), "rule {rule_json}\nselects {base:?}\nbut not {spelled:?}");
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} selected requests");
}

#[test]
fn the_model_and_the_filter_can_disagree() {
    // The harness would notice a wrong filter: a matcher that ignores notPaths.
    let rule_json = json!({"to": [{"operation": {"notPaths": ["/api/*"]}}]});
    let r = Req {
        path: "/api/flows".into(),
        authority: "a".into(),
        method: "GET".into(),
        port: 80,
        principal: None,
        source: "10.0.0.7".parse().unwrap(),
        claims: None,
        tenants: vec![],
    };
    assert!(!model(&rule_json, &r));
    assert!(!filter_selects(&compile(&rule_json), &r));
    assert!(model(&json!({}), &r) && filter_selects(&compile(&json!({})), &r), "{{}} matches every request");
}
