#!/usr/bin/env python3
"""Convert Istio policy mode (ext_authz providers + AuthorizationPolicies CUSTOM) to a WasmPlugin.

Usage: convert_policy.py MESHCONFIG.yaml POLICY.yaml [POLICY.yaml ...] [--jwt JWT.json]
       [--url oci://...] [--config-only]

MESHCONFIG is the mesh config holding `extensionProviders`: the `istio` ConfigMap
(data.mesh), an IstioOperator (spec.meshConfig), istiod Helm values (meshConfig) or a
bare MeshConfig. Each POLICY file holds AuthorizationPolicies (several YAML documents or
a `kubectl get -o yaml` List); every one with `action: CUSTOM` is converted, and they
must share one namespace and one selector (or targetRef): one WasmPlugin applies to one
set of workloads, so policies for different workloads are refused, naming them; convert
each set on its own. ALLOW/DENY/AUDIT policies stay with Istio's RBAC (a note says so).
Prints the WasmPlugin (istio/wasmplugin.yaml with the converted pluginConfig, namespace
and selector), or with --config-only the plugin JSON. Notes go to stderr.

Two output shapes:
- One policy whose one rule is only `to.operation.notPaths` (with `paths` unset, `*` or
  `/*`), the shape policy mode always had: the provider becomes the filter's `auth` block
  and the notPaths `public_paths` (the shape the filter has enforced since policy mode;
  tests/tests/policy_mode.rs proves these public paths never cover a path Istio's notPaths
  did not). A notPaths glob public_paths cannot hold exactly (`*.js`, `{*}`) takes the
  second shape instead.
- Anything else: `providers` (every provider a policy names, in sorted name order:
  istiod's order, builder.go `buildHTTP`) and `policies` (each `<namespace>/<name>`, its
  provider and its rules copied verbatim); the filter checks a request with a provider
  when a rule of a policy naming it matches, as Istio's CUSTOM action does.

Every field of the `envoyExtAuthzHttp` provider maps (the filter's `protocol: ext_authz`
sends what Envoy's ext_authz sends). Refused (exit 1, one `error:` line naming the field),
because the filter could not enforce it exactly: failOpen: true (the filter fails
closed); gRPC providers; includeAdditionalHeadersInCheck command operators the filter
cannot print (%UPSTREAM_HOST%, %DOWNSTREAM_DIRECT_REMOTE_ADDRESS%, ...); providers with
different statusOnError (the filter has one); includeRequestBodyInCheck with several
providers (a body goes to one); providers `x` and `x-ns` (istiod's prefix match on rule
names runs `x-ns`'s check on `x`'s rules); a `when` key with no proxy-wasm equivalent
(`experimental.envoy.filters.*`, `source.serviceAccount`, `source.trustDomain`) and the
`serviceAccounts`/`trustDomains` sources; a dry-run policy (`istio.io/dry-run`); and
`requestPrincipals` or `request.auth.*` with neither a RequestAuthentication of the
workload nor --jwt (the filter reads them from its own `jwt` step).

The RequestAuthentications among the POLICY files that apply to the policies' workloads
become the filter's `jwt` block (scripts/request_authentication.py, after istiod's
policy_applier.go); --jwt gives a block of your own instead. `ipBlocks`,
`notIpBlocks` and `source.ip` convert as they are: Istio matches the TCP peer, proxy-wasm
exposes only the address Envoy settled on (on a sidecar, the caller's X-Forwarded-For),
so when an X-Forwarded-For entry names that address the filter treats the peer as
unknown and such a rule selects the request (the check runs; a note says so).
"""
import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from request_authentication import jwt_block

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "istio" / "wasmplugin.yaml"
# Client headers removed from every request (the filter's strip_headers).
IDENTITY_STRIP = ("x-nebula-*",)


class Refused(Exception):
    pass


def mesh_config(doc):
    """The MeshConfig inside the shapes users copy it from."""
    if doc.get("kind") == "ConfigMap":
        return yaml.safe_load((doc.get("data") or {}).get("mesh") or "") or {}
    if doc.get("kind") == "IstioOperator":
        return (doc.get("spec") or {}).get("meshConfig") or {}
    if "meshConfig" in doc:
        return doc["meshConfig"] or {}
    return doc


def provider_block(mesh, name):
    for provider in mesh.get("extensionProviders") or []:
        if provider.get("name") == name:
            if "envoyExtAuthzHttp" in provider:
                return provider["envoyExtAuthzHttp"]
            kinds = sorted(set(provider) - {"name"})
            raise Refused(f"extension provider {name!r} is {kinds}: only envoyExtAuthzHttp converts "
                          "(the filter calls the auth service over HTTP)")
    raise Refused(f"no extensionProviders entry named {name!r} in the mesh config")


