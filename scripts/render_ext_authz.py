#!/usr/bin/env python3
"""Render Istio policy mode into Envoy config: the native ext_authz filter, as istiod does.

Usage: render_ext_authz.py ENVOY.json MESHCONFIG.yaml POLICY.yaml [POLICY.yaml ...]

ENVOY.json is envoy/envoy.yaml as scripts/render_envoy.py prints it (its auth clusters
already named as Istio names them, `outbound|<port>||<host>`). Each POLICY file may hold
several documents or a List; every AuthorizationPolicy with `action: CUSTOM` in them is
rendered (ALLOW/DENY/AUDIT policies are Istio's RBAC, not this path, and are skipped). The
nebula-authz wasm filter is replaced by what istiod generates for those policies whose
providers are `envoyExtAuthzHttp` extension providers, read from istio/istio:

- pilot/pkg/security/authz/builder/builder.go: `build` groups the CUSTOM policies by
  provider (`providerRules`); each rule becomes one RBAC policy named by `policyName`,
  `istio-ext-authz-<provider>-ns[<ns>]-policy[<name>]-rule[<i>]`; a policy without rules
  gets `rbacPolicyMatchNever` under `rule[0]`. `buildHTTP` then emits, for every provider
  in sorted name order, one pair: `envoy.filters.http.rbac` with those policies as
  `shadow_rules` (action DENY, `shadow_rules_stat_prefix: istio_ext_authz_`) and
  `envoy.filters.http.ext_authz` enabled by `generateFilterMatcherForProvider`: the RBAC
  metadata `istio_ext_authz_shadow_effective_policy_id` starting with
  `istio-ext-authz-<provider>`. Several providers on one workload need istiod's
  PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS flag (without it istiod renders, per
  provider, an RBAC filter that DENIES every request a rule matches); this renders the
  flag's output. A request no rule of a provider matches leaves the metadata as an
  earlier provider's RBAC filter set it (`istio-ext-authz-<earlier>-ns[...`), which does
  not start with this provider's prefix, unless this provider's name is the earlier one's
  followed by `-ns` (`opa` and `opa-ns`; `[` is no DNS label character): then the earlier provider's rules enable this
  provider's check too. scripts/convert_policy.py refuses such a pair.
- builder/extauthz.go `generateHTTPConfig`: the ext_authz filter, every provider field.
- model/model.go `New`: a rule's `from` sources, `to` operations and `when` conditions
  become one RBAC policy: a principal per `from` (ANDing its fields, each a list ORed,
  `not*` lists as `not_id` of the OR) and a permission per `to` likewise; `when` keys join
  every principal (source/request keys) or permission (destination/SNI keys). Field order
  inside the AND is model.go's (`insertFront`).
- model/generator.go: each key's matcher: `principals` and `source.principal` as
  `authenticated.principal_name` with the `spiffe://` prefix (matcher/string.go
  `StringMatcherWithPrefix`: `*` -> regex `.+`, `*x` -> regex `spiffe://.*x`, `x*` ->
  prefix, else exact); `namespaces` as the regex `.*/ns/<ns>/.*` on the same name;
  `ipBlocks`/`source.ip` as `direct_remote_ip`, `remoteIpBlocks`/`remote.ip` as
  `remote_ip` (pilot/pkg/networking/util/util.go `AddrStrToCidrRange`: a bare address is a
  /32 or /128); `requestPrincipals` as `iss` and `sub` of jwt_authn's `payload` metadata,
  split at the last `/`; `request.auth.claims[a][b]`, `audiences`, `presenter` as list
  metadata matchers; `request.headers[h]` as a header matcher (matcher/header.go
  `HeaderMatcher`: `*` presence, `*x` suffix, `x*` prefix, else exact, case-sensitive);
  `hosts` as `:authority` with `HostMatcher` (the same forms, ignore_case); `methods` as
  `:method`; `ports`/`destination.port` as `destination_port`; `destination.ip` as
  `destination_ip`; `connection.sni` as `requested_server_name`; `paths` as `url_path`
  (the path without its query, after the connection manager's normalization) with
  `StringMatcher`, or, holding `{*}`/`{**}`, as Envoy's `uri_template` matcher
  (matcher/template.go: `{*}` -> `*`, `{**}` -> `**`).
- pilot/pkg/security/authn/policy_applier.go `convertToEnvoyJwtConfig`: the
  RequestAuthentications among the policy documents become one `envoy.filters.http.jwt_authn`
  before the pairs (inline `jwks` only here): a provider `origins-<i>` per jwtRule with
  `payload_in_metadata: payload` (what `requestPrincipals` and `request.auth.*` match),
  `forward` = `forwardOriginalToken`, `claim_to_headers` = `outputClaimToHeaders`,
  `scope` and `permission` space-delimited; a request
  without a token passes (`allow_missing`), one with an invalid token is refused (401).
- model/permission.go, model/principal.go: the RBAC shapes (`and_rules`, `or_rules`,
  `not_rule`, `and_ids`, `or_ids`, `not_id`, ...).

A value generator.go cannot turn into a matcher (a bad CIDR or port) is dropped from its
OR, as model.go's `checkError` does for CUSTOM (a DENY action: the rule gets wider).

The side (a) of tests/tests/ext_authz_diff.rs and tests/tests/custom_diff.rs; side (b) is
scripts/convert_policy.py's WasmPlugin under the same Envoy.
"""
import argparse
import ipaddress
import json
import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_policy import Refused, documents, mesh_config, pick_mesh, provider_block  # noqa: E402

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RBAC = "envoy.filters.http.rbac"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
SHADOW_PREFIX = "istio_ext_authz_"
MATCH_PREFIX = "istio-ext-authz"
SPIFFE = "spiffe://"


