//! The filter as a mesh runs it: plugin configuration taken from istio/wasmplugin.yaml's
//! `pluginConfig` (as istiod hands it to Envoy, a `StringValue` of JSON) and the auth
//! service behind a cluster named the Istio way.

use nebula_authz_tests::Env;

const MANIFEST: &str = "istio/wasmplugin.yaml";
const ISTIO_CLUSTER: &str = "outbound|4300||auth.prefect.svc.cluster.local";

#[test]
fn wasmplugin_config_calls_the_istio_cluster() {
    let env = Env::builder().plugin_config_from_wasmplugin(MANIFEST).auth_cluster_name(ISTIO_CLUSTER).start();

    let resp = env.get_as("/api/flows", "allow:mesh-user");
    env.assert_allowed_as("allow through the Istio-named cluster", &resp, "mesh-user");
    let call = env.auth.requests().last().cloned().expect("the auth service was called");
    assert_eq!(
        call.header("host").as_deref(),
        Some("auth.prefect.svc.cluster.local:4300"),
        "the callout's authority is derived from auth.host and auth.port"
    );

    env.assert_denied("deny through the Istio-named cluster", &env.get_as("/api/flows", "deny"), 1);

    let public = env.get("/api/health", &[]);
    env.check(public.status == 200 && public.proxied(), "public path", &public);
}

/// The cluster name is what routes the callout: the plain name `auth` no longer exists.
#[test]
fn a_config_naming_another_cluster_fails_closed() {
    let env = Env::builder().plugin_config(r#"{"auth": {"cluster": "auth"}}"#).auth_cluster_name(ISTIO_CLUSTER).start();
    let resp = env.get_as("/api/flows", "allow:mesh-user");
    env.assert_fail_closed("unknown cluster", &resp, 403);
    assert_eq!(env.auth.count(), 0, "no callout reached the auth service");
    assert_eq!(env.upstream.count(), 0, "nothing reached the upstream");
}
