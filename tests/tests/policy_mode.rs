//! Migration from Istio policy mode: scripts/convert_policy.py (`make convert`) turns a
//! policy-mode setup (tests/data/policy-mode/: the mesh config's `authz-http-redirect`
//! ext_authz provider and the AuthorizationPolicy CUSTOM with seed 000's public paths as
//! Istio globs) into a WasmPlugin; the converted config then runs under real Envoy,
//! behind Istio's cluster name, against the hostile path table.

use std::path::PathBuf;
use std::process::{Command, Output};

use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::envoy::Tools;
use nebula_authz_tests::{paths, repo_root, Env, TempDir, NEBULA_HEADERS};

const MESH: &str = "tests/data/policy-mode/meshconfig.yaml";
const POLICY: &str = "tests/data/policy-mode/authorizationpolicy.yaml";
const GOLDEN: &str = "tests/data/policy-mode/wasmplugin.golden.yaml";
const ISTIO_CLUSTER: &str = "outbound|4300||auth.prefect.svc.cluster.local";

fn convert(mesh: &PathBuf, policy: &PathBuf, config_only: bool) -> Output {
    let mut cmd = Command::new(Tools::locate(false).python);
    cmd.arg(repo_root().join("scripts/convert_policy.py")).arg(mesh).arg(policy);
    if config_only {
        cmd.arg("--config-only");
    }
    cmd.output().expect("run scripts/convert_policy.py")
}

fn fixture(path: &str) -> PathBuf {
    repo_root().join(path)
}

fn converted_config() -> serde_json::Value {
    let out = convert(&fixture(MESH), &fixture(POLICY), true);
    assert!(out.status.success(), "conversion failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--config-only prints JSON")
}

#[test]
fn conversion_of_the_policy_mode_fixture_matches_the_golden_wasmplugin() {
    let out = convert(&fixture(MESH), &fixture(POLICY), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "conversion failed: {stderr}");
    let golden = std::fs::read_to_string(fixture(GOLDEN)).expect("read the golden WasmPlugin");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        golden,
        "converter output differs from {GOLDEN} (regenerate it only for an intended change)"
    );
    assert!(stderr.contains("note: */events/out -> /{prefix}/events/out"), "suffix glob note missing: {stderr}");

    let config = converted_config();
    let auth = &config["auth"];
    assert_eq!(auth["host"], "auth.prefect.svc.cluster.local", "service, namespace/ prefix dropped");
    assert_eq!(auth["port"], 4300);
    assert_eq!(auth["timeout_ms"], 5000, "timeout: 5s");
    assert_eq!(auth["protocol"], "ext_authz", "convert emits ext_authz's callout shape");
    assert_eq!(config["status_on_error"], 503, "statusOnError: \"503\"");
    assert_eq!(auth["upstream_headers"], serde_json::json!(["x-nebula-*"]), "headersToUpstreamOnAllow");
    assert_eq!(
        auth["client_headers"],
        serde_json::json!(["www-authenticate", "location", "set-cookie", "content-type"]),
        "headersToDownstreamOnDeny"
    );
    let public: Vec<&str> =
        config["public_paths"].as_array().expect("public_paths").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(public, nebula_authz::policy::route::DEFAULT_PUBLIC_PATHS, "notPaths become seed 000's public paths");
}