def header_patterns(names):
    """Istio's generateHeaders: `x*` prefix, `*x` suffix, else exact; all ignore case."""
    if not names:
        return None
    patterns = []
    for name in names:
        name = str(name)
        if name.startswith("*"):
            patterns.append({"suffix": name[1:], "ignore_case": True})
        elif name.endswith("*"):
            patterns.append({"prefix": name[:-1], "ignore_case": True})
        else:
            patterns.append({"exact": name, "ignore_case": True})
    return {"patterns": patterns}


def ext_authz_filter(ext, cluster, provider):
    """generateHTTPConfig, field for field."""
    host = str(ext["service"]).split("/", 1)[-1]
    service = {
        "server_uri": {"uri": f"http://{host}", "cluster": cluster, "timeout": str(ext.get("timeout") or "600s")},
    }
    if ext.get("pathPrefix"):
        service["path_prefix"] = ext["pathPrefix"]
    additional = ext.get("includeAdditionalHeadersInCheck") or {}
    if additional:
        service["authorization_request"] = {
            "headers_to_add": [{"key": k, "value": str(additional[k])} for k in sorted(additional)]}
    if any(ext.get(k) for k in ("headersToUpstreamOnAllow", "headersToDownstreamOnDeny", "headersToDownstreamOnAllow")):
        response = {}
        for field, key in (("allowed_upstream_headers", "headersToUpstreamOnAllow"),
                           ("allowed_client_headers", "headersToDownstreamOnDeny"),
                           ("allowed_client_headers_on_success", "headersToDownstreamOnAllow")):
            patterns = header_patterns(ext.get(key))
            if patterns:
                response[field] = patterns
        service["authorization_response"] = response
    config = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": bool(ext.get("failOpen")),
        "http_service": service,
        "filter_enabled_metadata": {
            "filter": RBAC,
            "path": [{"key": SHADOW_PREFIX + "shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": f"{MATCH_PREFIX}-{provider}"}},
        },
    }
    if ext.get("statusOnError"):
        config["status_on_error"] = {"code": int(ext["statusOnError"])}
    allowed = header_patterns(ext.get("includeRequestHeadersInCheck")) or header_patterns(
        ext.get("includeHeadersInCheck"))
    if allowed:
        config["allowed_headers"] = allowed
    body = ext.get("includeRequestBodyInCheck")
    if body is not None:
        config["with_request_body"] = {
            "max_request_bytes": int(body.get("maxRequestBytes") or 0),
            "allow_partial_message": bool(body.get("allowPartialMessage")),
            "pack_as_bytes": bool(body.get("packAsBytes")),
        }
    return {"name": EXT_AUTHZ, "typed_config": config}



