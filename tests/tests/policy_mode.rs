//! Migration from Istio policy mode: scripts/convert_policy.py (`make convert`) turns a
//! policy-mode setup (tests/data/policy-mode/: the mesh config's `authz-http-redirect`
//! ext_authz provider and the AuthorizationPolicy CUSTOM with Prefect's public paths as
//! Istio globs) into a WasmPlugin; the converted config then runs under real Envoy,
//! behind Istio's cluster name, against the hostile path table. The public paths of every
//! conversion are compared with Istio's own notPaths match (an oracle written after
//! istiod's source) over that table and paths generated around each glob: never wider,
//! and equal on canonical paths but where a note says which are now checked.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use nebula_authz::plugin_config::Settings;
use nebula_authz::policy::route::canonical_path;
use nebula_authz_tests::client::RawRequest;
use nebula_authz_tests::envoy::Tools;
use nebula_authz_tests::paths::{Expected, PathCase};
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
    assert!(
        stderr.contains("note: /api/health* -> /api/health: ") && stderr.contains("/api/healthz"),
        "the string-prefix glob's note must name what is now checked: {stderr}"
    );
    assert!(!stderr.contains("*/events/out"), "a suffix glob converts exactly, without a note: {stderr}");

    let config = converted_config();
    let auth = &config["auth"];
    assert_eq!(auth["host"], "auth.prefect.svc.cluster.local", "service, namespace/ prefix dropped");
    assert_eq!(auth["port"], 4300);
    assert_eq!(auth["timeout_ms"], 5000, "timeout: 5s");
    assert_eq!(auth["protocol"], "ext_authz", "convert emits ext_authz's callout shape");
    assert_eq!(config["status_on_error"], 503, "statusOnError: \"503\"");
    assert_eq!(auth["upstream_headers"], serde_json::json!(["x-nebula-*"]), "headersToUpstreamOnAllow");
    assert_eq!(config["strip_headers"], serde_json::json!(["x-nebula-*"]), "the identity headers, on every path");
    assert_eq!(
        auth["client_headers"],
        serde_json::json!(["www-authenticate", "location", "set-cookie", "content-type"]),
        "headersToDownstreamOnDeny"
    );
    let public: Vec<&str> =
        config["public_paths"].as_array().expect("public_paths").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(
        public,
        [
            "/auth",
            "/api/docs",
            "==/api/openapi.json",
            "/api/health",
            "/api/version",
            "/hooks",
            "==/task_runs/subscriptions/scheduled",
            "==/{prefix}/task_runs/subscriptions/scheduled",
            "==/events/out",
            "==/{prefix}/events/out",
        ],
        "notPaths: `/x` + `/x/*` join into the prefix `/x`, an exact path stays exact (`==`), `*/x` is `/x` \
         and `==/{{prefix}}/x`"
    );
}

