"""Istio RequestAuthentication -> the filter's `jwt` block (docs/jwt.md), for make convert.

Read after istio/istio pilot/pkg/security/authn/policy_applier.go
(`convertToEnvoyJwtConfig`): every jwtRule of every RequestAuthentication that applies to
the workload becomes one jwt_authn provider, required as `requires_any [provider,
allow_missing]`; so a request WITHOUT a token passes (it has no request principal and
`requestPrincipals` do not match it), and one with a token that fails verification is
answered 401. The filter's `jwt` step does the same in `mode: "local_then_callout"`
(invalid -> 401 in every mode; a valid token still goes to the CUSTOM check when a rule
selects the request, as ext_authz runs after jwt_authn). A token of an issuer no rule
names and a credential that is not a JWT (an API key after `Bearer `) are refused too
(`unknown_issuer` and `not_jwt: "reject"`), as jwt_authn refuses them (measured in
tests/tests/custom_diff.rs: 401 `Jwt issuer is not configured`, and 401 for the key).

Mapped: issuer, audiences, jwks (inline), jwksUri (-> remote_jwks at the host and port
of the URI, whose cluster the filter names `outbound|<port>||<host>` as Istio does; a
ServiceEntry for that host is what Istio needs too), neither (-> OIDC `discovery` on
the issuer's host, as istiod resolves the issuer's jwks_uri), timeout, fromHeaders
(name, prefix), fromParams, fromCookies, forwardOriginalToken (-> jwt.forward, Istio's
default false), outputClaimToHeaders (-> claims_to_headers). Without any from* field,
jwt_authn's default locations: `Authorization: Bearer <token>`, then the `access_token`
query parameter (envoy jwt_authn config.proto, JwtProvider `from_headers`).

Refused, naming the field: outputPayloadToHeader (the filter forwards claims one header
each, never the whole payload); spaceDelimitedClaims; rules whose token sources or
forwardOriginalToken differ (the filter's token sources and `forward` are global, Istio's
are per rule); two rules with one issuer; a RequestAuthentication whose selector selects
only some of the policies' workloads.
"""
import json
from urllib.parse import urlsplit

# Istio's root namespace (meshConfig.rootNamespace's default): a RequestAuthentication
# there without a selector applies to every workload of the mesh.
ROOT_NAMESPACE = "istio-system"
# jwt_authn's locations when a provider names none (config.proto JwtProvider).
DEFAULT_HEADERS = [{"name": "authorization", "value_prefix": "Bearer "}]
DEFAULT_PARAMS = ["access_token"]
RULE_FIELDS = {"issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams", "fromCookies",
               "forwardOriginalToken", "outputClaimToHeaders", "outputPayloadToHeader", "timeout",
               "spaceDelimitedClaims"}