# --- matcher/string.go, matcher/header.go ---------------------------------------------
def string_matcher(value, prefix=""):
    """StringMatcherWithPrefix: `*` is the regex `.+` (the prefix dropped), a leading `*` a
    suffix (a regex `<prefix>.*<quoted rest>` with a prefix), a trailing `*` a prefix, else
    an exact match; a `*` anywhere else is a literal byte."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        if not prefix:
            return {"suffix": value[1:]}
        return {"safe_regex": {"regex": prefix + ".*" + re.escape(value[1:])}}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    return {"exact": prefix + value}


def header_matcher(name, value, ignore_case=False):
    """HeaderMatcher (ignore_case: HostMatcher): `*` presence, `*x` suffix, `x*` prefix."""
    if value == "*":
        return {"name": name, "present_match": True}
    if value.startswith("*"):
        match = {"suffix": value[1:]}
    elif value.endswith("*"):
        match = {"prefix": value[:-1]}
    else:
        match = {"exact": value}
    if ignore_case:
        match["ignore_case"] = True
    return {"name": name, "string_match": match}


def cidr(value):
    """util.AddrStrToCidrRange: a CIDR as written, a bare address as /32 or /128; None
    when Go's netip would not parse it."""
    try:
        if "/" in value:
            address, bits = value.split("/", 1)
            ip = ipaddress.ip_address(address)
            if not bits.isdigit() or int(bits) > ip.max_prefixlen:
                return None
            return {"address_prefix": str(ip), "prefix_len": int(bits)}
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    return {"address_prefix": str(ip), "prefix_len": ip.max_prefixlen}


def port(value):
    """util.go convertToPort: a decimal from 0 to 65535, else None."""
    return int(value) if str(value).isdigit() and int(value) <= 65535 else None


def jwt_claim(claim, match):
    """MetadataStringMatcherForJWTClaim: jwt_authn's `payload` metadata, one claim."""
    return {"metadata": {"filter": JWT_AUTHN, "path": [{"key": "payload"}, {"key": claim}],
                         "value": {"string_match": match}}}


def jwt_claims_list(claims, values):
    """MetadataListValueMatcherForJWTClaims (useExtendedJwt): the claim is a list holding
    one of the values, or a string equal to one."""
    matchers = [{"string_match": string_matcher(v)} for v in values]
    value = matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}
    return {"metadata": {"filter": JWT_AUTHN, "path": [{"key": "payload"}] + [{"key": c} for c in claims],
                         "value": {"or_match": {"value_matchers": [{"list_match": {"one_of": value}}, value]}}}}


def bracketed(text):
    """util.go extractNameInNestedBrackets: `[a][b]` -> [a, b]; `[a.b]` -> [a.b]."""
    names = re.findall(r"\[([^\[\]]*)\]", text)
    if names and "".join(f"[{n}]" for n in names) == text:
        return names
    if text.startswith("[") and text.endswith("]"):
        return [text[1:-1]]
    return None