#[test]
fn converted_policy_runs_under_envoy_without_bypass() {
    let config = converted_config().to_string();
    let env = Env::builder().plugin_config(&config).auth_cluster_name(ISTIO_CLUSTER).start();

    let (report, failures) = paths::replay(&env);
    assert!(
        failures.is_empty(),
        "converted policy: {} of {} paths.tsv rows misbehaved:\n{}\n\nEnvoy log tail:\n{}",
        failures.len(),
        report.len(),
        failures.join("\n"),
        env.log_tail()
    );

    // Paths Istio's `*/events/out` notPaths glob would have left public (they end with
    // /events/out after Istio's normalization) while an application may read them as
    // another resource: each must be checked by the auth service (or refused by Envoy).
    for target in [
        "/api/flows;/events/out",
        "/api/flows;x=1/events/out",
        "/api/flows%3F/events/out",
        "/api/flows%23/events/out",
        "/api/flows%2F..%2F/events/out",
        "/api/admin%2Fevents/out",
    ] {
        let (auth_before, up_before) = (env.auth.count(), env.upstream.count());
        let resp = env.send(&RawRequest::get(target).bearer("deny"));
        let checked = env.auth.count() > auth_before && resp.status == 401;
        let refused = env.auth.count() == auth_before && (400..500).contains(&resp.status);
        env.check(
            env.upstream.count() == up_before && !resp.proxied() && (checked || refused),
            &format!("converted: Istio suffix-glob bypass candidate {target} was not checked"),
            &resp,
        );
    }

    // Allow: the auth service's identity arrives; a spoofed x-nebula-* (any name, the
    // converted upstream_headers is a prefix pattern) does not.
    let resp = env.send(&RawRequest::get("/api/flows").bearer("allow:alice").header("x-nebula-extra", "evil"));
    let up = env.assert_allowed_as("converted: allow", &resp, "alice");
    env.check(up.header("x-nebula-extra").is_none(), "converted: spoofed x-nebula-extra reached the upstream", &resp);
    let call = env.auth.requests().last().cloned().expect("the auth service was called");
    env.check(
        (call.method.as_str(), call.path.as_str(), call.header("host").as_deref())
            == ("GET", "/api/flows", Some("localhost")),
        "converted: ext_authz's callout (the client's method, path and authority)",
        &resp,
    );

    // Public path: no callout, every spoofed identity header stripped.
    let before = env.auth.count();
    let resp = env.send(&RawRequest::get("/api/health").header("x-nebula-actor-id", "evil").header("x-nebula-y", "e"));
    env.check(resp.status == 200 && resp.proxied() && env.auth.count() == before, "converted: public", &resp);
    let up = env.upstream.last();
    for name in NEBULA_HEADERS.iter().chain(&["x-nebula-y"]) {
        env.check(up.header(name).is_none(), &format!("converted: public path kept spoofed {name}"), &resp);
    }

    // Deny: the auth service's answer; an auth 5xx fails closed with statusOnError.
    let before = env.upstream.count();
    env.assert_denied("converted: deny", &env.get_as("/api/flows", "deny"), before);
    let resp = env.get_as("/api/flows", "status:500");
    env.check(resp.status == 503 && !resp.proxied(), "converted: auth 5xx fails closed with 503", &resp);
    env.check(env.upstream.count() == before, "converted: nothing reached the upstream on deny or error", &resp);
}