def timeout_ms(value):
    """A protobuf Duration as Istio reads it (`5s`, `0.25s`), or `250ms`."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", str(value).strip())
    if not match:
        raise Refused(f"timeout {value!r}: expected a duration like 5s, 0.5s or 500ms")
    ms = float(match.group(1)) * (1 if match.group(2) == "ms" else 1000)
    if ms != int(ms) or not 1 <= ms <= 600_000:
        raise Refused(f"timeout {value!r}: the filter takes whole milliseconds from 1 ms to 600 s")
    return int(ms)


def convert_provider(ext, notes):
    """MeshConfig envoyExtAuthzHttp -> the filter's `auth` block (protocol ext_authz: the
    callout Envoy's ext_authz sends) and status_on_error. Every field Istio has maps;
    only failOpen: true is refused (the filter always fails closed), and command
    operators the filter cannot print."""
    if ext.get("failOpen"):
        raise Refused("failOpen: true: the filter always fails closed (an unreachable auth service denies); "
                      "remove failOpen or set it to false to convert")
    unknown = sorted(set(ext) - {
        "service", "port", "timeout", "pathPrefix", "failOpen", "statusOnError", "includeRequestHeadersInCheck",
        "includeHeadersInCheck", "includeAdditionalHeadersInCheck", "headersToUpstreamOnAllow",
        "headersToDownstreamOnAllow", "headersToDownstreamOnDeny", "includeRequestBodyInCheck"})
    if unknown:
        raise Refused(f"envoyExtAuthzHttp fields {unknown} are not known to this converter")

    service = str(ext.get("service") or "")
    host = service.split("/", 1)[-1]  # "[<namespace>/]<hostname>"
    if "." not in host:
        raise Refused(f"service {service!r}: use the fully qualified host (auth.<namespace>.svc.cluster.local), "
                      "which is what names Istio's cluster")
    if "port" not in ext:
        raise Refused("port is required")
    auth = {"host": host, "port": int(ext["port"]), "protocol": "ext_authz"}
    if ext.get("pathPrefix"):
        auth["path_prefix"] = str(ext["pathPrefix"])
    auth["timeout_ms"] = timeout_ms(ext.get("timeout") or "600s")  # Istio's default: 600 s
    if not ext.get("timeout"):
        notes.append("timeout unset: Istio's default, 600 s, written out (auth.timeout_ms: 600000): a request "
                     "waits up to 10 minutes for an auth service that does not answer; set the provider's "
                     "timeout (e.g. 5s) to bound it")
    # istiod reads includeHeadersInCheck (deprecated) only without includeRequestHeadersInCheck.
    request = ext.get("includeRequestHeadersInCheck") or ext.get("includeHeadersInCheck")
    auth["request_headers"] = [str(h) for h in request or []]
    additional = ext.get("includeAdditionalHeadersInCheck") or {}
    if additional:
        auth["headers_to_add"] = {str(k): str(additional[k]) for k in sorted(additional)}
        for name, value in auth["headers_to_add"].items():
            check_operators(name, value)
        if uses_hostname(auth):
            notes.append("includeAdditionalHeadersInCheck: %HOSTNAME% prints the proxy's HOSTNAME variable (the "
                         "pod's host name): the WasmPlugin gets vmConfig.env HOSTNAME from the host; with "
                         "--config-only, give the VM that variable yourself (docs/configuration.md)")
        if any("%REQ(" in v.replace("%%", "") for v in auth["headers_to_add"].values()):
            notes.append("includeAdditionalHeadersInCheck: %REQ(...)% prints the client's header as ext_authz "
                         "does, except a header the filter strips (strip_headers), which "
                         "prints nothing")
    # Without the list ext_authz copies nothing upstream. As under ext_authz, the auth
    # service's value of a listed header replaces the client's, and a client's copy it does
    # not set stays (a token exchange's `authorization`, Envoy's `x-request-id` under `*-id`);
    # only strip_headers (IDENTITY_STRIP) are removed from every request.
    upstream = [str(h) for h in ext.get("headersToUpstreamOnAllow") or []]
    auth["upstream_headers"] = upstream
    kept = [h for h in upstream if not h.lower().startswith("x-nebula-")]
    if kept:
        notes.append(f"headersToUpstreamOnAllow {kept}: the auth service's value replaces the client's, as "
                     "under ext_authz; a client's copy it does not set reaches the upstream. To remove a "
                     "client's copy on every request (public paths too), add the name or pattern to "
                     "strip_headers (docs/istio.md)")
    if ext.get("headersToDownstreamOnDeny"):
        auth["client_headers"] = [str(h) for h in ext["headersToDownstreamOnDeny"]]
    if ext.get("headersToDownstreamOnAllow"):
        auth["client_headers_on_success"] = [str(h) for h in ext["headersToDownstreamOnAllow"]]
    body = ext.get("includeRequestBodyInCheck")
    if body is not None:
        auth["with_request_body"] = request_body(body)
        notes.append("includeRequestBodyInCheck -> auth.with_request_body: Envoy must run the filter with "
                     "allow_on_headers_stop_iteration: true, which Istio's WasmPlugin does not expose; load "
                     "the module with istio/examples/request-body-envoyfilter.yaml instead (docs/istio.md, "
                     "\"Request body\"). Under a WasmPlugin a request with a body fails closed (500) after the "
                     "auth timeout")
    status = None
    if "statusOnError" in ext:
        status = ext["statusOnError"]
        if not str(status).isdigit():
            raise Refused(f"statusOnError {status!r}: expected a status code such as \"403\"")
        status = int(status)
    return auth, status


# Envoy's command operator grammar (source/common/formatter/substitution_formatter.cc).
OPERATOR = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::([0-9]+))?%")
# What the filter prints (filter/src/policy/substitution.rs), and why the others cannot be.
ADDRESSES = {"DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_ADDRESS",
             "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "PROTOCOL", "HOSTNAME"}
WHY_NOT = {
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": "proxy-wasm exposes only the remote address Envoy settled on "
                                        "(%DOWNSTREAM_REMOTE_ADDRESS%), not the direct peer behind X-Forwarded-For",
}
WHY_NOT["DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT"] = WHY_NOT["DOWNSTREAM_DIRECT_REMOTE_ADDRESS"]
SUPPORTED_OPERATORS = ("%DOWNSTREAM_REMOTE_ADDRESS[_WITHOUT_PORT]%, %DOWNSTREAM_LOCAL_ADDRESS[_WITHOUT_PORT]%, "
                       "%REQ(name)%, %PROTOCOL%, %START_TIME%, %HOSTNAME%, %%")
# The Wasm VM's view of the host name (filter/src/policy/substitution.rs resolve_hostname).
HOSTNAME_ENV = {"env": [{"name": "HOSTNAME", "valueFrom": "HOST"}]}
TIME_SPECIFIERS = re.compile(r"%(?:[1-9]?f|[YmdHMSsz%])")


def uses_hostname(auth):
    return any("%HOSTNAME%" in v.replace("%%", "") for v in (auth.get("headers_to_add") or {}).values())


def check_operators(name, value):
    """An includeAdditionalHeadersInCheck value: refused unless every command operator in it
    is one the filter prints (it refuses the others at load, as Envoy refuses a bad one)."""
    field = f"includeAdditionalHeadersInCheck.{name}"
    at = value.find("%")
    while at >= 0:
        if value.startswith("%%", at):
            at = value.find("%", at + 2)
            continue
        match = OPERATOR.match(value, at)
        if not match:
            raise Refused(f"{field}: {value[at:at + 40]!r} is not an Envoy command operator (write %% for a "
                          "literal %)")
        command, arg, length = match.groups()
        shown = match.group(0)
        if command in WHY_NOT:
            raise Refused(f"{field}: {shown} is not supported: {WHY_NOT[command]}; supported: {SUPPORTED_OPERATORS}")
        if command not in ADDRESSES | {"REQ", "START_TIME"}:
            raise Refused(f"{field}: {shown} is not supported; supported: {SUPPORTED_OPERATORS}")
        if length is not None and command != "REQ":
            raise Refused(f"{field}: {shown}: a length limit (:N) applies only to %REQ(...)% in the filter")
        if length is not None and int(length) > 2**32 - 1:
            raise Refused(f"{field}: {shown}: the length is too large (at most {2**32 - 1})")
        if command in ADDRESSES and arg is not None:
            raise Refused(f"{field}: {shown}: %{command}% takes no argument")
        if command == "REQ":
            names = (arg or "").split("?")
            if arg is None or len(names) > 2 or not all(re.fullmatch(r":?[A-Za-z0-9._-]+", n) for n in names):
                raise Refused(f"{field}: {shown}: expected %REQ(name)% or %REQ(name?fallback)%")
        if command == "START_TIME" and arg is not None:
            rest = TIME_SPECIFIERS.sub("", arg)
            if "%" in rest:
                spec = rest[rest.index("%"):][:2]
                raise Refused(f"{field}: {shown}: the time format {spec} is not supported by the filter "
                              "(supported: %Y %m %d %H %M %S %s %z %f %1f..%9f %%)")
        at = value.find("%", match.end())


def request_body(body):
    """includeRequestBodyInCheck -> auth.with_request_body (ext_authz's with_request_body)."""
    if not isinstance(body, dict):
        raise Refused("includeRequestBodyInCheck: expected maxRequestBytes, allowPartialMessage, packAsBytes")
    unknown = sorted(set(body) - {"maxRequestBytes", "allowPartialMessage", "packAsBytes"})
    if unknown:
        raise Refused(f"includeRequestBodyInCheck fields {unknown} are not known to this converter")
    max_bytes = body.get("maxRequestBytes")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise Refused(f"includeRequestBodyInCheck.maxRequestBytes {max_bytes!r}: Envoy requires a positive "
                      "number of bytes")
    out = {"max_request_bytes": max_bytes}
    if body.get("allowPartialMessage"):
        out["allow_partial_message"] = True
    if body.get("packAsBytes"):
        out["pack_as_bytes"] = True  # gRPC only: the HTTP callout always carries the raw bytes
    return out


# RFC 3986 pchar without `%` and `;`: the bytes a canonical path is made of
# (filter/src/policy/route.rs); only a canonical path is ever public.
CANONICAL_BYTES = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@")


def canonical(path):
    """Whether `path` is in the filter's canonical form: it starts with `/`, has only
    canonical bytes, no empty segment (one trailing `/` aside) and no dot-only segment."""
    if not path.startswith("/"):
        return False
    body = path[1:]
    body = body[:-1] if body.endswith("/") else body
    if not body:
        return path == "/"
    return all(seg and set(seg) <= CANONICAL_BYTES and set(seg) != {"."} for seg in body.split("/"))


# A converted glob is a list of path sets, each one of:
#   ("strict", P)  exactly the path P (template `==P`)
#   ("below", B)   B/ and every path below it, not B itself (`==B/` and `B/{any}`)
#   ("prefix", B)  B, B/ and every path below it (template `B`)
#   ("suffix", S)  one or more segments, then exactly S (`==/{prefix}S`)
def covers(by, item):
    """Whether path set `by` holds every path of `item` (so `item` adds nothing)."""
    kind, base = by
    if item[0] == "suffix" or kind not in ("prefix", "below"):
        return False
    if kind == "prefix":
        return item[1] == base or item[1].startswith(base + "/")
    return item[1].startswith(base + "/") or item == ("below", base)


def simplify(items):
    """Drops duplicates and sets another one holds, and joins `/x` with `/x/*` into the
    prefix `/x`: overlapping templates are a configuration error in the filter."""
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    for i, item in enumerate(out):
        if item[0] == "strict" and ("below", item[1]) in out:
            out[i] = ("prefix", item[1])
    kept = []
    for i, item in enumerate(out):
        if item in kept:
            continue
        if any(j != i and other != item and covers(other, item) for j, other in enumerate(out)):
            continue
        kept.append(item)
    return kept


def templates(item):
    kind, base = item
    return {"strict": [f"=={base}"], "below": [f"=={base}/", f"{base}/{{any}}"], "prefix": [base],
            "suffix": [f"==/{{prefix}}{base}"]}[kind]


def convert_path(glob, notes):
    """One Istio notPaths glob -> the path sets (see above) that make public what Istio's
    match does on canonical paths, and never a path it does not.

    istiod (pilot/pkg/security/authz/matcher/string.go, StringMatcherWithPrefix) turns a
    path into an Envoy StringMatcher on the path without its query: `*` alone is a
    presence match, a leading `*` a suffix match, a trailing `*` a string prefix match,
    anything else an exact match; a `*` elsewhere is a literal byte. `{*}` and `{**}`
    make it a URI template (model/generator.go)."""
    if glob == "*":
        raise Refused(f"notPaths {glob!r}: a presence match makes every path public")
    if "{" in glob or "}" in glob:
        raise Refused(f"notPaths {glob!r}: a path template ({{*}}, {{**}}) has no equivalent here; list its "
                      "paths as globs")
    literal = glob[1:] if glob.startswith("*") else glob[:-1] if glob.endswith("*") else glob
    if "*" in literal:
        notes.append(f"{glob}: Istio matches the inner '*' as a literal byte, and so does the converted template")
    if glob.startswith("*"):
        suffix = literal
        if not suffix.startswith("/") or suffix == "/":
            raise Refused(f"notPaths {glob!r}: a suffix glob must be */<segments> to convert; the filter matches "
                          "whole segments only")
        if not canonical(suffix):
            raise Refused(f"notPaths {glob!r}: {suffix!r} is not a canonical path (no %-escapes, ';', '\\', "
                          "empty or dot segments); the filter never makes such a path public")
        return [("strict", suffix), ("suffix", suffix)]
    if not glob.startswith("/"):
        raise Refused(f"notPaths {glob!r}: must start with / or *")
    if glob.endswith("*"):
        stem = literal
        if stem == "/":
            raise Refused(f"notPaths {glob!r}: would make every path public")
        if stem.endswith("/"):
            if stem == "//" or not canonical(stem):
                raise Refused(f"notPaths {glob!r}: {stem!r} is not a canonical path; the filter never makes "
                              "such a path public")
            return [("below", stem[:-1])]
        if not canonical(stem):
            raise Refused(f"notPaths {glob!r}: {stem!r} does not end a canonical segment; no path it covers can "
                          "be made public on segment boundaries")
        notes.append(f"{glob} -> {stem}: {stem}, {stem}/ and below; the canonical paths that continue its last "
                     f"segment ({stem}z, {stem}.json, ...), public under Istio's string prefix, are now checked "
                     "by the auth service")
        return [("prefix", stem)]
    if not canonical(glob):
        raise Refused(f"notPaths {glob!r}: not a canonical path (no %-escapes, ';', '\\', empty or dot "
                      "segments); the filter never makes such a path public")
    return [("strict", glob)]


def convert_rules(spec):
    """The policy's single rule -> public paths, or a refusal naming what does not convert."""
    if spec.get("action") != "CUSTOM":
        raise Refused(f"action {spec.get('action')!r}: only CUSTOM policies (ext_authz) convert")
    rules = spec.get("rules") or []
    if len(rules) != 1:
        raise Refused(f"{len(rules)} rules: only one rule converts (a CUSTOM policy with several rules checks "
                      "the union, which one public-path list cannot express)")
    rule = rules[0]
    extra = sorted(set(rule) - {"to"})
    if extra:
        raise Refused(f"rules[0] has {extra}: the filter cannot condition the check on sources or `when`")
    to = rule.get("to") or []
    if len(to) != 1 or set(to[0]) != {"operation"}:
        raise Refused("rules[0].to must hold exactly one operation")
    operation = to[0]["operation"] or {}
    extra = sorted(set(operation) - {"notPaths", "paths"})
    if extra:
        raise Refused(f"rules[0].to[0].operation has {extra}: the filter checks every method, host and port")
    if operation.get("paths") not in (None, ["*"], ["/*"]):
        raise Refused("rules[0].to[0].operation.paths: a policy that checks only some paths makes everything "
                      "else public; the filter protects every path except public_paths. List the public "
                      "paths in notPaths instead")
    return operation.get("notPaths") or []


# The rule fields the filter evaluates (the `policies` schema), and the `when` keys.
SOURCE_FIELDS = {"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
                 "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"}
OPERATION_FIELDS = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}
WHEN_KEYS = {"source.ip", "remote.ip", "source.namespace", "source.principal", "request.auth.principal",
             "request.auth.audiences", "request.auth.presenter", "destination.ip", "destination.port",
             "connection.sni"}
