//! The Envoy cluster and `:authority` of a service the filter calls (the auth service,
//! a JWKS endpoint): below the features that name one, so they share one derivation.

use crate::error::ConfigError;

/// A service the filter calls, named by `<at>.cluster` as given, or Istio's way by
/// `<at>.host`/`<at>.port` (`outbound|<port>||<fqdn>`); the authority defaults to
/// `host:port` or the cluster name. Shared by `auth` (policy/auth.rs) and the JWT
/// `remote_jwks` (jwt/jwt_config.rs).
pub(crate) fn cluster_and_authority(
    at: &str,
    what: &str,
    cluster: Option<&str>,
    host: Option<&str>,
    port: Option<u16>,
) -> Result<(String, String), ConfigError> {
    let host = match (host, port) {
        (Some(host), Some(port)) => {
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                return Err(ConfigError::new(format!("{at}.host"), format!("{host:?} is not a host name")));
            }
            Some((host, port))
        }
        (Some(_), None) => return Err(ConfigError::new(format!("{at}.port"), format!("is required with {at}.host"))),
        (None, Some(_)) => return Err(ConfigError::new(format!("{at}.host"), format!("is required with {at}.port"))),
        (None, None) => None,
    };
    match (cluster, host) {
        (Some(cluster), _) if cluster.trim().is_empty() => {
            Err(ConfigError::new(format!("{at}.cluster"), format!("must name the Envoy cluster of {what}")))
        }
        (Some(cluster), Some((host, port))) => Ok((cluster.to_owned(), format!("{host}:{port}"))),
        (Some(cluster), None) => Ok((cluster.to_owned(), cluster.to_owned())),
        (None, Some((host, port))) => Ok((format!("outbound|{port}||{host}"), format!("{host}:{port}"))),
        (None, None) => Err(ConfigError::new(
            at,
            format!("name {what}: {at}.cluster (an Envoy cluster) or {at}.host and {at}.port (Istio)"),
        )),
    }
}
