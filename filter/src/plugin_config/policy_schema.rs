//! The schema: what loads, what is refused (naming the field), and the defaults that
//! change with `policies`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::plugin_config::Settings;

fn load(json: &str) -> Result<Settings, String> {
    Settings::from_json(json.as_bytes()).map_err(|e| e.to_string())
}

const RULE: &str = r#"{"to": [{"operation": {"paths": ["/api/*"]}}]}"#;

#[test]
fn the_auth_block_and_one_named_provider_load() {
    let s = load(r#"{"auth": {"cluster": "a"}}"#).unwrap();
    assert_eq!(s.provider_names, vec!["auth"]);
    assert!(s.selection.is_none());
    assert!(s.public.is_public(b"/api/health"), "without policies: Prefect's public paths");
    let s = load(&format!(
        r#"{{"providers": [{{"name": "authz-http", "cluster": "x", "timeout_ms": 250}}],
            "policies": [{{"name": "prefect/ext-authz", "provider": "authz-http", "rules": [{RULE}]}}]}}"#
    ))
    .unwrap();
    assert_eq!((s.provider_names.as_slice(), s.auth.cluster.as_str()), (&["authz-http".to_string()][..], "x"));
    assert_eq!(s.auth.timeout.as_millis(), 250);
    assert!(!s.public.is_public(b"/api/health"), "with policies: no public path unless listed");
    let s = load(&format!(r#"{{"auth": {{"cluster": "a"}}, "policies": [{{"rules": [{RULE}]}}]}}"#)).unwrap();
    assert_eq!(s.selection.unwrap().policies[0].provider, 0, "the one provider needs no name");
}

#[test]
fn several_providers_load_with_what_only_the_rules_use() {
    let s = load(
        r#"{"providers": [{"name": "a", "cluster": "a"}, {"name": "b", "cluster": "b", "protocol": "ext_authz"}],
            "trusted_proxies": ["10.0.0.0/8"],
            "policies": [{"provider": "b", "rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}]}]}"#,
    )
    .unwrap();
    assert_eq!(s.provider_names, vec!["a", "b"]);
    assert_eq!(s.provider(1).map(|b| b.auth.cluster.as_str()), Some("b"));
    assert!(s.provider(2).is_none());
    assert!(s.several_providers && s.provider(1).unwrap().several_providers);
    assert_eq!(s.selection.unwrap().policies[0].provider, 1);
}

#[test]
fn bad_schemas_name_the_field() {
    let cases = [
        (
            r#"{"auth": {"cluster": "a"}, "providers": [{"name": "p", "cluster": "b"}]}"#,
            "providers: set either auth or providers, not both",
        ),
        (r#"{"providers": []}"#, "providers: is empty: name at least one provider"),
        (r#"{"providers": [{"cluster": "b"}]}"#, "providers[0].name: missing: each provider needs a name"),
        (r#"{"providers": [{"name": "p", "clustr": "b"}]}"#, "providers[0].clustr: unknown field `clustr`"),
        (r#"{"providers": [{"name": "p", "cluster": "b", "timeout_ms": 0}]}"#, "providers[0].timeout_ms"),
        (
            r#"{"providers": [{"name": "p", "cluster": "b"}, {"name": "p", "cluster": "c"}]}"#,
            "providers[1].name: \"p\" names two providers",
        ),
        (
            r#"{"providers": [{"name": "p", "cluster": "b"}, {"name": "q", "cluster": "c"}]}"#,
            "providers: several providers need policies",
        ),
        (r#"{"providers": ["x"]}"#, "providers[0]: expected a JSON object, got a string"),
        (
            r#"{"providers": [{"name": "p", "cluster": "b"}, {"name": "q", "cluster": "c", "forward_body": true}], "policies": []}"#,
            "providers[1]: a request body is not sent to several providers",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"provider": "opa"}]}"#,
            "policies[0].provider: \"opa\" is not a provider (providers: auth)",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{}, {"when": [{"key": "experimental.envoy.filters.a.b[c]", "values": ["x"]}]}]}]}"#,
            "policies[0].rules[1].when[0].key: experimental.envoy.filters.a.b[c] cannot be evaluated by the filter",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{"when": [{"key": "source.serviceAccount", "values": ["x"]}]}]}]}"#,
            "policies[0].rules[0].when[0].key: source.serviceAccount cannot be evaluated by the filter",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{"when": [{"key": "source.ip"}]}]}]}"#,
            "policies[0].rules[0].when[0]: needs values or notValues",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{"from": [{"source": {"serviceAccounts": ["a"]}}]}]}]}"#,
            "unknown field `serviceAccounts`",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{"from": [{"source": {"notIpBlocks": ["10.0.0.1/8"]}}]}]}]}"#,
            "policies[0].rules[0].from[0].source.notIpBlocks[0]: \"10.0.0.1/8\" has host bits set",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{"to": [{"operation": {"ports": ["80", "x"]}}]}]}]}"#,
            "policies[0].rules[0].to[0].operation.ports[1]: \"x\" is not a port",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{"to": [{"operation": {"notPaths": ["/{**}/{*}"]}}]}]}]}"#,
            "policies[0].rules[0].to[0].operation.notPaths[0]: \"/{**}/{*}\" has an operator after {**}",
        ),
        (
            r#"{"auth": {"cluster": "a"}, "policies": [{"rules": [{"to": [{"operation": {"methods": [""]}}]}]}]}"#,
            "policies[0].rules[0].to[0].operation.methods[0]: is empty",
        ),
    ];
    for (json, expected) in cases {
        let err = load(json).err().unwrap_or_else(|| panic!("accepted: {json}"));
        assert!(err.contains(expected), "{json}\n  got: {err}\n want: {expected}");
    }
}

#[test]
fn hostname_is_filled_in_for_every_provider() {
    let mut s = load(
        r#"{"providers": [{"name": "a", "cluster": "a"},
                          {"name": "b", "cluster": "b", "protocol": "ext_authz", "headers_to_add": {"x-host": "%HOSTNAME%"}}],
            "policies": [{"provider": "b", "rules": [{}]}]}"#,
    )
    .unwrap();
    let err = s.resolve_hostname(None).unwrap_err().to_string();
    assert!(err.contains("providers[1].headers_to_add.x-host"), "{err}");
    s.resolve_hostname(Some("pod-7")).unwrap();
    let added = format!("{:?}", s.provider(1).unwrap().auth.ext_authz.headers_to_add);
    assert!(added.contains("pod-7") && !added.contains("Hostname"), "{added}");
}

#[test]
fn with_policies_a_token_never_authorizes_by_itself() {
    let config = |second_mode: &str| {
        format!(
            r#"{{"auth": {{"cluster": "a"}}, "policies": [{{"rules": [{RULE}]}}],
                "jwt": {{"mode": "local_then_callout", "providers": [
                    {{"issuer": "https://a", "secret": "0123456789abcdef0123456789abcdef"}},
                    {{"issuer": "https://b", "secret": "0123456789abcdef0123456789abcdef"{second_mode}}}]}}}}"#
        )
    };
    load(&config("")).unwrap();
    let err = load(&config(r#", "mode": "local""#)).err().unwrap();
    assert!(err.contains("jwt.providers[1].mode: is local"), "{err}");
    // Without policies, `local` is the token deciding alone, as documented.
    load(&config(r#", "mode": "local""#).replace(&format!(r#""policies": [{{"rules": [{RULE}]}}],"#), "")).unwrap();
}