/// What does not carry over safely is refused with one clear line, not converted loosely.
#[test]
fn unsafe_or_inexpressible_policies_are_refused() {
    let mesh = std::fs::read_to_string(fixture(MESH)).expect("read mesh fixture");
    let policy = std::fs::read_to_string(fixture(POLICY)).expect("read policy fixture");
    let notpaths = "            notPaths:\n";
    let cases: &[(&str, String, String, &str)] = &[
        ("failOpen", mesh.replace("failOpen: false", "failOpen: true"), policy.clone(), "failOpen: true"),
        (
            "a short service name",
            mesh.replace("prefect/auth.prefect.svc.cluster.local", "auth"),
            policy.clone(),
            "fully qualified",
        ),
        (
            "an unknown provider",
            mesh.clone(),
            policy.replace("name: authz-http-redirect", "name: other"),
            "no extensionProviders",
        ),
        (
            "a grpc provider",
            mesh.replace("envoyExtAuthzHttp:", "envoyExtAuthzGrpc:"),
            policy.clone(),
            "envoyExtAuthzGrpc",
        ),
        (
            "checking only some paths",
            mesh.clone(),
            policy.replace(notpaths, "            paths: [/api/*]\n            notPaths:\n"),
            "checks only some paths",
        ),
        (
            "a presence glob",
            mesh.clone(),
            policy.replace(notpaths, "            notPaths:\n              - \"*\"\n"),
            "presence",
        ),
        (
            "a suffix glob off a segment",
            mesh.clone(),
            policy.replace(notpaths, "            notPaths:\n              - \"*.js\"\n"),
            "whole segments",
        ),
        (
            "a method condition",
            mesh.clone(),
            policy.replace(notpaths, "            methods: [GET]\n            notPaths:\n"),
            "methods",
        ),
        (
            "two rules",
            mesh.clone(),
            policy.clone() + "    - to:\n        - operation:\n            notPaths: [/x]\n",
            "2 rules",
        ),
        ("a non-CUSTOM action", mesh.clone(), policy.replace("action: CUSTOM", "action: ALLOW"), "only CUSTOM"),
        (
            "a command operator the filter cannot print",
            mesh.replace(
                "          headersToUpstreamOnAllow:\n",
                "          includeAdditionalHeadersInCheck:\n            x-client: \"%DOWNSTREAM_REMOTE_ADDRESS%\"\n            \
                 x-node: \"node=%UPSTREAM_HOST%\"\n          headersToUpstreamOnAllow:\n",
            ),
            policy.clone(),
            "includeAdditionalHeadersInCheck.x-node: %UPSTREAM_HOST% is not supported",
        ),
        (
            "a stray %",
            mesh.replace(
                "          headersToUpstreamOnAllow:\n",
                "          includeAdditionalHeadersInCheck:\n            x-off: \"50% off\"\n          \
                 headersToUpstreamOnAllow:\n",
            ),
            policy.clone(),
            "includeAdditionalHeadersInCheck.x-off: '% off' is not an Envoy command operator",
        ),
    ];
    let dir = TempDir::new("nebula-authz-convert");
    for (what, mesh, policy, expected) in cases {
        let (mesh_path, policy_path) = (dir.path().join("mesh.yaml"), dir.path().join("policy.yaml"));
        std::fs::write(&mesh_path, mesh).expect("write mesh");
        std::fs::write(&policy_path, policy).expect("write policy");
        let out = convert(&mesh_path, &policy_path, true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: expected a refusal, got {:?}\n{stderr}", out.status);
        assert!(out.stdout.is_empty(), "{what}: a refusal must print no config");
        assert!(
            stderr.starts_with("error: cannot convert: ") && stderr.contains(expected),
            "{what}: expected an error mentioning {expected:?}, got: {stderr}"
        );
    }
}

/// `make convert` refuses exactly the includeAdditionalHeadersInCheck values the filter
/// refuses at load (its command operators), so a conversion never yields a config the
/// filter rejects, nor refuses one it would print.
#[test]
fn convert_and_the_filter_agree_on_command_operators() {
    let values = [
        "static",
        "100%% sure",
        "",
        "%DOWNSTREAM_REMOTE_ADDRESS%",
        "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;",
        "%DOWNSTREAM_LOCAL_ADDRESS%",
        "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
        "%PROTOCOL%%PROTOCOL%",
        "%HOSTNAME%",
        "%REQ(x-a)%",
        "%REQ(X-A?:authority):12%",
        "%REQ(host):0%",
        "%START_TIME%",
        "%START_TIME()%",
        "%START_TIME(%s.%3f %Y-%m-%dT%H:%M:%S%z %f %9f %%)%",
        "%START_TIME(%c)%",
        "%START_TIME(%E3S)%",
        "%START_TIME(%)%",
        "%START_TIME(%%%)%",
        "%START_TIME:3%",
        "%PROTOCOL:3%",
        "%PROTOCOL(x)%",
        "%HOSTNAME(x)%",
        "%REQ%",
        "%REQ()%",
        "%REQ(a b)%",
        "%REQ(a?b?c)%",
        "%REQ(a):4294967295%",
        "%REQ(a):4294967296%",
        "100%",
        "50% off",
        "%protocol%",
        "%PROTOCOL",
        "%REQ(x-a%",
        "%REQ(x):%",
        "%UPSTREAM_HOST%",
        "%RESP(x)%",
        "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
        "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
        "%DYNAMIC_METADATA(a:b)%",
        "%%%",
        "%%%%",
        "%1%",
    ];
    let script =
        "import json, sys\nsys.path.insert(0, sys.argv[1])\nfrom convert_policy import Refused, check_operators\n\
                  out = []\nfor value in json.load(sys.stdin):\n    try:\n        check_operators('x', value)\n        \
                  out.append(None)\n    except Refused as refused:\n        out.append(str(refused))\n\
                  print(json.dumps(out))\n";
    let mut child = Command::new(Tools::locate(false).python)
        .args(["-c", script])
        .arg(repo_root().join("scripts"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    serde_json::to_writer(child.stdin.take().expect("stdin"), &values[..]).expect("write the values");
    let out = child.wait_with_output().expect("python's answer");
    let refusals: Vec<Option<String>> = serde_json::from_slice(&out.stdout).expect("a JSON list");
    assert_eq!(refusals.len(), values.len());
    for (value, refusal) in values.iter().zip(refusals) {
        let config =
            serde_json::json!({"auth": {"cluster": "a", "protocol": "ext_authz", "headers_to_add": {"x": value}}});
        let filter = nebula_authz::config::Settings::from_json(config.to_string().as_bytes());
        assert_eq!(
            refusal.is_none(),
            filter.is_ok(),
            "{value:?}: convert {:?}, the filter {:?}",
            refusal,
            filter.err().map(|e| e.to_string())
        );
    }
}

/// Other shapes of the same data: a bare MeshConfig, pathPrefix, a millisecond timeout,
/// static check headers, headers to the client on allow, a body; no other lists
/// (ext_authz's defaults).
#[test]
fn bare_mesh_config_with_path_prefix_converts() {
    let dir = TempDir::new("nebula-authz-convert");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "extensionProviders:\n  - name: authz-http-redirect\n    envoyExtAuthzHttp:\n      \
         service: auth.prefect.svc.cluster.local\n      port: 4300\n      pathPrefix: /check\n      \
         timeout: 250ms\n      includeRequestHeadersInCheck: [origin, x-tenant-*]\n      \
         includeAdditionalHeadersInCheck: {x-b: two, x-a: one, x-c: \"%REQ(x-in?host):8%/%START_TIME(%s.%3f)%/%HOSTNAME%/100%%\"}\n      \
         headersToDownstreamOnAllow: [set-cookie]\n      \
         includeRequestBodyInCheck: {maxRequestBytes: 1024, allowPartialMessage: true, packAsBytes: true}\n",
    )
    .expect("write mesh");
    let out = convert(&mesh, &fixture(POLICY), true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "conversion failed: {stderr}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let auth = &config["auth"];
    assert_eq!((auth["protocol"].as_str(), auth["path_prefix"].as_str()), (Some("ext_authz"), Some("/check")));
    assert_eq!(auth["timeout_ms"], 250);
    assert_eq!(auth["request_headers"], serde_json::json!(["origin", "x-tenant-*"]), "authorization is implicit");
    assert_eq!(
        auth["headers_to_add"],
        serde_json::json!({
            "x-a": "one", "x-b": "two", "x-c": "%REQ(x-in?host):8%/%START_TIME(%s.%3f)%/%HOSTNAME%/100%%"
        }),
        "operators the filter prints are kept"
    );
    assert_eq!(auth["client_headers_on_success"], serde_json::json!(["set-cookie"]));
    assert_eq!(auth["upstream_headers"], serde_json::json!([]), "unset: ext_authz copies nothing upstream");
    assert!(config.get("status_on_error").is_none() && auth.get("client_headers").is_none());
    assert_eq!(
        auth["with_request_body"],
        serde_json::json!({"max_request_bytes": 1024, "allow_partial_message": true, "pack_as_bytes": true})
    );
    assert!(
        stderr.contains("note: includeRequestBodyInCheck -> auth.with_request_body")
            && stderr.contains("allow_on_headers_stop_iteration"),
        "the note says the WasmPlugin cannot set what Envoy needs: {stderr}"
    );
    assert!(stderr.contains("note: includeAdditionalHeadersInCheck: %REQ(...)% prints"), "{stderr}");
    let mut settings =
        nebula_authz::config::Settings::from_json(config.to_string().as_bytes()).expect("the filter accepts it");
    settings.resolve_hostname(Some("prefect-server-0")).expect("with the VM's HOSTNAME");
    // %HOSTNAME% is the VM's HOSTNAME variable: the WasmPlugin hands it the proxy's.
    let out = convert(&mesh, &fixture(POLICY), false);
    let manifest = String::from_utf8_lossy(&out.stdout);
    assert!(manifest.contains("  vmConfig:\n    env:\n    - name: HOSTNAME\n      valueFrom: HOST\n"), "{manifest}");
}

/// Istio counts gateway traffic as CLIENT: a plugin converted for gateway pods must not keep
/// the sidecar's `match: SERVER`, under which it would silently not run.
#[test]
fn gateway_policies_do_not_keep_the_sidecar_match_mode() {
    let dir = TempDir::new("nebula-authz-convert");
    let policy = std::fs::read_to_string(fixture(POLICY)).expect("read policy fixture");
    for (what, replacement, expected) in [
        ("gateway pods", "istio: ingressgateway", "  match:\n  - mode: CLIENT\n"),
        ("sidecars", "app: prefect-server", "  match:\n  - mode: SERVER\n"),
    ] {
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, policy.replace("app: prefect-server", replacement)).expect("write policy");
        let out = convert(&fixture(MESH), &path, false);
        let yaml = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && yaml.contains(expected), "{what}: expected {expected:?} in:\n{yaml}");
    }
    let targeted = policy.replace(
        "  selector:\n    matchLabels:\n      app: prefect-server\n",
        "  targetRefs:\n    - kind: Gateway\n      group: gateway.networking.k8s.io\n      name: prefect-gateway\n",
    );
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, targeted).expect("write policy");
    let out = convert(&fixture(MESH), &path, false);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "targetRefs: {}", String::from_utf8_lossy(&out.stderr));
    assert!(yaml.contains("targetRefs:") && yaml.contains("name: prefect-gateway"), "targetRefs kept:\n{yaml}");
    assert!(!yaml.contains("match:") && !yaml.contains("selector:"), "targetRefs: no match, no selector:\n{yaml}");
}