WHEN_PREFIXES = ("request.headers[", "request.auth.claims[")
WHY_NO_WHEN = {
    "experimental.envoy.filters.": "Envoy's dynamic metadata of other filters, which proxy-wasm cannot read as "
                                   "RBAC does",
    "source.serviceAccount": "not in the filter's rule schema; write it as source.principal "
                             "(cluster.local/ns/<ns>/sa/<name>)",
    "source.trustDomain": "not in the filter's rule schema; write it as source.principal (<trust domain>/*)",
}
DRY_RUN = "istio.io/dry-run"
# Istio's `ipBlocks` and `source.ip` are RBAC's direct_remote_ip: the TCP peer. proxy-wasm
# has only the address Envoy settled on (`source.address`), which on an Istio sidecar
# (use_remote_address: false) is the right-most X-Forwarded-For entry the caller sent; the
# filter treats it as unknown (the rule selects) when an X-Forwarded-For entry names it.
PEER_FIELDS = {"ipBlocks", "notIpBlocks"}
PEER_WHEN = "source.ip"
PEER_NOTE = ("ipBlocks, notIpBlocks and source.ip: Istio matches the TCP peer; when an X-Forwarded-For entry "
             "names the address Envoy settled on (on a sidecar, the right-most entry a caller sent), the filter "
             "cannot tell the peer and such a rule selects the request (the check runs)")