# --- model/generator.go: one value -> a permission or principal (None: dropped) ------
def request_principal(values):
    """requestPrincipalGenerator.extendedPrincipal: iss/sub split at the last `/`."""
    any_ = {"safe_regex": {"regex": ".+"}}
    out = []
    for value in values:
        idx = value.rfind("/")
        found = idx >= 0
        iss, sub = (value[:idx], value[idx + 1:]) if found else (value, "")
        if value == "*":
            m_iss, m_sub = any_, any_
        elif value.startswith("*"):
            if found:
                m_iss = any_ if iss == "*" else {"suffix": iss[1:]}
                m_sub = {"exact": sub}
            else:
                m_iss, m_sub = any_, {"suffix": value[1:]}
        elif value.endswith("*"):
            if found:
                m_iss = {"exact": iss}
                m_sub = any_ if sub == "*" else {"prefix": sub[:-1]}
            else:
                m_iss, m_sub = {"prefix": value[:-1]}, any_
        else:
            m_iss, m_sub = {"exact": iss}, {"exact": sub}
        out.append({"and_ids": {"ids": [jwt_claim("iss", m_iss), jwt_claim("sub", m_sub)]}})
    if not out:
        return None
    return out[0] if len(out) == 1 else {"or_ids": {"ids": out}}


def principal_of(key, value):
    if key in ("source.principal", "principals"):
        return {"authenticated": {"principal_name": string_matcher(value, SPIFFE)}}
    if key in ("source.namespace", "namespaces"):
        regex = ".*".join(re.escape(part) for part in value.split("*"))
        return {"authenticated": {"principal_name": {"safe_regex": {"regex": f".*/ns/{regex}/.*"}}}}
    if key in ("source.ip", "ipBlocks"):
        found = cidr(value)
        return found and {"direct_remote_ip": found}
    if key in ("remote.ip", "remoteIpBlocks"):
        found = cidr(value)
        return found and {"remote_ip": found}
    if key.startswith("request.headers"):
        names = bracketed(key[len("request.headers"):])
        return names and len(names) == 1 and {"header": header_matcher(names[0], value)} or None
    raise Refused(f"no principal for {key}")


def extended_principal(key, values):
    if key in ("request.auth.principal", "requestPrincipals"):
        return request_principal(values)
    if key == "request.auth.audiences":
        return jwt_claims_list(["aud"], values)
    if key == "request.auth.presenter":
        return jwt_claims_list(["azp"], values)
    if key.startswith("request.auth.claims"):
        claims = bracketed(key[len("request.auth.claims"):])
        return claims and jwt_claims_list(claims, values)
    raise Refused(f"no principal for {key}")