def applies(doc, namespace, labels):
    """Whether the RequestAuthentication `doc` applies to every workload a policy of
    `namespace` with selector `labels` selects (True), to none (False), or to some only
    (None: converting would check some of them and not the others)."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    ra_namespace = meta.get("namespace", "default")
    ra_labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if ra_namespace != namespace:
        return ra_namespace == ROOT_NAMESPACE and not spec.get("selector")
    if all(labels.get(k) == v for k, v in ra_labels.items()):
        return True
    if any(k in labels and labels[k] != v for k, v in ra_labels.items()):
        return False
    return None


def name_of(doc):
    meta = doc.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def host_port(url, field, refused):
    """(host, port, path) of an http(s) URL, the port from the scheme when absent."""
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused(f"{field} {url!r}: expected an http(s):// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, path


def timeout_ms(value, field, refused, parse):
    try:
        return parse(value)
    except refused as why:
        raise refused(f"{field}: {why}")


def sources(rule):
    """The token locations of one jwtRule, in the filter's shape (jwt_authn's defaults
    when it names none)."""
    headers = [{"name": str(h.get("name")), **({"value_prefix": str(h["prefix"])} if h.get("prefix") else {})}
               for h in rule.get("fromHeaders") or []]
    params = [str(p) for p in rule.get("fromParams") or []]
    cookies = [str(c) for c in rule.get("fromCookies") or []]
    if not headers and not params and not cookies:
        return {"from_headers": DEFAULT_HEADERS, "from_params": DEFAULT_PARAMS}
    out = {}
    if headers:
        out["from_headers"] = headers
    if cookies:
        out["from_cookies"] = cookies
    if params:
        out["from_params"] = params
    return out


def provider(rule, where, refused, parse_timeout):
    """One jwtRule -> one entry of jwt.providers."""
    if not isinstance(rule, dict):
        raise refused(f"{where}: expected a mapping")
    unknown = sorted(set(rule) - RULE_FIELDS)
    if unknown:
        raise refused(f"{where} has {unknown}: not a JWTRule field")
    if rule.get("outputPayloadToHeader"):
        raise refused(f"{where}.outputPayloadToHeader: the filter has no equivalent (it forwards claims one header "
                      "each: use outputClaimToHeaders)")
    if rule.get("spaceDelimitedClaims"):
        raise refused(f"{where}.spaceDelimitedClaims: the filter reads only scope and scp as space-delimited")
    if not rule.get("issuer"):
        raise refused(f"{where}.issuer is required")
    out = {"issuer": str(rule["issuer"])}
    if rule.get("audiences"):
        out["audiences"] = [str(a) for a in rule["audiences"]]
    if rule.get("jwks"):
        try:
            out["jwks"] = json.loads(rule["jwks"]) if isinstance(rule["jwks"], str) else rule["jwks"]
        except ValueError as err:
            raise refused(f"{where}.jwks: not valid JSON: {err}")
    else:
        # istiod resolves jwksUri (or the issuer's OIDC jwks_uri) itself; the filter
        # fetches through the cluster Istio has for that host (a ServiceEntry).
        fetch = {}
        if rule.get("jwksUri"):
            host, port, path = host_port(rule["jwksUri"], f"{where}.jwksUri", refused)
            fetch = {"host": host, "port": port, "path": path}
            key = "remote_jwks"
        else:
            host, port, _ = host_port(out["issuer"], f"{where}.issuer (no jwks or jwksUri: OIDC discovery)", refused)
            fetch = {"host": host, "port": port}
            key = "discovery"
        if rule.get("timeout"):
            fetch["timeout_ms"] = timeout_ms(rule["timeout"], f"{where}.timeout", refused, parse_timeout)
        out[key] = fetch
    claims = {}
    for i, item in enumerate(rule.get("outputClaimToHeaders") or []):
        header, claim = str((item or {}).get("header") or ""), str((item or {}).get("claim") or "")
        if not header or not claim:
            raise refused(f"{where}.outputClaimToHeaders[{i}]: needs header and claim")
        if claim in claims:
            raise refused(f"{where}.outputClaimToHeaders[{i}]: claim {claim!r} to two headers: the filter maps a "
                          "claim to one header")
        claims[claim] = header
    if claims:
        out["claims_to_headers"] = claims
    return out


def jwt_block(docs, namespace, labels, refused, parse_timeout, notes):
    """The filter's `jwt` block for the RequestAuthentications among `docs` that apply to
    the policies' workloads (namespace + selector matchLabels), or None without any."""
    rules, shared = [], None
    for doc in docs:
        verdict = applies(doc, namespace, labels)
        if verdict is None:
            raise refused(f"RequestAuthentication {name_of(doc)}: its selector selects only some of the policies' "
                          "workloads; one WasmPlugin verifies tokens alike on all of them")
        if not verdict:
            notes.append(f"RequestAuthentication {name_of(doc)}: applies to other workloads, ignored")
            continue
        for i, rule in enumerate((doc.get("spec") or {}).get("jwtRules") or []):
            rules.append((f"RequestAuthentication {name_of(doc)} jwtRules[{i}]", rule))
    if not rules:
        return None
    providers, issuers = [], {}
    for where, rule in rules:
        entry = provider(rule, where, refused, parse_timeout)
        if entry["issuer"] in issuers:
            raise refused(f"{where}.issuer {entry['issuer']!r}: also {issuers[entry['issuer']]}: the filter takes one "
                          "provider per issuer")
        issuers[entry["issuer"]] = where
        # The filter's token locations and `forward` are one for all providers.
        mine = (sources(rule), bool(rule.get("forwardOriginalToken")))
        if shared is None:
            shared = (mine, where)
        elif mine != shared[0]:
            raise refused(f"{where}: its fromHeaders/fromParams/fromCookies or forwardOriginalToken differ from "
                          f"{shared[1]}'s: the filter's token sources and forward apply to every issuer")
        providers.append(entry)
    (locations, forward), _ = shared
    block = {"mode": "local_then_callout", "unknown_issuer": "reject", "not_jwt": "reject", **locations, "forward": forward,
             "providers": providers}
    notes.append("RequestAuthentication -> jwt (mode local_then_callout): an invalid token is answered 401 "
                 "(the filter's body and WWW-Authenticate), a request without a token goes on to the CUSTOM "
                 "check with no request principal, as under Istio; so is a credential that is not a JWT (an API key) "
                 "where the RequestAuthentication reads tokens: keep API keys in another header")
    if any("remote_jwks" in p or "discovery" in p for p in providers):
        notes.append("jwksUri / OIDC discovery: the filter fetches the keys through Istio's cluster for the JWKS "
                     "host (outbound|<port>||<host>): that host needs a ServiceEntry (with TLS origination for "
                     "https), where istiod fetched the keys itself")
    if any("claims_to_headers" in p for p in providers):
        notes.append("outputClaimToHeaders -> claims_to_headers: the headers are set after the CUSTOM check "
                     "allows (jwt_authn sets them before ext_authz, so a check that lists them saw them), and a "
                     "client's copy is removed on every request")
    return block