NO_JWT = ("give the workload's RequestAuthentication among the input files (it converts to the filter's jwt "
          "block), or --jwt with a jwt block")


def uses_jwt(key):
    return key in ("requestPrincipals", "notRequestPrincipals") or key.startswith("request.auth.")


def check_rule(where, rule, jwt):
    """One rule: every field is one the filter evaluates as Istio does, else Refused
    naming it. Copied verbatim when it passes."""
    if not isinstance(rule, dict):
        raise Refused(f"{where}: expected a mapping")
    extra = sorted(set(rule) - {"from", "to", "when"})
    if extra:
        raise Refused(f"{where} has {extra}: not an AuthorizationPolicy rule field")
    for i, item in enumerate(rule.get("from") or []):
        source = (item or {}).get("source") or {}
        for key in source:
            if key not in SOURCE_FIELDS:
                why = ("write it as principals (cluster.local/ns/<ns>/sa/<name>, <trust domain>/*)"
                       if key in ("serviceAccounts", "notServiceAccounts", "trustDomains", "notTrustDomains")
                       else "not an AuthorizationPolicy source field")
                raise Refused(f"{where}.from[{i}].source.{key}: {why}")
            if uses_jwt(key) and not jwt:
                raise Refused(f"{where}.from[{i}].source.{key}: the filter reads request principals from its own "
                              f"jwt step; {NO_JWT}")
    for i, item in enumerate(rule.get("to") or []):
        operation = (item or {}).get("operation") or {}
        for key in operation:
            if key not in OPERATION_FIELDS:
                raise Refused(f"{where}.to[{i}].operation.{key}: not an operation field the filter evaluates")
    for i, cond in enumerate(rule.get("when") or []):
        key = str((cond or {}).get("key"))
        field = f"{where}.when[{i}] key {key!r}"
        for prefix, why in WHY_NO_WHEN.items():
            if key.startswith(prefix):
                raise Refused(f"{field}: {why}")
        if key not in WHEN_KEYS and not (key.startswith(WHEN_PREFIXES) and key.endswith("]")):
            raise Refused(f"{field}: not a condition key Istio documents for HTTP")
        if uses_jwt(key) and not jwt:
            raise Refused(f"{field}: the filter reads request.auth.* from its own jwt step; {NO_JWT}")
        if not cond.get("values") and not cond.get("notValues"):
            raise Refused(f"{field}: needs values or notValues")