#[test]
fn converted_policy_runs_under_envoy_without_bypass() {
    let config = converted_config().to_string();
    let settings = Settings::from_json(config.as_bytes()).expect("the filter accepts the converted config");
    let env = Env::builder().plugin_config(&config).auth_cluster_name(ISTIO_CLUSTER).start();

    // Every row of paths.tsv behaves in Envoy as the converted config decides natively
    // (which converted_public_paths_never_widen_istio_notpaths holds against Istio's match).
    let natively = |case: &PathCase| match settings.public.is_public(&case.target) {
        true => Expected::Public,
        false => Expected::Protected,
    };
    let (report, failures) = paths::replay_with(&env, &paths::load(), None, natively);
    assert!(
        failures.is_empty(),
        "converted policy: {} of {} paths.tsv rows misbehaved:\n{}\n\nEnvoy log tail:\n{}",
        failures.len(),
        report.len(),
        failures.join("\n"),
        env.log_tail()
    );

    // Where the converted paths follow Istio's notPaths and not the default templates:
    // `/api/openapi.json` is an exact match (nothing below it, no trailing slash),
    // `*/events/out` a suffix match (`/events/out` itself, no trailing slash); and where
    // they narrow it: `/api/health*` is a string prefix, `/api/health` a segment prefix.
    let istio: Vec<PathCase> = [
        ("/api/openapi.json", Expected::Public, "exact notPath"),
        ("/api/openapi.json?x=1", Expected::Public, "exact notPath, query"),
        ("/api/openapi.json/anything", Expected::Protected, "below an exact notPath"),
        ("/api/openapi.json/", Expected::Protected, "exact notPath, trailing slash"),
        ("/api/openapi.jsonx", Expected::Protected, "exact notPath, string-prefix sibling"),
        ("/events/out", Expected::Public, "suffix notPath itself"),
        ("/api/events/out/", Expected::Protected, "suffix notPath, trailing slash"),
        ("/api/events/out/x", Expected::Protected, "below a suffix notPath"),
        ("/auth/", Expected::Public, "/auth and /auth/* joined"),
        ("/api/healthz", Expected::Protected, "string prefix narrowed to a segment prefix"),
    ]
    .into_iter()
    .map(|(target, expected, note)| PathCase { expected, target: target.into(), note: note.into(), line: 0 })
    .collect();
    let (report, failures) = paths::replay_cases(&env, &istio);
    assert!(
        failures.is_empty(),
        "converted policy: {} of {} targets differ from Istio's notPaths:\n{}",
        failures.len(),
        report.len(),
        failures.join("\n")
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
            "a when key with no proxy-wasm equivalent",
            mesh.clone(),
            policy.clone()
                + "      when:\n        - key: experimental.envoy.filters.network.mysql_proxy[db.table]\n          \
                   values: [\"[update]\"]\n",
            "when[0] key 'experimental.envoy.filters.network.mysql_proxy[db.table]'",
        ),
        (
            "a source field outside the filter's rules",
            mesh.clone(),
            policy.clone() + "      from:\n        - source:\n            serviceAccounts: [prefect/worker]\n",
            "from[0].source.serviceAccounts",
        ),
        (
            "request principals without the filter's jwt block",
            mesh.clone(),
            policy.clone() + "      from:\n        - source:\n            requestPrincipals: [\"*\"]\n",
            "from[0].source.requestPrincipals: the filter reads request principals from its own jwt step",
        ),
        (
            "a dry-run policy",
            mesh.clone(),
            policy.replace("  namespace: prefect\n", "  namespace: prefect\n  annotations:\n    istio.io/dry-run: \"true\"\n")
                + "    - to:\n        - operation:\n            paths: [/x]\n",
            "istio.io/dry-run",
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
        let filter = nebula_authz::plugin_config::Settings::from_json(config.to_string().as_bytes());
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
        nebula_authz::plugin_config::Settings::from_json(config.to_string().as_bytes()).expect("the filter accepts it");
    settings.resolve_hostname(Some("prefect-server-0")).expect("with the VM's HOSTNAME");
    // %HOSTNAME% is the VM's HOSTNAME variable: the WasmPlugin hands it the proxy's.
    let out = convert(&mesh, &fixture(POLICY), false);
    let manifest = String::from_utf8_lossy(&out.stdout);
    assert!(manifest.contains("  vmConfig:\n    env:\n    - name: HOSTNAME\n      valueFrom: HOST\n"), "{manifest}");
}

/// `make convert` as users run it: what `kubectl get -o yaml` prints (a List, with other
/// objects beside the one that matters) and multi-document files convert to the same
/// config as the single objects; every refusal, bad input included, is one `error:` line
/// and exit 1, never a traceback; an unset timeout is Istio's 600 s, said in a note.
#[test]
fn convert_reads_lists_and_documents_and_refuses_in_one_line() {
    let dir = TempDir::new("nebula-authz-convert");
    let mesh = std::fs::read_to_string(fixture(MESH)).expect("read mesh fixture");
    let policy = std::fs::read_to_string(fixture(POLICY)).expect("read policy fixture");
    let indent = |text: &str| text.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let allow = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-all\n  \
                 namespace: prefect\nspec:\n  action: ALLOW\n  rules:\n    - {}\n";
    let other_cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio-sidecar-injector\n  \
                    namespace: istio-system\ndata:\n  values: '{}'\n";
    let list = |items: &[&str]| {
        let body: String = items
            .iter()
            .map(|item| {
                let mut lines = indent(item);
                lines.replace_range(0..4, "  - ");
                lines
            })
            .collect();
        format!("apiVersion: v1\nkind: List\nitems:\n{body}metadata:\n  resourceVersion: \"\"\n")
    };
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write input");
        path
    };
    let expected = converted_config();
    for (what, mesh_path, policy_path) in [
        (
            "two Lists",
            write("mesh-list.yaml", &list(&[other_cm, mesh.as_str()])),
            write("policy-list.yaml", &list(&[allow, policy.as_str()])),
        ),
        (
            "multi-document files",
            write("mesh-docs.yaml", &format!("{other_cm}---\n{mesh}")),
            write("policy-docs.yaml", &format!("{allow}---\n{policy}\n---\n")),
        ),
    ] {
        let out = convert(&mesh_path, &policy_path, true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {stderr}");
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(config, expected, "{what}: the same config as from the single objects");
        assert!(stderr.contains("1 other AuthorizationPolicy ignored (not CUSTOM)"), "{what}: {stderr}");
    }

    let second =
        policy.replace("name: prefect-auth", "name: prefect-auth-2").replace("app: prefect-server", "app: worker");
    let refusals = [
        (
            "CUSTOM policies for two workloads",
            write("m1.yaml", &mesh),
            write("p1.yaml", &format!("{policy}\n---\n{second}")),
            "the CUSTOM policies apply to different workloads (prefect/prefect-auth -> prefect",
        ),
        ("invalid YAML", write("m2.yaml", &mesh), write("p2.yaml", "spec: [unclosed\n"), "not valid YAML (line 2)"),
        ("a missing file", write("m3.yaml", &mesh), dir.path().join("absent.yaml"), "absent.yaml"),
        (
            "a list where a mapping belongs",
            write("m4.yaml", &mesh),
            write("p4.yaml", &policy.replace("  provider:\n    name: authz-http-redirect\n", "  provider: [x]\n")),
            "malformed input",
        ),
        (
            "a mesh config that is not YAML",
            write("m5.yaml", &mesh.replace("    accessLogFile: /dev/stdout\n", "    a: [\n")),
            write("p5.yaml", &policy),
            "the mesh config is not valid YAML",
        ),
        (
            "no CUSTOM policy",
            write("m6.yaml", &mesh),
            write("p6.yaml", &format!("{allow}---\n{allow}")),
            "no AuthorizationPolicy with action: CUSTOM",
        ),
    ];
    for (what, mesh_path, policy_path, expected) in refusals {
        let out = convert(&mesh_path, &policy_path, true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: exit 1 expected: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: a refusal prints nothing on stdout");
        assert_eq!(stderr.lines().count(), 1, "{what}: one line, not a traceback: {stderr}");
        assert!(stderr.starts_with("error: cannot convert: ") && stderr.contains(expected), "{what}: {stderr}");
    }

    let untimed = write("m7.yaml", &mesh.replace("          timeout: 5s\n", ""));
    let out = convert(&untimed, &fixture(POLICY), true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(config["auth"]["timeout_ms"], 600_000, "Istio's default, written out");
    assert!(stderr.contains("note: timeout unset: Istio's default, 600 s"), "the note says so: {stderr}");
    let timed = String::from_utf8_lossy(&convert(&fixture(MESH), &fixture(POLICY), true).stderr).into_owned();
    assert!(!timed.contains("timeout unset"), "no such note with a timeout: {timed}");
}

/// `make convert` needs Python with PyYAML only: no Envoy, no Traefik, no project venv.
#[test]
fn make_convert_needs_no_envoy() {
    let dir = TempDir::new("nebula-authz-convert");
    let out = Command::new("make")
        .current_dir(repo_root())
        .args(["-s", "convert", &format!("MESHCONFIG={MESH}"), &format!("POLICY={POLICY}")])
        .arg(format!("VENV={}", dir.path().join("no-venv").display()))
        .arg(format!("CONVERT_VENV={}", dir.path().join("convert-venv").display()))
        .output()
        .expect("run make convert");
    assert!(out.status.success(), "make convert: {}", String::from_utf8_lossy(&out.stderr));
    let golden = std::fs::read_to_string(fixture(GOLDEN)).expect("read golden");
    assert_eq!(String::from_utf8_lossy(&out.stdout), golden, "the same WasmPlugin as the script prints");
    assert!(!dir.path().join("no-venv").exists(), "the Envoy venv was not created");
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

/// Istio's match of one AuthorizationPolicy `paths`/`notPaths` value: the oracle of the
/// conversion. istiod (pilot/pkg/security/authz/model/generator.go, pathGenerator) builds
/// an Envoy PathMatcher from matcher.StringMatcherWithPrefix(value, "")
/// (pilot/pkg/security/authz/matcher/string.go): `*` alone is the regex `.+`, a leading
/// `*` a suffix match, a trailing `*` a prefix match, anything else an exact match, all
/// case-sensitive; a `*` anywhere else is a literal byte. Envoy's PathMatcher compares the
/// path without its query and fragment (Http::PathUtil::removeQueryAndFragment).
fn istio_path_match(glob: &str, target: &[u8]) -> bool {
    let end = target.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(target.len());
    let path = &target[..end];
    if glob == "*" {
        return !path.is_empty() && !path.contains(&b'\n');
    }
    match (glob.strip_prefix('*'), glob.strip_suffix('*')) {
        (Some(suffix), _) => path.ends_with(suffix.as_bytes()),
        (None, Some(prefix)) => path.starts_with(prefix.as_bytes()),
        (None, None) => path == glob.as_bytes(),
    }
}

/// The one narrowing a conversion may make on canonical paths: a string-prefix glob
/// (`/api/health*`) becomes a segment prefix, so a path that continues its last segment
/// (`/api/healthz`) is checked.
fn continues_the_last_segment(glob: &str, path: &str) -> bool {
    match glob.strip_suffix('*') {
        Some(stem) if !glob.starts_with('*') && !stem.ends_with('/') => {
            path.len() > stem.len() && path.starts_with(stem) && path.as_bytes()[stem.len()] != b'/'
        }
        _ => false,
    }
}

/// Request targets around `globs`: paths.tsv's, and for each glob's literal part, its
/// children, siblings, string-prefix siblings (`/api/healthz`), trailing slashes, dot
/// segments, encodings, parameters, queries and fragments, with segments before it.
fn probe_targets(globs: &[&str]) -> BTreeSet<Vec<u8>> {
    const TAILS: [&[u8]; 30] = [
        b"",
        b"/",
        b"//",
        b"/x",
        b"/x/",
        b"/x/y",
        b"/x//",
        b"z",
        b"z/",
        b"z/x",
        b".json",
        b"-v2",
        b"/.",
        b"/..",
        b"/./x",
        b"/../flows",
        b"/%2e%2e/flows",
        b"%2f..%2fflows",
        b"%2F",
        b";x",
        b";/x",
        b"/;x",
        b"?q=1",
        b"?x=/../flows",
        b"#frag",
        b"\\..\\flows",
        b"%00",
        b"\0",
        b"/\xc3\xa9",
        b"/x?y=/",
    ];
    const HEADS: [&[u8]; 10] = [b"/a", b"/a/b", b"//", b"/a/", b"/.", b"/a/..", b"/%2e", b"/a;x", b"/a%2f", b"x"];
    let mut out: BTreeSet<Vec<u8>> = paths::load().into_iter().map(|case| case.target).collect();
    out.extend([&b"/"[..], b"//", b"", b"*", b"/x", b"/api", b"/api/"].map(<[u8]>::to_vec));
    for glob in globs {
        let literal = glob.strip_prefix('*').or_else(|| glob.strip_suffix('*')).unwrap_or(glob);
        let stem = literal.trim_end_matches('/');
        let mut bases = vec![literal.to_string(), stem.to_string(), format!("{stem}/"), literal.to_uppercase()];
        if let Some(at) = stem.rfind('/') {
            bases.extend([stem[..at].to_string(), stem[..=at].to_string()]);
        }
        if let Some((at, _)) = stem.char_indices().last() {
            bases.push(stem[..at].to_string());
        }
        for base in bases {
            for tail in TAILS {
                out.insert([base.as_bytes(), tail].concat());
            }
            for head in HEADS {
                out.insert([head, base.as_bytes()].concat());
                out.insert([head, base.as_bytes(), b"/"].concat());
            }
        }
    }
    out
}

/// A policy-mode AuthorizationPolicy (the fixture's) with `globs` as its notPaths.
fn policy_with(globs: &[&str]) -> String {
    let fixture = std::fs::read_to_string(fixture(POLICY)).expect("read policy fixture");
    let at = fixture.find("            notPaths:\n").expect("the fixture lists notPaths");
    let items: String = globs.iter().map(|g| format!("              - {g:?}\n")).collect();
    format!("{}            notPaths:\n{items}", &fixture[..at])
}

/// The fixture's notPaths, read back from its YAML list.
fn fixture_globs() -> Vec<String> {
    let fixture = std::fs::read_to_string(fixture(POLICY)).expect("read policy fixture");
    let list = fixture.split("notPaths:\n").nth(1).expect("the fixture lists notPaths");
    list.lines().filter_map(|l| l.trim().strip_prefix("- ")).map(|g| g.trim_matches('"').to_string()).collect()
}

/// Every conversion makes public a subset of what Istio's notPaths did, on every target,
/// and the same set on canonical paths (the only ones the filter ever makes public) but
/// for the string-prefix narrowing a note names. What has no such conversion becomes a
/// rule (`policies`, which the filter matches as Istio does), with a note naming the
/// notPath; never loose public paths.
#[test]
fn converted_public_paths_never_widen_istio_notpaths() {
    let fixture_globs = fixture_globs();
    let mut policies: Vec<Vec<&str>> = vec![fixture_globs.iter().map(String::as_str).collect()];
    let generated: &[&[&str]] = &[
        // Exact, nested, with a trailing slash, the root.
        &["/api/health"],
        &["/api/v1/health"],
        &["/api/health/"],
        &["/"],
        // `/x/*`: the string prefix `/x/`.
        &["/hooks/*"],
        &["/api/v1/*"],
        // `/x*`: the string prefix `/x`, also `/xyz`.
        &["/api/health*"],
        &["/api/v1/health*"],
        &["/api/health/x*"],
        // `*/x`: the suffix `/x`, also `/x` itself.
        &["*/events/out"],
        &["*/out"],
        &["*/events/out/"],
        &["*/task_runs/subscriptions/scheduled"],
        // Several globs over the same paths: joined, or one holding the other.
        &["/hooks", "/hooks/*"],
        &["/hooks/*", "/hooks*"],
        &["/hooks*", "/hooks", "/hooks/x"],
        &["/a", "/a/", "/a/*"],
        &["/a/", "/a/*", "/a/b/*", "/a/b"],
        &["*/out", "/out", "*/b/out", "*/out/"],
        &["/api/*", "/api/health", "/api/health*", "*/health"],
        &["/api/v*", "/api/version", "/api/version/*"],
        &["/api/health", "/api/health/", "/api/health/*"],
        // A `*` inside is a literal byte for Istio.
        &["/a*b", "*/x*"],
    ];
    policies.extend(generated.iter().map(|globs| globs.to_vec()));
    let as_rules: &[&str] = &[
        "*",
        "/*",
        "//*",
        "*.js",
        "*x/out",
        "*/",
        "/api/{*}/x",
        "/api/{**}",
        "/api/%2F",
        "/a//b",
        "/a/./b",
        "/api/./*",
        "/api/.*",
        "/api/%7E*",
        "*/a;b",
        "api/x",
    ];

    // One converter process per policy, all at once.
    let dir = TempDir::new("nebula-authz-convert-oracle");
    let run = |i: usize, globs: &[&str]| {
        let path = dir.path().join(format!("policy-{i}.yaml"));
        std::fs::write(&path, policy_with(globs)).expect("write policy");
        let mut cmd = Command::new(Tools::locate(false).python);
        cmd.arg(repo_root().join("scripts/convert_policy.py")).arg(fixture(MESH)).arg(&path).arg("--config-only");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run scripts/convert_policy.py")
    };
    let converting: Vec<_> = policies.iter().enumerate().map(|(i, globs)| run(i, globs)).collect();
    let ruling: Vec<_> =
        as_rules.iter().enumerate().map(|(i, glob)| run(policies.len() + i, &["/hooks", glob])).collect();

    let mut failures = Vec::new();
    let (mut equal, mut narrowed, mut public) = (0usize, 0usize, 0usize);
    for (globs, child) in policies.iter().zip(converting) {
        let out = child.wait_with_output().expect("wait for the converter");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            failures.push(format!("{globs:?}: conversion failed: {stderr}"));
            continue;
        }
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--config-only prints JSON");
        let settings = match Settings::from_json(config.to_string().as_bytes()) {
            Ok(settings) => settings,
            Err(e) => {
                failures.push(format!("{globs:?}: the filter refuses the converted {}: {e}", config["public_paths"]));
                continue;
            }
        };
        for target in probe_targets(globs) {
            let istio = globs.iter().any(|g| istio_path_match(g, &target));
            let filter = settings.public.is_public(&target);
            let shown = escape(&target);
            if filter && !istio {
                failures.push(format!(
                    "{globs:?} -> {}: {shown} WIDENED (public, Istio checks it)",
                    config["public_paths"]
                ));
            }
            let Some(path) = canonical_path(&target).filter(|_| istio && !filter) else {
                equal += usize::from(canonical_path(&target).is_some());
                public += usize::from(filter);
                continue;
            };
            // Istio made it public; the filter checks it: only a string prefix's narrowing,
            // and the converter said so.
            let matching: Vec<&&str> = globs.iter().filter(|g| istio_path_match(g, &target)).collect();
            let noted = |g: &&&str| stderr.contains(&format!("note: {g} -> "));
            if matching.iter().all(|g| continues_the_last_segment(g, path) && noted(g)) {
                narrowed += 1;
            } else {
                failures.push(format!(
                    "{globs:?} -> {}: {shown} canonical, public under Istio ({matching:?}) but checked, without a note",
                    config["public_paths"]
                ));
            }
        }
    }
    for (glob, child) in as_rules.iter().zip(ruling) {
        let out = child.wait_with_output().expect("wait for the converter");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let named = format!("note: notPaths {glob:?}").replace('"', "'");
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let notpaths = &config["policies"][0]["rules"][0]["to"][0]["operation"]["notPaths"];
        if !out.status.success()
            || config.get("public_paths").is_some()
            || *notpaths != serde_json::json!(["/hooks", glob])
            || !stderr.contains(&named)
            || !stderr.contains("converted as a rule instead")
        {
            failures.push(format!(
                "{glob:?}: expected the rule verbatim in policies and {named:?}..., got {:?}: {config}\n{stderr}",
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // The probes reach into every shape: public paths, canonical agreement, narrowing.
    assert!(public > 300 && equal > 2_000 && narrowed > 30, "public {public}, equal {equal}, narrowed {narrowed}");
}

fn escape(target: &[u8]) -> String {
    nebula_authz_tests::client::escape(target)
}

/// Several CUSTOM policies and providers: one config with every provider a policy names
/// (sorted by name, istiod's order), every policy as `<namespace>/<name>` with its rules
/// exactly as written, whether they come in one file or several; the policies that are
/// not CUSTOM are left to Istio's RBAC, and the output says so.
#[test]
fn several_policies_and_providers_convert_with_their_rules_verbatim() {
    let mesh = fixture("tests/data/custom/meshconfig.yaml");
    let policies = fixture("tests/data/custom/policies.yaml");
    let opa = fixture("tests/data/custom/policies-opa.yaml");
    let jwt = fixture("tests/data/custom/jwt.json");
    let out = Command::new(Tools::locate(false).python)
        .arg(repo_root().join("scripts/convert_policy.py"))
        .args([&mesh, &policies, &opa])
        .arg("--jwt")
        .arg(&jwt)
        .arg("--config-only")
        .output()
        .expect("run scripts/convert_policy.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let block: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jwt).expect("read jwt.json")).expect("jwt JSON");
    assert_eq!(config["jwt"], block, "--jwt: the filter's jwt block as given");
    // Without --jwt: the first field it is needed for, named.
    let run = |options: &[&str]| {
        let mut cmd = Command::new(Tools::locate(false).python);
        cmd.current_dir(repo_root()).arg(repo_root().join("scripts/convert_policy.py")).args([&mesh, &policies, &opa]);
        cmd.args(options);
        let out = cmd.arg("--config-only").output().expect("run scripts/convert_policy.py");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let expected = "prefect/api rules[17].from[0].source.requestPrincipals: the filter reads request principals";
    let (code, refused) = run(&[]);
    assert!(code == Some(1) && refused.contains(expected), "expected {expected:?}: {refused}");
    let names = |key: &str, field: &str| -> Vec<String> {
        config[key].as_array().expect(key).iter().map(|p| p[field].as_str().unwrap_or("?").to_owned()).collect()
    };
    assert_eq!(names("providers", "name"), ["authz-http", "opa"]);
    assert_eq!(names("policies", "name"), ["prefect/api", "prefect/admin", "prefect/nothing"]);
    assert_eq!(names("policies", "provider"), ["authz-http", "opa", "opa"]);
    assert!(config.get("auth").is_none() && config.get("public_paths").is_none(), "{config}");
    assert_eq!(config["strip_headers"], serde_json::json!(["x-nebula-*"]));
    assert!(
        stderr.contains(
            "1 other AuthorizationPolicy ignored (not CUSTOM): ALLOW, DENY and AUDIT policies stay with Istio's RBAC"
        ),
        "{stderr}"
    );
    // The rules as YAML has them, read by PyYAML independently of the converter.
    let yaml_rules = Command::new(Tools::locate(false).python)
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps([(d['spec'].get('rules') or []) for f in sys.argv[1:] \
                      for d in yaml.safe_load_all(open(f)) if d['spec']['action'] == 'CUSTOM']))",
        ])
        .args([&policies, &opa])
        .output()
        .expect("run python");
    let rules: serde_json::Value = serde_json::from_slice(&yaml_rules.stdout).expect("rules JSON");
    let converted: Vec<&serde_json::Value> =
        config["policies"].as_array().expect("policies").iter().map(|p| &p["rules"]).collect();
    assert_eq!(serde_json::json!(converted), rules, "the rules verbatim");

    // The same policies from one file per document, and from one file.
    let dir = TempDir::new("nebula-authz-convert");
    let text = std::fs::read_to_string(&policies).expect("read policies")
        + "\n---\n"
        + &std::fs::read_to_string(&opa).expect("read policies");
    let mut paths = Vec::new();
    for (i, doc) in text.split("\n---\n").enumerate() {
        let path = dir.path().join(format!("p{i}.yaml"));
        std::fs::write(&path, doc).expect("write");
        paths.push(path);
    }
    assert!(paths.len() >= 4);
    let options = ["--jwt".as_ref(), jwt.as_os_str()];
    let split = nebula_authz_tests::ext_authz_pair::convert_all(&mesh, &paths, &options);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&split).expect("JSON"), config, "one file per document");
    let one = dir.path().join("all.yaml");
    std::fs::write(&one, &text).expect("write");
    let joined = nebula_authz_tests::ext_authz_pair::convert_all(&mesh, &[one], &options);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&joined).expect("JSON"), config, "one file");
}

/// What several providers cannot share in the filter is refused, naming the providers:
/// a `statusOnError` of their own (the filter has one `status_on_error`), a request body
/// (sent to one provider only), and names istiod's prefix match would mix up.
#[test]
fn several_providers_refuse_what_they_cannot_share() {
    let mesh = std::fs::read_to_string(fixture("tests/data/custom/meshconfig.yaml")).expect("read mesh");
    let dir = TempDir::new("nebula-authz-convert");
    let opa = "      pathPrefix: /opa\n";
    for (what, edit, expected) in [
        (
            "statusOnError",
            "      statusOnError: \"503\"\n",
            "statusOnError differs between providers (authz-http: unset (403), opa: 503)",
        ),
        (
            "a request body",
            "      includeRequestBodyInCheck:\n        maxRequestBytes: 64\n",
            "providers ['opa']: includeRequestBodyInCheck with several providers",
        ),
        // istiod enables a provider's ext_authz by a prefix of the matching rule's name, so
        // `authz-http`'s rules (`istio-ext-authz-authz-http-ns[...]`) enable `authz-http-ns` too.
        ("a provider named after another's rules", "", "providers 'authz-http' and 'authz-http-ns'"),
    ] {
        let path = dir.path().join("mesh.yaml");
        let renamed = |text: &str| {
            if edit.is_empty() {
                text.replace("name: opa", "name: authz-http-ns")
            } else {
                text.to_owned()
            }
        };
        std::fs::write(&path, renamed(&mesh.replace(opa, &format!("{opa}{edit}")))).expect("write mesh");
        let opa_policies = dir.path().join("policies-opa.yaml");
        let text = std::fs::read_to_string(fixture("tests/data/custom/policies-opa.yaml")).expect("read policies");
        std::fs::write(&opa_policies, renamed(&text)).expect("write policies");
        let out = Command::new(Tools::locate(false).python)
            .current_dir(repo_root())
            .arg(repo_root().join("scripts/convert_policy.py"))
            .arg(&path)
            .arg("tests/data/custom/policies.yaml")
            .arg(&opa_policies)
            .args(["--jwt", "tests/data/custom/jwt.json", "--config-only"])
            .output()
            .expect("run scripts/convert_policy.py");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && stderr.starts_with("error: cannot convert: ") && stderr.contains(expected),
            "{what}: expected {expected:?}: {stderr}"
        );
    }
}

/// A RequestAuthentication among the policy files becomes the filter's `jwt` block with no
/// flag: each jwtRule a provider (issuer, audiences, inline jwks or jwksUri at Istio's
/// cluster for its host), the token locations (jwt_authn's defaults when none is named),
/// `forwardOriginalToken` as `forward`, and Istio's verdicts (`local_then_callout`: a valid
/// token still goes to the CUSTOM check; an unknown issuer or a non-JWT credential 401).
/// What the filter cannot hold the same way is refused, naming the field; a
/// RequestAuthentication of other workloads is ignored; `--jwt` overrides.
#[test]
fn request_authentication_converts_to_the_jwt_block() {
    let dir = TempDir::new("nebula-authz-convert-ra");
    let mesh = fixture("tests/data/custom/meshconfig.yaml");
    let policies = fixture("tests/data/custom/policies.yaml");
    let run = |ra: &str, extra: &[&str]| {
        let path = dir.path().join("ra.yaml");
        std::fs::write(&path, ra).expect("write");
        let out = Command::new(Tools::locate(false).python)
            .arg(repo_root().join("scripts/convert_policy.py"))
            .args([&mesh, &policies, &path])
            .args(extra)
            .arg("--config-only")
            .output()
            .expect("run scripts/convert_policy.py");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let config = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok();
        (out.status.code(), config, stderr)
    };
    let ra = |selector: &str, rules: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: login, namespace: prefect}}\n\
             spec:\n{selector}  jwtRules:\n{rules}"
        )
    };
    let selected = "  selector: {matchLabels: {app: prefect-server}}\n";
    // The test fixture: an inline JWKS, its own header, the token forwarded.
    let (code, config, stderr) =
        run(&std::fs::read_to_string(fixture("tests/data/custom/requestauthentication.yaml")).expect("read"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let jwt = &config.expect("JSON")["jwt"];
    assert_eq!(jwt["mode"], "local_then_callout");
    assert_eq!(jwt["unknown_issuer"], "reject");
    assert_eq!(jwt["not_jwt"], "reject");
    assert_eq!(jwt["forward"], true);
    assert_eq!(jwt["from_headers"], serde_json::json!([{"name": "x-jwt-assertion"}]));
    assert!(jwt.get("from_params").is_none() && jwt.get("from_cookies").is_none(), "{jwt}");
    assert_eq!(jwt["providers"][0]["issuer"], "https://login.example.com");
    assert_eq!(jwt["providers"][0]["audiences"], serde_json::json!(["prefect-api"]));
    assert_eq!(jwt["providers"][0]["jwks"]["keys"][0]["kid"], "rsa-1", "the inline JWKS, parsed");
    // jwksUri, no token location (jwt_authn's defaults), forwardOriginalToken unset (false),
    // outputClaimToHeaders; the default header and param as the filter spells them.
    let rules = "    - issuer: https://idp.example.com:8443/realms/x\n      jwksUri: https://keys.example.com/certs?v=1\n      \
                 timeout: 2s\n      outputClaimToHeaders: [{header: x-nebula-actor-id, claim: sub}]\n    \
                 - issuer: http://plain.example.com\n";
    let (code, config, stderr) = run(&ra(selected, rules), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let jwt = &config.expect("JSON")["jwt"];
    assert_eq!(jwt["from_headers"], serde_json::json!([{"name": "authorization", "value_prefix": "Bearer "}]));
    assert_eq!(jwt["from_params"], serde_json::json!(["access_token"]));
    assert_eq!(jwt["forward"], false, "Istio's forwardOriginalToken defaults to false");
    assert_eq!(
        jwt["providers"][0]["remote_jwks"],
        serde_json::json!({"host": "keys.example.com", "port": 443, "path": "/certs?v=1", "timeout_ms": 2000})
    );
    assert_eq!(jwt["providers"][0]["claims_to_headers"], serde_json::json!({"sub": "x-nebula-actor-id"}));
    assert_eq!(jwt["providers"][1]["discovery"], serde_json::json!({"host": "plain.example.com", "port": 80}));
    assert!(stderr.contains("outbound|<port>||<host>"), "{stderr}");
    // Another workload's RequestAuthentication: ignored, so requestPrincipals are refused.
    let other =
        ra("  selector: {matchLabels: {app: other}}\n", "    - issuer: https://a\n      jwks: '{\"keys\": []}'\n");
    let (code, _, stderr) = run(&other, &[]);
    assert!(code == Some(1) && stderr.contains("give the workload's RequestAuthentication"), "{stderr}");
    // --jwt overrides.
    let jwt_file = fixture("tests/data/custom/jwt.json");
    let (code, config, stderr) = run(&other, &["--jwt", jwt_file.to_str().expect("UTF-8 path")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(config.expect("JSON")["jwt"]["mode"], "local_then_callout");
    assert!(stderr.contains("--jwt: the jwt block given replaces what the RequestAuthentications"), "{stderr}");
    for (what, text, expected) in [
        (
            "outputPayloadToHeader",
            ra(selected, "    - issuer: https://a\n      outputPayloadToHeader: x-payload\n"),
            "jwtRules[0].outputPayloadToHeader: the filter has no equivalent",
        ),
        (
            "token locations that differ by rule",
            ra(selected, "    - issuer: https://a\n      fromParams: [t]\n    - issuer: https://b\n"),
            "jwtRules[1]: its fromHeaders/fromParams/fromCookies or forwardOriginalToken differ",
        ),
        (
            "one issuer twice",
            ra(selected, "    - issuer: https://a\n    - issuer: https://a\n"),
            "jwtRules[1].issuer 'https://a': also",
        ),
        (
            "a selector of some of the workloads",
            ra("  selector: {matchLabels: {version: v1}}\n", "    - issuer: https://a\n"),
            "its selector selects only some of the policies' workloads",
        ),
    ] {
        let (code, _, stderr) = run(&text, &[]);
        assert!(code == Some(1) && stderr.contains(expected), "{what}: expected {expected:?}: {stderr}");
    }
}
