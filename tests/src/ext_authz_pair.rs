//! One Istio policy-mode setup run two ways, for the comparisons with Envoy's own
//! ext_authz: (a) as istiod renders the `envoyExtAuthzHttp` provider
//! (scripts/render_ext_authz.py) and (b) through `make convert`
//! (scripts/convert_policy.py) into the filter; both in Envoy with the connection manager
//! istiod renders for a sidecar, against one recording auth service and echo upstream.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::envoy::Tools;
use crate::{repo_root, Env, TempDir};

/// The AuthorizationPolicy CUSTOM of policy mode (the default public paths as globs).
pub const POLICY: &str = "tests/data/policy-mode/authorizationpolicy.yaml";
/// The auth cluster as Istio names it for the providers' `auth.prefect.svc.cluster.local:4300`.
pub const ISTIO_CLUSTER: &str = "outbound|4300||auth.prefect.svc.cluster.local";

/// Both proxies; field order is drop order (the filter's Envoy uses ext_authz's mocks).
pub struct Pair {
    pub filter: Env,
    pub ext_authz: Env,
}

/// `make convert`'s plugin config for `mesh` and `policy` (panics, with its stderr, if
/// the converter refuses).
pub fn convert(mesh: &Path, policy: &Path) -> String {
    convert_all(mesh, &[policy.to_path_buf()], &[])
}

/// `make convert`'s plugin config for `mesh` and every CUSTOM policy in `policies`, with
/// the converter's options `options` (e.g. `--jwt FILE`); panics, with its stderr, if the
/// converter refuses.
pub fn convert_all(mesh: &Path, policies: &[PathBuf], options: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(Tools::locate(false).python)
        .arg(repo_root().join("scripts/convert_policy.py"))
        .arg(mesh)
        .args(policies)
        .args(options)
        .arg("--config-only")
        .output()
        .expect("run scripts/convert_policy.py");
    assert!(out.status.success(), "{}: conversion failed: {}", mesh.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the converted config is UTF-8")
}

/// Starts both proxies for the mesh config at `mesh` (a file) and `policy`.
pub fn start(mesh: &Path, policy: &Path) -> Pair {
    let ext_authz = Env::builder().ext_authz(mesh, policy).auth_cluster_name(ISTIO_CLUSTER).istio_sidecar().start();
    let config = convert(mesh, policy);
    let filter = Env::builder()
        .plugin_config(&config)
        .auth_cluster_name(ISTIO_CLUSTER)
        .istio_sidecar()
        .mocks_of(&ext_authz)
        .start();
    Pair { filter, ext_authz }
}

/// Starts both proxies for a bare MeshConfig whose only provider, `authz-http-redirect`,
/// is `auth.prefect.svc.cluster.local:4300` with the `envoyExtAuthzHttp` fields of
/// `fields` (YAML lines at the provider's indentation, e.g. `"headersToUpstreamOnAllow: [authorization]"`),
/// under the policy-mode AuthorizationPolicy.
pub fn start_provider(fields: &[&str]) -> Pair {
    let dir = TempDir::new("nebula-ext-authz-pair");
    let mesh = dir.path().join("meshconfig.yaml");
    std::fs::write(&mesh, provider_yaml(fields)).expect("write the mesh config");
    // Both renderings read the file at start; the directory may go.
    start(&mesh, &repo_root().join(POLICY))
}

/// A bare MeshConfig with one `envoyExtAuthzHttp` provider holding `fields`.
pub fn provider_yaml(fields: &[&str]) -> String {
    let mut yaml = String::from(
        "extensionProviders:\n  - name: authz-http-redirect\n    envoyExtAuthzHttp:\n      \
         service: auth.prefect.svc.cluster.local\n      port: 4300\n",
    );
    for field in fields {
        yaml.push_str(&format!("      {field}\n"));
    }
    yaml
}