def policy_name(doc):
    meta = doc.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def rule_policies(policy_docs, jwt):
    """Every CUSTOM policy -> {name, provider, rules}, the rules verbatim."""
    out = []
    for doc in policy_docs:
        name, spec = policy_name(doc), doc.get("spec") or {}
        provider = (spec.get("provider") or {}).get("name")
        if not provider:
            raise Refused(f"{name}: the AuthorizationPolicy names no provider")
        rules = spec.get("rules") or []
        for i, rule in enumerate(rules):
            check_rule(f"{name} rules[{i}]", rule, jwt)
        out.append({"name": name, "provider": str(provider), "rules": rules})
    return out


def refuse_dry_run(policy_docs):
    """istiod puts a dry-run CUSTOM policy's rules in the RBAC filter's enforced `rules`
    (builder.go `buildHTTP`), which the filter cannot reproduce; refused, naming it."""
    for doc in policy_docs:
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        if DRY_RUN in annotations:
            raise Refused(f"{policy_name(doc)}: metadata.annotations {DRY_RUN}: istiod renders a dry-run CUSTOM "
                          "policy into enforced RBAC rules next to the provider's check (builder.go buildHTTP); "
                          "remove the annotation or the policy")


def legacy_shape(spec):
    """Whether a policy is the one-rule notPaths shape policy mode always had."""
    rules = spec.get("rules") or []
    if len(rules) != 1 or not isinstance(rules[0], dict) or set(rules[0]) != {"to"}:
        return False
    to = rules[0].get("to") or []
    if len(to) != 1 or not isinstance(to[0], dict) or set(to[0]) != {"operation"}:
        return False
    operation = to[0]["operation"] or {}
    return set(operation) <= {"notPaths", "paths"} and operation.get("paths") in (None, ["*"], ["/*"]) \
        and bool(operation.get("notPaths"))


