#!/usr/bin/env python3
"""Render Istio policy mode into Envoy config: the native ext_authz filter, as istiod does.

Usage: render_ext_authz.py ENVOY.json MESHCONFIG.yaml POLICY.yaml > envoy-extauthz.json

ENVOY.json is envoy/envoy.yaml as scripts/render_envoy.py prints it (its auth cluster
already named as Istio names it, `outbound|<port>||<host>`). The nebula-authz wasm filter
is replaced by what istiod generates for an AuthorizationPolicy CUSTOM whose provider is
an `envoyExtAuthzHttp` extension provider (istio/istio
pilot/pkg/security/authz/builder/extauthz.go `generateHTTPConfig`, and the RBAC shadow
rules of the CUSTOM action that gate it):

- `envoy.filters.http.rbac` with `shadow_rules` (action DENY): one policy per rule, named
  `istio-ext-authz-<provider>-ns[<ns>]-policy[<name>]-rule[<i>]`; a request the rule
  matches gets that name in the filter's dynamic metadata;
- `envoy.filters.http.ext_authz`, enabled by that metadata (`filter_enabled_metadata`),
  with every provider field mapped as istiod maps it.

The side (a) of tests/tests/ext_authz_diff.rs; side (b) is scripts/convert_policy.py's
WasmPlugin under the same Envoy.
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_policy import Refused, mesh_config, provider_block  # noqa: E402

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RBAC = "envoy.filters.http.rbac"
SHADOW_PREFIX = "istio_ext_authz_"


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
            "value": {"string_match": {"prefix": f"istio-ext-authz-{provider}"}},
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


def string_match(glob):
    """Istio's StringMatcher for a path glob (matcher/string.go)."""
    if glob == "*":
        return {"safe_regex": {"regex": ".+"}}
    if glob.startswith("*"):
        return {"suffix": glob[1:]}
    if glob.endswith("*"):
        return {"prefix": glob[:-1]}
    return {"exact": glob}


def operation_rules(operation):
    """The `to.operation` paths/notPaths of a rule as RBAC permission rules (methods, hosts
    and ports are refused by convert_policy.py and not rendered here either)."""
    rules = []
    if operation.get("paths"):
        rules.append({"or_rules": {"rules": [{"url_path": {"path": string_match(str(p))}}
                                             for p in operation["paths"]]}})
    if operation.get("notPaths"):
        rules.append({"not_rule": {"or_rules": {"rules": [{"url_path": {"path": string_match(str(p))}}
                                                          for p in operation["notPaths"]]}}})
    return rules or [{"any": True}]


def rbac_filter(policy_doc, provider):
    meta = policy_doc.get("metadata") or {}
    spec = policy_doc.get("spec") or {}
    policies = {}
    for i, rule in enumerate(spec.get("rules") or []):
        to = (rule.get("to") or [{}])[0].get("operation") or {}
        name = f"istio-ext-authz-{provider}-ns[{meta.get('namespace', 'default')}]-policy[{meta.get('name')}]-rule[{i}]"
        policies[name] = {"permissions": [{"and_rules": {"rules": operation_rules(to)}}],
                          "principals": [{"and_ids": {"ids": [{"any": True}]}}]}
    return {"name": RBAC, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "shadow_rules": {"action": "DENY", "policies": policies},
        "shadow_rules_stat_prefix": SHADOW_PREFIX,
    }}


def render(config, mesh_doc, policy_doc):
    provider = ((policy_doc.get("spec") or {}).get("provider") or {}).get("name")
    ext = provider_block(mesh_config(mesh_doc), provider)
    host = str(ext["service"]).split("/", 1)[-1]
    cluster = f"outbound|{int(ext['port'])}||{host}"
    names = [c["name"] for c in config["static_resources"]["clusters"]]
    if cluster not in names:
        raise Refused(f"the Envoy config has no cluster {cluster!r} (render it with --auth-cluster {cluster})")
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = []
    for f in hcm["http_filters"]:
        if f["name"] == "nebula-authz":
            filters += [rbac_filter(policy_doc, provider), ext_authz_filter(ext, cluster, provider)]
        else:
            filters.append(f)
    hcm["http_filters"] = filters
    return config


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("envoy", type=Path, help="envoy config as render_envoy.py prints it (JSON)")
    p.add_argument("meshconfig", type=Path)
    p.add_argument("policy", type=Path)
    args = p.parse_args()
    try:
        config = render(json.loads(args.envoy.read_text()), yaml.safe_load(args.meshconfig.read_text()) or {},
                        yaml.safe_load(args.policy.read_text()) or {})
    except Refused as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    json.dump(config, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