def path_permission(value):
    if "{*}" in value or "{**}" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        return {"uri_template": {"name": "uri-template", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": template}}}
    return {"url_path": {"path": string_matcher(value)}}


def permission_of(key, value):
    if key == "hosts":
        return {"header": header_matcher(":authority", value, ignore_case=True)}
    if key == "methods":
        return {"header": header_matcher(":method", value)}
    if key == "paths":
        return path_permission(value)
    if key in ("ports", "destination.port"):
        found = port(value)
        return None if found is None else {"destination_port": found}
    if key == "destination.ip":
        found = cidr(value)
        return found and {"destination_ip": found}
    if key == "connection.sni":
        return {"requested_server_name": string_matcher(value)}
    raise Refused(f"no permission for {key}")


EXTENDED = ("request.auth.principal", "requestPrincipals", "request.auth.audiences", "request.auth.presenter")
PERMISSION_WHEN = ("destination.ip", "destination.port", "connection.sni")
PRINCIPAL_WHEN = ("source.ip", "remote.ip", "source.namespace", "source.principal", "request.auth.principal",
                  "request.auth.audiences", "request.auth.presenter")


def is_extended(key):
    return key in EXTENDED or key.startswith("request.auth.claims")


# --- model/model.go: rule -> policy ---------------------------------------------------
def condition(kind, key, values, not_values):
    """rule.permission / rule.principal: the values ORed, the notValues as NOT(OR), each
    only when its list yields a matcher; extended keys match the whole list at once."""
    out = []
    make = permission_of if kind == "permission" else principal_of
    or_key, not_key = ("or_rules", "not_rule") if kind == "permission" else ("or_ids", "not_id")
    inner = "rules" if kind == "permission" else "ids"
    for items, negate in ((values, False), (not_values, True)):
        if not items:
            continue
        if is_extended(key):
            one = extended_principal(key, [str(v) for v in items])
        else:
            matched = [m for m in (make(key, str(v)) for v in items) if m]
            one = {or_key: {inner: matched}} if matched else None
        if one:
            out.append({not_key: one} if negate else one)
    return out


def when_key(key):
    """Which side of the policy a `when` key joins (model.go `New`), or a Refused for an
    unknown key (istiod skips such a rule: `authzmodel.New` fails)."""
    if key in PERMISSION_WHEN:
        return "permission"
    if key in PRINCIPAL_WHEN or key.startswith("request.headers") or key.startswith("request.auth.claims"):
        return "principal"
    if key.startswith("experimental.envoy.filters."):
        raise Refused(f"when key {key!r}: Envoy metadata; not rendered here")
    raise Refused(f"when key {key!r}: unknown attribute")


def rule_policy(rule):
    base = {"permission": [], "principal": []}
    for cond in rule.get("when") or []:
        key = str(cond.get("key"))
        base[when_key(key)].append((key, cond.get("values") or [], cond.get("notValues") or []))
    principals = []
    for src in [f.get("source") or {} for f in rule.get("from") or []] or [None]:
        fields = []
        if src is not None:
            # insertFront in model.go's call order: the last inserted comes first.
            for key, not_key in (("principals", "notPrincipals"), ("requestPrincipals", "notRequestPrincipals"),
                                 ("namespaces", "notNamespaces"), ("remoteIpBlocks", "notRemoteIpBlocks"),
                                 ("ipBlocks", "notIpBlocks")):
                if src.get(key) or src.get(not_key):
                    fields.append((key, src.get(key) or [], src.get(not_key) or []))
        ids = [c for key, vs, nvs in fields + base["principal"] for c in condition("principal", key, vs, nvs)]
        principals.append({"and_ids": {"ids": ids or [{"any": True}]}})
    permissions = []
    for op in [t.get("operation") or {} for t in rule.get("to") or []] or [None]:
        fields = []
        if op is not None:
            for key in ("hosts", "methods", "paths", "ports"):
                not_key = "not" + key[0].upper() + key[1:]
                if op.get(key) or op.get(not_key):
                    fields.append((key, op.get(key) or [], op.get(not_key) or []))
        rules = [c for key, vs, nvs in fields + base["permission"] for c in condition("permission", key, vs, nvs)]
        permissions.append({"and_rules": {"rules": rules or [{"any": True}]}})
    return {"permissions": permissions, "principals": principals}


MATCH_NEVER = {"permissions": [{"not_rule": {"any": True}}], "principals": [{"not_id": {"any": True}}]}


def custom_policies(docs):
    """The CUSTOM AuthorizationPolicies among `docs`, in order."""
    return [d for d in docs if d.get("kind", "AuthorizationPolicy") == "AuthorizationPolicy"
            and isinstance(d.get("spec"), dict) and d["spec"].get("action") == "CUSTOM"]


def provider_rules(policies):
    """builder.go `build`: provider name -> {policy name: RBAC policy}."""
    out = {}
    for doc in policies:
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        provider = (spec.get("provider") or {}).get("name")
        if not provider:
            raise Refused(f"{meta.get('namespace')}/{meta.get('name')}: no provider")
        rules = out.setdefault(provider, {})
        prefix = f"{MATCH_PREFIX}-{provider}-ns[{meta.get('namespace', 'default')}]-policy[{meta.get('name')}]"
        for i, rule in enumerate(spec.get("rules") or []):
            try:
                rules[f"{prefix}-rule[{i}]"] = rule_policy(rule or {})
            except Refused:
                continue  # authzmodel.New failed: istiod skips the rule
        if not spec.get("rules"):
            rules[f"{prefix}-rule[0]"] = MATCH_NEVER
    return out


def jwt_filter(docs):
    """convertToEnvoyJwtConfig over the jwtRules of every RequestAuthentication in `docs`,
    or None without any."""
    rules = [r for d in docs if d.get("kind") == "RequestAuthentication"
             for r in ((d.get("spec") or {}).get("jwtRules") or [])]
    if not rules:
        return None
    providers, inner, outer = {}, [], []
    for i, rule in enumerate(rules):
        if not rule.get("jwks"):
            raise Refused(f"jwtRules[{i}]: only an inline jwks is rendered here")
        provider = {
            "issuer": rule.get("issuer", ""),
            "audiences": rule.get("audiences") or [],
            "forward": bool(rule.get("forwardOriginalToken")),
            "payload_in_metadata": "payload",
            "normalize_payload_in_metadata": {
                "space_delimited_claims": ["scope", "permission"] + list(rule.get("spaceDelimitedClaims") or [])},
            "local_jwks": {"inline_string": rule["jwks"]},
        }
        if rule.get("fromHeaders"):
            provider["from_headers"] = [{"name": h["name"], "value_prefix": h.get("prefix", "")}
                                        for h in rule["fromHeaders"]]
        for key, field in (("fromParams", "from_params"), ("fromCookies", "from_cookies")):
            if rule.get(key):
                provider[field] = rule[key]
        if rule.get("outputClaimToHeaders"):
            provider["claim_to_headers"] = [{"header_name": c["header"], "claim_name": c["claim"]}
                                            for c in rule["outputClaimToHeaders"]]
        name = f"origins-{i}"
        providers[name] = provider
        inner.append({"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}})
        outer.append({"provider_name": name})
    requires = inner[0] if len(inner) == 1 else {
        "requires_any": {"requirements": outer + [{"requires_all": {"requirements": inner}}]}}
    return {"name": JWT_AUTHN, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypass_cors_preflight": True,
    }}


def rbac_filter(policies):
    return {"name": RBAC, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "shadow_rules": {"action": "DENY", "policies": policies},
        "shadow_rules_stat_prefix": SHADOW_PREFIX,
    }}


def render(config, mesh_doc, policy_docs):
    mesh = mesh_config(mesh_doc)
    names = [c["name"] for c in config["static_resources"]["clusters"]]
    pairs = []
    for provider, rules in sorted(provider_rules(custom_policies(policy_docs)).items()):
        ext = provider_block(mesh, provider)
        host = str(ext["service"]).split("/", 1)[-1]
        cluster = f"outbound|{int(ext['port'])}||{host}"
        if cluster not in names:
            raise Refused(f"the Envoy config has no cluster {cluster!r} (render it with --auth-cluster {cluster})")
        pairs += [rbac_filter(rules), ext_authz_filter(ext, cluster, provider)]
    jwt = jwt_filter(policy_docs)
    if jwt:
        pairs.insert(0, jwt)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = []
    for f in hcm["http_filters"]:
        filters += pairs if f["name"] == "nebula-authz" else [f]
    hcm["http_filters"] = filters
    return config


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("envoy", type=Path, help="envoy config as render_envoy.py prints it (JSON)")
    p.add_argument("meshconfig", type=Path)
    p.add_argument("policy", type=Path, nargs="+", help="AuthorizationPolicy files (several documents each)")
    args = p.parse_args()
    try:
        mesh_doc = pick_mesh(args.meshconfig, documents(args.meshconfig))
        config = render(json.loads(args.envoy.read_text()), mesh_doc,
                        [doc for path in args.policy for doc in documents(path)])
    except Refused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    json.dump(config, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