def convert_providers(mesh, names, notes):
    """Each provider by name (sorted) -> `{"name", ...auth block}`, and the one statusOnError."""
    ordered = sorted(names)
    for i, earlier in enumerate(ordered):
        for later in ordered[i + 1:]:
            if later == f"{earlier}-ns":
                # istiod's metadata matcher is a prefix match on `istio-ext-authz-<name>`
                # (extauthz.go generateFilterMatcherForProvider), so `<earlier>`'s rule
                # names (`istio-ext-authz-<earlier>-ns[...]`) also enable `<later>`.
                raise Refused(f"providers {earlier!r} and {later!r}: istiod's check for {later!r} also runs on "
                              f"every request {earlier!r}'s rules select (their names, istio-ext-authz-{later}[...], "
                              "start with its prefix); rename one provider to convert")
    providers, statuses = [], {}
    for name in ordered:
        auth, status = convert_provider(provider_block(mesh, name), notes)
        providers.append({"name": name, **auth})
        statuses[name] = status
    bodies = [p["name"] for p in providers if "with_request_body" in p]
    if bodies and len(providers) > 1:
        raise Refused(f"providers {bodies}: includeRequestBodyInCheck with several providers: the filter sends a "
                      "request body to one provider only")
    if len(set(statuses.values())) > 1:
        shown = ", ".join(f"{n}: {s if s is not None else 'unset (403)'}" for n, s in statuses.items())
        raise Refused(f"statusOnError differs between providers ({shown}): the filter has one status_on_error")
    return providers, next(iter(statuses.values()))


def workload_target(policy_docs):
    """The namespace and selector/targetRef all the policies share, or Refused naming them."""
    def target(doc):
        spec = doc.get("spec") or {}
        shown = {k: spec[k] for k in ("selector", "targetRef", "targetRefs") if k in spec}
        return ((doc.get("metadata") or {}).get("namespace", "default"), json.dumps(shown, sort_keys=True))
    groups = {}
    for doc in policy_docs:
        groups.setdefault(target(doc), []).append(policy_name(doc))
    if len(groups) > 1:
        shown = "; ".join(f"{', '.join(names)} -> {key[0]} {key[1]}" for key, names in groups.items())
        raise Refused(f"the CUSTOM policies apply to different workloads ({shown}): one WasmPlugin applies to one "
                      "namespace and selector; convert each set on its own")



def convert(mesh_doc, policy_docs, jwt=None, request_authentications=()):
    """`jwt` (--jwt) overrides what the RequestAuthentications convert to."""
    notes = []
    workload_target(policy_docs)
    refuse_dry_run(policy_docs)
    policy_doc = policy_docs[0]
    spec = policy_doc.get("spec") or {}
    if jwt is not None and request_authentications:
        notes.append("--jwt: the jwt block given replaces what the RequestAuthentications among the input files "
                     "convert to")
    elif request_authentications:
        namespace = (policy_doc.get("metadata") or {}).get("namespace", "default")
        labels = (spec.get("selector") or {}).get("matchLabels") or {}
        jwt = jwt_block(request_authentications, namespace, labels, Refused, timeout_ms, notes)
    config = None
    if len(policy_docs) == 1 and legacy_shape(spec) and not jwt:
        provider = (spec.get("provider") or {}).get("name")
        if not provider:
            raise Refused("the AuthorizationPolicy names no provider")
        legacy_notes = []
        auth, status = convert_provider(provider_block(mesh_config(mesh_doc), provider), legacy_notes)
        try:
            sets = simplify([item for g in convert_rules(spec) for item in convert_path(str(g), legacy_notes)])
        except Refused as why:
            notes.append(f"{why}: converted as a rule instead (policies)")
        else:
            notes += legacy_notes
            # The identity headers come only from the auth service: every client copy is
            # removed, on every path, whatever the provider lists (ext_authz would pass them on).
            config = {"auth": auth, "strip_headers": list(IDENTITY_STRIP)}
            config["public_paths"] = [template for item in sets for template in templates(item)]
            if status is not None:
                config["status_on_error"] = status
    if config is None:
        policies = rule_policies(policy_docs, jwt)
        if any(f"\"{k}\"" in json.dumps(p["rules"]) for p in policies for k in sorted(PEER_FIELDS) + [PEER_WHEN]):
            notes.append(PEER_NOTE)
        providers, status = convert_providers(mesh_config(mesh_doc), {p["provider"] for p in policies}, notes)
        config = {"providers": providers, "strip_headers": list(IDENTITY_STRIP)}
        if jwt:
            config["jwt"] = jwt
        config["policies"] = policies
        if status is not None:
            config["status_on_error"] = status
        if len(providers) > 1:
            notes.append(f"providers {[p['name'] for p in providers]}: a request several policies select is checked "
                         "by each, in this order (istiod's: sorted by name), and must pass each; Istio needs "
                         "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS for this, the filter does not")
        auth = {}
        for provider in providers:
            auth.setdefault("headers_to_add", {}).update(provider.get("headers_to_add") or {})

    plugin = next(d for d in yaml.safe_load_all(TEMPLATE.read_text()) if d and d.get("kind") == "WasmPlugin")
    plugin["metadata"] = {"name": plugin["metadata"]["name"],
                          "namespace": (policy_doc.get("metadata") or {}).get("namespace", "default")}
    target = {k: spec[k] for k in ("selector", "targetRef", "targetRefs") if k in spec}
    for key in ("selector", "targetRef", "targetRefs"):
        plugin["spec"].pop(key, None)
    if "targetRef" in target:  # WasmPlugin accepts targetRefs (a list) alongside selector-free
        target = {"targetRefs": [target.pop("targetRef")], **target}
    # Istio counts a gateway's listeners as CLIENT traffic: a SERVER-only plugin would not
    # run there at all (no check, no error). Sidecars keep SERVER (inbound only).
    # The policy's target says what it is; a selector only names labels, so the note says
    # how to check the pods it selects.
    labels = (target.get("selector") or {}).get("matchLabels") or {}
    shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "(no selector: every workload of the namespace)"
    check = (f"check a selected pod: `istioctl proxy-config listener <pod>.{plugin['metadata']['namespace']} "
             "--port 15006` lists `virtualInbound` on a sidecar and nothing on a gateway")
    if "targetRefs" in target:
        plugin["spec"].pop("match", None)
        kinds = sorted({str(ref.get("kind")) for ref in target["targetRefs"] if isinstance(ref, dict)})
        notes.append(f"targetRefs {kinds}: the WasmPlugin applies to every listener of the target; `match` removed")
    elif gateway_label(labels):
        plugin["spec"]["match"] = [{"mode": "CLIENT"}]
        notes.append(f"selector {shown}: {gateway_label(labels)} is an Istio gateway label, so match mode CLIENT "
                     f"(Istio's mode for gateway listeners); {check}; on a sidecar set mode SERVER")
    else:
        notes.append(f"selector {shown}: match mode SERVER (sidecar inbound); {check}; on a gateway set mode "
                     "CLIENT (or use targetRefs), or the plugin never runs there")
    plugin["spec"] = {**target, **plugin["spec"]}
    if uses_hostname(auth):
        plugin["spec"]["vmConfig"] = HOSTNAME_ENV
    plugin["spec"]["pluginConfig"] = config
    return plugin, config, notes


def gateway_label(labels):
    """The label that marks Istio gateway pods: the Gateway API deployment labels Istio
    sets, or the `istio` and `app` labels of its Helm gateway chart; else None (a selector
    names labels, not what the pods are: the note says how to check)."""
    for key, value in labels.items():
        if key in ("istio.io/gateway-name", "gateway.networking.k8s.io/gateway-name") or \
                (key == "istio" and str(value) in ("ingressgateway", "egressgateway")) or \
                (key == "app" and str(value) in ("istio-ingressgateway", "istio-egressgateway")):
            return f"{key}={value}"
    return None


def documents(path):
    """Every mapping in a YAML file: several documents, and the items of a `kubectl get
    -o yaml` List, in order. Unreadable or malformed input is a refusal, not a traceback."""
    try:
        loaded = list(yaml.safe_load_all(path.read_text()))
    except OSError as err:
        raise Refused(f"{path}: {err.strerror or err}")
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise Refused(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}")
    out = []
    for doc in loaded:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise Refused(f"{path}: expected YAML mappings, found a {type(doc).__name__}")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            out += [item for item in doc["items"] if isinstance(item, dict)]
        else:
            out.append(doc)
    if not out:
        raise Refused(f"{path}: no YAML document")
    return out


def pick_mesh(path, docs):
    """The document holding extensionProviders (the first one when none does: the
    provider lookup then names what is missing)."""
    return next((d for d in docs if isinstance(mesh_config(d), dict) and mesh_config(d).get("extensionProviders")),
                docs[0])


def pick_policies(inputs, notes):
    """The CUSTOM AuthorizationPolicies of every (path, documents) in `inputs`, in order;
    the other policies beside them are noted (Istio's RBAC keeps enforcing them)."""
    chosen, actions = [], []
    for path, docs in inputs:
        policies = [d for d in docs if d.get("kind", "AuthorizationPolicy") == "AuthorizationPolicy"]
        custom = [d for d in policies if isinstance(d.get("spec"), dict) and d["spec"].get("action") == "CUSTOM"]
        others = len(policies) - len(custom)
        actions += [str((d.get("spec") or {}).get("action", "ALLOW")) if isinstance(d.get("spec"), dict) else "?"
                    for d in policies if d not in custom]
        if others:
            notes.append(f"{path.name}: {others} other AuthorizationPolic{'y' if others == 1 else 'ies'} ignored "
                         "(not CUSTOM): ALLOW, DENY and AUDIT policies stay with Istio's RBAC, which keeps "
                         "enforcing them beside the filter")
        chosen += custom
    if not chosen:
        found = f" (found {', '.join(sorted(set(actions)))})" if actions else ""
        raise Refused(f"no AuthorizationPolicy with action: CUSTOM{found}: only CUSTOM policies (ext_authz) convert")
    return chosen


def pick_request_authentications(inputs):
    """The RequestAuthentications of every (path, documents) in `inputs`, in order."""
    return [d for _, docs in inputs for d in docs if d.get("kind") == "RequestAuthentication"]


def read_jwt(path):
    """--jwt: the filter's `jwt` block as JSON (docs/jwt.md)."""
    try:
        block = json.loads(path.read_text())
    except OSError as err:
        raise Refused(f"{path}: {err.strerror or err}")
    except ValueError as err:
        raise Refused(f"{path}: not valid JSON: {err}")
    if not isinstance(block, dict):
        raise Refused(f"{path}: expected the jwt block, a JSON object")
    # RequestAuthentication only verifies a token; the CUSTOM provider still checks the
    # request. The filter's `local` mode lets a valid token through alone (refused with policies).
    providers = block.get("providers") if isinstance(block.get("providers"), list) else []
    for i, provider in enumerate(providers):
        mode = provider.get("mode", block.get("mode", "local")) if isinstance(provider, dict) else None
        if mode == "local":
            raise Refused(f"{path}: providers[{i}].mode is local (the default), where a valid token alone lets a "
                          "request through; as under RequestAuthentication, set \"mode\": \"local_then_callout\"")
    return block


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("meshconfig", type=Path, help="mesh config with extensionProviders")
    p.add_argument("policy", type=Path, nargs="+", help="AuthorizationPolicy files (every CUSTOM one converts)")
    p.add_argument("--jwt", type=Path, help="the filter's jwt block (JSON), instead of what the "
                   "RequestAuthentications among the input files convert to")
    p.add_argument("--url", help="the module's oci:// reference (default: istio/wasmplugin.yaml's)")
    p.add_argument("--config-only", action="store_true", help="print only the plugin JSON")
    args = p.parse_args()
    early = []
    try:
        mesh_doc = pick_mesh(args.meshconfig, documents(args.meshconfig))
        inputs = [(path, documents(path)) for path in args.policy]
        policy_docs = pick_policies(inputs, early)
        jwt = read_jwt(args.jwt) if args.jwt else None
        plugin, config, notes = convert(mesh_doc, policy_docs, jwt, pick_request_authentications(inputs))
    except Refused as refused:
        print(f"error: cannot convert: {refused}", file=sys.stderr)
        return 1
    except yaml.YAMLError as err:  # the mesh config's own YAML, inside the ConfigMap's data.mesh
        print(f"error: cannot convert: {args.meshconfig}: the mesh config is not valid YAML: {err}".replace("\n", " "),
              file=sys.stderr)
        return 1
    except (AttributeError, TypeError, ValueError, KeyError) as err:
        # A field of an unexpected type (a list where a mapping belongs, ...).
        print(f"error: cannot convert: malformed input ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    notes = early + notes
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.url:
        plugin["spec"]["url"] = args.url
    if args.config_only:
        print(json.dumps(config, indent=2))
    else:
        sources = " and ".join([args.meshconfig.name] + [path.name for path in args.policy])
        print(f"# Converted from {sources} by scripts/convert_policy.py.")
        what = "the AuthorizationPolicy" if "auth" in config else "the CUSTOM AuthorizationPolicies"
        print(f"# Apply it, check it, then delete {what} (docs/istio.md).")
        print(yaml.safe_dump(plugin, sort_keys=False, width=100), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
