#!/usr/bin/env python3
"""`make bench`: nebula-authz against its peers, side by side, in one run.

Nine scenarios (seven, plus filter-callout-noxf and filter-cached), each behind the same load
generator (wrk), auth service and upstream (tests/src/bin/bench-backend.rs, one
single-threaded process):

  no-auth         Envoy, router only (the ceiling)
  noop-wasm       Envoy + a proxy-wasm filter that only returns Continue (bench/noop-wasm)
  noop-wasm-min   the same built against the patched SDK exporting no callback but the
                  SDK's own (third_party/proxy-wasm): the floor below the SDK
  ext_authz       Envoy + its native HTTP ext_authz filter, configured as Istio CUSTOM does
  traefik         Traefik forwardAuth, routers as in Prefect's proxy mode
  proxy-mode      Prefect's proxy mode as it really runs: that Traefik in front of an
                  Envoy with only the router (the mesh's sidecar stays), in front of the
                  upstream; CPU/req is both processes' CPU summed
  filter-callout  Envoy + nebula-authz, protected path: one callout per request
  filter-callout-noxf  the same with forward_auth: false (no X-Forwarded-* on the
                  callout: ext_authz's contract, the like-for-like comparison)
  filter-callout-noretry  filter-callout with retry_on_reset: false (no Envoy retry asked
                  for: what the default's reliability costs; callgrind only)
  filter-policy   Envoy + nebula-authz with the configuration `make convert` emits for the
                  policy-mode fixture (auth.protocol "ext_authz"): one callout per request
  filter-public   Envoy + nebula-authz, public path: no callout
  filter-deny     Envoy + nebula-authz, the auth service answers 401
  filter-cached   Envoy + nebula-authz with the decision cache on: every measured
                  request is a cache hit
  filter-jwt      Envoy + nebula-authz, `jwt` in local mode (ES256, inline JWKS): the same
                  valid token on every request, no callout, `sub` -> x-nebula-actor-id
  jwt_authn       Envoy's native jwt_authn, same issuer/audience/key/claim header
  floor-*         bench/floor-wasm: per request path, only the host calls it cannot do
                  without, nothing else: the least any proxy-wasm filter can cost on this
                  Envoy (callgrind only; the report puts each target's bound next to it)

The proxy runs alone on CPU 0 (Envoy `--concurrency 1`); wrk, the backend and this
script on CPU 1. Scenarios are interleaved over several rounds and medians reported.
CPU per request is utime+stime of the proxy process (/proc/PID/stat) over the measured
window divided by the requests wrk completed. Every run is checked: the auth service
must have seen one request per client request exactly where a callout is expected, none
elsewhere, and the statuses must be the expected ones.

Before the load, the footprint table: each sidecar alone (Envoy, noop-wasm, nebula-authz
minimal, policy mode, cache+JWT+source_ranges) with 2 and 4 workers, all CPUs: spawn to
the first answered request, RSS over Envoy alone, MiB per further worker; and a running
Envoy (noop-wasm, nebula-authz minimal) taking a new plugin configuration, then a new
module, by ECDS from a watched file: rename to the next answered request.

  bench/run.py                  full run (table + bench/results/latest.json)
  bench/run.py --footprint      only the footprint table
  bench/run.py --quick          ~30 s
  bench/run.py --smoke          start every scenario, a few requests each, no timing
  bench/run.py --markdown FILE  the docs/performance.md tables from a results file
"""
import argparse
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from html import escape

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# The default public paths (filter/src/policy/route.rs DEFAULT_PUBLIC_PATHS).
PUBLIC_PREFIXES = ["/auth", "/api/docs", "/api/openapi.json", "/api/health", "/api/version", "/hooks"]
PUBLIC_SUFFIXES = ["/task_runs/subscriptions/scheduled", "/events/out"]  # after `/{prefix}`
REQUEST_HEADERS = ["authorization", "origin", "access-control-request-method"]
UPSTREAM_HEADERS = ["x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config",
                    "x-nebula-log-limit-config"]
CLIENT_HEADERS = ["www-authenticate", "location", "set-cookie", "content-type"]

ALLOW = "Bearer allow"
DENY = "Bearer deny"
PROTECTED = "/api/flows"
PUBLIC = "/api/health"
# Stands for the bench's repeated ES256 token (minted per run by tests/examples/bench-jwt.rs).
JWT = "Bearer <jwt>"
JWT_ISSUER, JWT_AUDIENCE = "https://issuer.example.com", "prefect-api"

# name -> (proxy, path, token, expected status, auth calls per request)
SCENARIOS = {
    "no-auth": ("envoy-noauth", PROTECTED, ALLOW, 200, 0),
    "noop-wasm": ("envoy-noop", PROTECTED, ALLOW, 200, 0),
    "noop-wasm-min": ("envoy-noop-min", PROTECTED, ALLOW, 200, 0),
    # noop-wasm with filter-jwt's request (its ~300-byte bearer JWT): Envoy parses and
    # copies the larger header either way, so this is the like-for-like floor of a JWT row.
    "noop-wasm-jwt": ("envoy-noop", PROTECTED, JWT, 200, 0),
    "ext_authz": ("envoy-extauthz", PROTECTED, ALLOW, 200, 1),
    "traefik": ("traefik", PROTECTED, ALLOW, 200, 1),
    "proxy-mode": ("proxy-mode", PROTECTED, ALLOW, 200, 1),
    "filter-callout": ("envoy-filter", PROTECTED, ALLOW, 200, 1),
    # The same without the forwardAuth X-Forwarded-* headers on the callout (forward_auth:
    # false): the contract ext_authz (Istio CUSTOM) has, so the like-for-like comparison.
    "filter-callout-noxf": ("envoy-filter-noxf", PROTECTED, ALLOW, 200, 1),
    # retry_on_reset off: no x-envoy-retry-on on the callout (what the default costs).
    "filter-callout-noretry": ("envoy-filter-noretry", PROTECTED, ALLOW, 200, 1),
    # Policy mode: the pluginConfig `make convert` emits for an Istio envoyExtAuthzHttp
    # provider (auth.protocol "ext_authz"), from tests/data/policy-mode/wasmplugin.golden.yaml.
    "filter-policy": ("envoy-filter-policy", PROTECTED, ALLOW, 200, 1),
    "filter-public": ("envoy-filter", PUBLIC, ALLOW, 200, 0),
    "filter-deny": ("envoy-filter", PROTECTED, DENY, 401, 1),
    # The decision cache on: one callout when the proxy starts, then only hits.
    "filter-cached": ("envoy-filter-cached", PROTECTED, ALLOW, 200, 0),
    # Local JWT verification: a token clients repeat, verified once then cached.
    "filter-jwt": ("envoy-filter-jwt", PROTECTED, JWT, 200, 0),
    "jwt_authn": ("envoy-jwtauthn", PROTECTED, JWT, 200, 0),
}
# Where the claim header (not the auth service) supplies the upstream identity.
LOCAL_IDENTITY = {"filter-cached", "filter-jwt", "jwt_authn"}

# --- JWTs the verified cache cannot answer -----------------------------------------
# Token streams (minted per run by tests/examples/bench-jwt.rs): `<fresh:ALG>` cycles
# distinct valid tokens (more than the filter's 1 024-entry verified cache, so every
# one is first-seen), `<forged:ALG>` distinct forged ones (known issuer and kid, random
# signature: the flood an attacker sends), `<invalid>` one forged token repeated.
JWT_FRESH_TOKENS = 5000
JWT_ROWS = {}
for _alg, _suffix in [("ES256", ""), ("RS256", "-rs256"), ("EdDSA", "-eddsa")]:
    for _side, _proxy in [("filter-jwt", "envoy-filter-jwt"), ("jwt_authn", "envoy-jwtauthn")]:
        JWT_ROWS[f"{_side}-fresh{_suffix}"] = (_proxy, PROTECTED, f"<fresh:{_alg}>", 200, 0)
        if _alg != "EdDSA":
            JWT_ROWS[f"{_side}-forged{_suffix}"] = (_proxy, PROTECTED, f"<forged:{_alg}>", 401, 0)
JWT_ROWS["filter-jwt-invalid"] = ("envoy-filter-jwt", PROTECTED, "<invalid>", 401, 0)
JWT_ROWS["jwt_authn-invalid"] = ("envoy-jwtauthn", PROTECTED, "<invalid>", 401, 0)
SCENARIOS.update(JWT_ROWS)
# bench/floor-wasm, one row per filter row of the instruction targets (same request).
FLOOR_ROWS = {
    "floor-public": ("envoy-floor-public", PUBLIC, ALLOW, 200, 0, "filter-public"),
    "floor-jwt": ("envoy-floor-jwt", PROTECTED, JWT, 200, 0, "filter-jwt"),
    "floor-hit": ("envoy-floor-hit", PROTECTED, ALLOW, 200, 0, "filter-cached"),
    "floor-callout": ("envoy-floor-callout", PROTECTED, ALLOW, 200, 1, "filter-callout"),
    "floor-callout-noxf": ("envoy-floor-callout-noxf", PROTECTED, ALLOW, 200, 1, "filter-callout-noxf"),
    # ext_authz's contract has no X-Forwarded-* either: the same host calls as the noxf
    # floor (the client's path on the callout is a header value, not another host call).
    "floor-policy": ("envoy-floor-callout-noxf", PROTECTED, ALLOW, 200, 1, "filter-policy"),
}
SCENARIOS.update({name: row[:5] for name, row in FLOOR_ROWS.items()})
FLOOR_OF = {row[5]: name for name, row in FLOOR_ROWS.items()}
LOCAL_IDENTITY |= {"floor-hit", "floor-jwt"}
LOCAL_IDENTITY |= {s for s, row in JWT_ROWS.items() if row[3] == 200}
# EdDSA is reported, not targeted: `--callgrind` measures it, the load run leaves it out.
CALLGRIND_ONLY = {s for s in JWT_ROWS if s.endswith("-eddsa")} | {"filter-callout-noretry"} | set(FLOOR_ROWS)
# (what, numerator, denominator, bound or None): CPU/request in the load run,
# instructions/request under callgrind.
JWT_TARGETS = [
    ("JWT first-seen ES256 vs jwt_authn", "filter-jwt-fresh", "jwt_authn-fresh", 1.5),
    ("JWT first-seen RS256 vs jwt_authn", "filter-jwt-fresh-rs256", "jwt_authn-fresh-rs256", 1.5),
    ("JWT first-seen EdDSA vs jwt_authn", "filter-jwt-fresh-eddsa", "jwt_authn-fresh-eddsa", None),
    ("JWT forged ES256 flood vs jwt_authn", "filter-jwt-forged", "jwt_authn-forged", 1.5),
    ("JWT forged RS256 flood vs jwt_authn", "filter-jwt-forged-rs256", "jwt_authn-forged-rs256", 1.5),
    ("JWT repeated invalid vs noop-wasm", "filter-jwt-invalid", "noop-wasm", 1.2),
    ("JWT repeated valid vs noop-wasm", "filter-jwt", "noop-wasm", 1.2),
    # The same two against noop-wasm sent the same request (the token's bytes included).
    ("JWT repeated invalid vs noop-wasm-jwt", "filter-jwt-invalid", "noop-wasm-jwt", 1.2),
    ("JWT repeated valid vs noop-wasm-jwt", "filter-jwt", "noop-wasm-jwt", 1.2),
]
# Under callgrind a first-seen row costs millions of instructions per request: fewer
# requests give the same per-request count.
JWT_CALLGRIND_MAX_REQUESTS = 300


def is_token_stream(token):
    return token.startswith("<fresh:") or token.startswith("<forged:")


def wrk_token_script(path, tokens):
    """A wrk Lua script that sends the tokens in turn, one per request."""
    body = ",\n".join(json.dumps("Bearer " + t) for t in tokens)
    path.write_text(f"local tokens = {{\n{body}\n}}\nlocal i = 0\n"
                    "request = function()\n  i = i % #tokens + 1\n"
                    "  return wrk.format(nil, nil, {[\"authorization\"] = tokens[i]})\nend\n")
    return path


def jwt_callgrind_targets(counts):
    """The JWT targets as instruction ratios (printed after the callgrind table)."""
    print("\n| JWT target (instructions) | measured | bound | met |\n|---|---:|---|---|")
    for what, num, den, bound in JWT_TARGETS:
        r = counts[num] / counts[den] if num in counts and den in counts and counts[den] else None
        met = "-" if r is None or bound is None else ("yes" if r <= bound else "**no**")
        print(f"| {what} | {fmt(r, '.2f')} | {'reported' if bound is None else f'<= {bound:.2f}'} | {met} |")
# --------------------------------------------------------------------------------------
BASELINES = ["no-auth", "noop-wasm", "ext_authz"]
NOXF_CONFIG = {"auth": {"cluster": "auth", "authority": "auth:4300", "forward_auth": False}}
NORETRY_CONFIG = {"auth": {"cluster": "auth", "authority": "auth:4300", "retry_on_reset": False}}
CACHED_CONFIG = {"auth": {"cluster": "auth", "authority": "auth:4300"}, "cache": {"default_ttl": 3600, "max_ttl": 3600}}

# (what, numerator, denominator, metric, bound): the first performance targets.
TARGETS = [
    ("filter-callout CPU/req vs ext_authz", "filter-callout", "ext_authz", "cpu_us_per_req", ("<=", 0.90)),
    ("filter-callout req/s vs ext_authz", "filter-callout", "ext_authz", "rps", (">=", 1.00)),
    ("filter-callout p99 vs ext_authz", "filter-callout", "ext_authz", "p99_ms", ("<=", 1.05)),
    ("filter-callout-noxf CPU/req vs ext_authz", "filter-callout-noxf", "ext_authz", "cpu_us_per_req",
     ("<=", 0.90)),
    ("filter-callout-noxf req/s vs ext_authz", "filter-callout-noxf", "ext_authz", "rps", (">=", 1.00)),
    ("filter-callout-noxf p99 vs ext_authz", "filter-callout-noxf", "ext_authz", "p99_ms", ("<=", 1.05)),
    ("filter-policy CPU/req vs ext_authz", "filter-policy", "ext_authz", "cpu_us_per_req", ("<=", 1.00)),
    ("filter-policy req/s vs ext_authz", "filter-policy", "ext_authz", "rps", (">=", 1.00)),
    ("filter-public CPU/req vs noop-wasm", "filter-public", "noop-wasm", "cpu_us_per_req", ("<=", 1.05)),
    ("filter-callout req/s vs traefik", "filter-callout", "traefik", "rps", (">=", 1.50)),
    ("filter-callout CPU/req vs traefik", "filter-callout", "traefik", "cpu_us_per_req", ("<=", 0.70)),
    # A cache hit: close to a public request, well ahead of a callout.
    ("filter-cached req/s vs noop-wasm", "filter-cached", "noop-wasm", "rps", (">=", 0.90)),
    ("filter-cached req/s vs ext_authz", "filter-cached", "ext_authz", "rps", (">=", 1.30)),
    # A repeated JWT: at least jwt_authn's throughput.
    ("filter-jwt req/s vs jwt_authn", "filter-jwt", "jwt_authn", "rps", (">=", 1.00)),
    ("filter-jwt req/s vs noop-wasm", "filter-jwt", "noop-wasm", "rps", (">=", 0.85)),
] + [(f"{what} (revised)", *rest) for what, *rest in [
    # Revised: the callout at parity with ext_authz, a hit close to a public request.
    ("filter-callout CPU/req vs ext_authz", "filter-callout", "ext_authz", "cpu_us_per_req", ("<=", 1.00)),
    ("filter-callout req/s vs ext_authz", "filter-callout", "ext_authz", "rps", (">=", 1.00)),
    ("filter-callout p99 vs ext_authz", "filter-callout", "ext_authz", "p99_ms", ("<=", 1.05)),
    ("filter-callout-noxf CPU/req vs ext_authz", "filter-callout-noxf", "ext_authz", "cpu_us_per_req",
     ("<=", 0.95)),
    ("filter-cached req/s vs noop-wasm", "filter-cached", "noop-wasm", "rps", (">=", 0.90)),
    ("filter-public CPU/req vs noop-wasm", "filter-public", "noop-wasm", "cpu_us_per_req", ("<=", 1.05)),
    ("filter-jwt CPU/req vs noop-wasm", "filter-jwt", "noop-wasm", "cpu_us_per_req", ("<=", 1.20)),
    ("filter-callout CPU/req vs proxy-mode", "filter-callout", "proxy-mode", "cpu_us_per_req", ("<=", 0.50)),
    ("filter-callout req/s vs proxy-mode", "filter-callout", "proxy-mode", "rps", (">=", 1.80)),
]]
# `make bench-callgrind`: the revised targets in instructions per request.
CALLGRIND_TARGETS = [
    ("filter-callout vs ext_authz", "filter-callout", "ext_authz", ("<=", 1.00)),
    ("filter-callout-noxf vs ext_authz", "filter-callout-noxf", "ext_authz", ("<=", 0.95)),
    ("filter-policy vs ext_authz", "filter-policy", "ext_authz", ("<=", 1.00)),
    ("filter-cached vs noop-wasm", "filter-cached", "noop-wasm", ("<=", 1.20)),
    ("filter-public vs noop-wasm", "filter-public", "noop-wasm", ("<=", 1.05)),
    ("filter-jwt vs noop-wasm", "filter-jwt", "noop-wasm", ("<=", 1.20)),
    ("filter-jwt vs noop-wasm-jwt (same request)", "filter-jwt", "noop-wasm-jwt", ("<=", 1.20)),
]
# The JWT targets (JWT_TARGETS above), as CPU per request.
TARGETS += [(what + " (CPU/req)", num, den, "cpu_us_per_req", ("<=", bound))
            for what, num, den, bound in JWT_TARGETS if bound is not None]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------

class Procs:
    """Every child this script starts; all stopped on exit, by their own pid."""

    def __init__(self):
        self.children = []

    def start(self, args, cpu=None, cpus=None, **kw):
        cpus = {cpu} if cpu is not None else cpus
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
        child = subprocess.Popen(args, preexec_fn=preexec, **kw)
        self.children.append(child)
        return child

    def stop(self):
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def http_get(port, path, headers=None, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until(what, check, child, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"{what} exited with {child.returncode} while starting")
        try:
            result = check()
            if result is not None:
                return result
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} did not become ready within {timeout:.0f} s")


def custom_section(name, payload):
    """A wasm custom section (id 0): a module with it appended has other bytes, the same code."""
    body = bytes([len(name)]) + name + payload
    assert len(name) < 128 and len(body) < 128  # one-byte LEB128 lengths
    return bytes([0, len(body)]) + body


def rss_bytes(pid):
    """VmRSS of a process (/proc/PID/status), in bytes."""
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) * 1024


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


# --- configurations ---------------------------------------------------------------------

def render_envoy(python, wasm, ports, plugin_config=None, ecds=None):
    """envoy/envoy.yaml through scripts/render_envoy.py, as the tests run it (`ecds`: the
    filter from a watched file in that directory)."""
    extra = ["--plugin-config", "-"] if plugin_config else []
    extra += ["--ecds", str(ecds)] if ecds else []
    out = subprocess.run(
        [python, str(ROOT / "scripts" / "render_envoy.py"), "--wasm", str(wasm), "--listen-port", "0",
         "--admin-port", "0", "--auth", f"127.0.0.1:{ports['auth']}",
         "--upstream", f"127.0.0.1:{ports['upstream']}", *extra],
        input=json.dumps(plugin_config) if plugin_config else None,
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def hcm_of(config):
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def without_wasm(config):
    hcm = hcm_of(config)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "nebula-authz"]
    return config


def exact(names):
    return {"patterns": [{"exact": n, "ignore_case": True} for n in names]}


def ext_authz(config):
    """Envoy's HTTP ext_authz as Istio's CUSTOM action sets it up for an envoyExtAuthzHttp
    provider: same auth cluster, includeRequestHeadersInCheck, headersToUpstreamOnAllow,
    headersToDownstreamOnDeny, fail closed; public paths exempt per route."""
    name = "envoy.filters.http.ext_authz"
    hcm = hcm_of(config)
    http_filter = {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": "Forbidden"},
            "http_service": {
                "server_uri": {"uri": "http://auth:4300", "cluster": "auth", "timeout": "5s"},
                "authorization_request": {"allowed_headers": exact(REQUEST_HEADERS)},
                "authorization_response": {
                    "allowed_upstream_headers": exact(UPSTREAM_HEADERS),
                    "allowed_client_headers": exact(CLIENT_HEADERS),
                },
            },
        },
    }
    hcm["http_filters"] = [http_filter if f["name"] == "nebula-authz" else f for f in hcm["http_filters"]]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    catch_all = vhost["routes"][-1]
    exempt = {name: {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                     "disabled": True}}
    public = [{"path_separated_prefix": p} for p in PUBLIC_PREFIXES]
    public += [{"safe_regex": {"regex": "/.+" + re.escape(s) + "/?"}} for s in PUBLIC_SUFFIXES]
    vhost["routes"] = [{"match": m, "route": catch_all["route"], "typed_per_filter_config": exempt}
                       for m in public] + [catch_all]
    return config


def policy_plugin_config():
    """The pluginConfig `make convert` wrote for the policy-mode fixture, pointed at the
    bench's auth cluster instead of the Istio service it names."""
    golden = yaml.safe_load((ROOT / "tests/data/policy-mode/wasmplugin.golden.yaml").read_text())
    config = golden["spec"]["pluginConfig"]
    config["auth"].pop("host")
    config["auth"].pop("port")
    config["auth"].update({"cluster": "auth", "authority": "auth:4300"})
    return config


def jwt_plugin_config(jwks):
    return {"auth": {"cluster": "auth", "authority": "auth:4300"},
            "jwt": {"mode": "local", "providers": [{
                "issuer": JWT_ISSUER, "audiences": [JWT_AUDIENCE], "algorithms": ["ES256", "RS256", "EdDSA"], "jwks": jwks,
                "claims_to_headers": {"sub": "x-nebula-actor-id"}}]}}


def full_plugin_config(jwks):
    """The footprint's busiest configuration: the decision cache, local JWT (inline JWKS,
    three algorithms) and source ranges (the bench's client is on loopback)."""
    config = jwt_plugin_config(jwks)
    config["cache"] = CACHED_CONFIG["cache"]
    config["source_ranges"] = ["127.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"]
    return config


def jwt_authn(config, jwks):
    """Envoy's native jwt_authn with filter-jwt's issuer, audience, key and claim header:
    the provider required on protected paths, nothing on the public ones (as ext_authz)."""
    name = "envoy.filters.http.jwt_authn"
    hcm = hcm_of(config)
    http_filter = {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": {
                "issuer": JWT_ISSUER, "audiences": [JWT_AUDIENCE],
                "local_jwks": {"inline_string": json.dumps(jwks)},
                "forward": True,
                "claim_to_headers": [{"header_name": "x-nebula-actor-id", "claim_name": "sub"}],
            }},
            "rules": [{"match": {"path_separated_prefix": p}} for p in PUBLIC_PREFIXES]
            + [{"match": {"safe_regex": {"regex": "/.+" + re.escape(s) + "/?"}}} for s in PUBLIC_SUFFIXES]
            + [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }
    hcm["http_filters"] = [http_filter if f["name"] == "nebula-authz" else f for f in hcm["http_filters"]]
    return config


def mint_jwt(minter, fresh):
    """The JWKS, one repeated token, one invalid one, and per algorithm `fresh` distinct
    valid and forged ones (tests/examples/bench-jwt.rs)."""
    out = subprocess.run([str(minter), JWT_ISSUER, JWT_AUDIENCE, "bench-user", str(fresh)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def traefik_files(directory, port, ports, service=None):
    """Prefect's proxy mode: a public router (priority 2) and an authenticated router
    (priority 1) with the forwardAuth middleware, forwarding to `service` (default: the
    upstream itself)."""
    rule = " || ".join([f"PathPrefix(`{p}`)" for p in PUBLIC_PREFIXES]
                       + [f"PathRegexp(`^/.+{re.escape(s)}/?$`)" for s in PUBLIC_SUFFIXES])
    dynamic = {"http": {
        "routers": {
            "public": {"rule": rule, "priority": 2, "service": "gateway", "entryPoints": ["api"]},
            "authenticated": {"rule": "PathPrefix(`/`)", "priority": 1, "middlewares": ["auth"],
                              "service": "gateway", "entryPoints": ["api"]},
        },
        "middlewares": {"auth": {"forwardAuth": {
            "address": f"http://127.0.0.1:{ports['auth']}/",
            "authRequestHeaders": ["authorization", "Origin", "Access-Control-Request-Method"],
            "authResponseHeaders": UPSTREAM_HEADERS,
        }}},
        "services": {"gateway": {"loadBalancer": {"servers": [{"url": service or f"http://127.0.0.1:{ports['upstream']}"}]}}},
    }}
    static = {
        "entryPoints": {"api": {"address": f"127.0.0.1:{port}"}},
        "providers": {"file": {"filename": str(directory / "dynamic.yaml")}},
        "log": {"level": "ERROR"},
    }
    (directory / "dynamic.yaml").write_text(yaml.safe_dump(dynamic))
    (directory / "traefik.yaml").write_text(yaml.safe_dump(static))
    return directory / "traefik.yaml"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the setup --------------------------------------------------------------------------

class Bench:
    def __init__(self, args, procs, workdir):
        self.args = args
        self.procs = procs
        self.dir = workdir
        self.settle_s = FOOTPRINT_SETTLE_SMOKE_S if getattr(args, "smoke", False) else FOOTPRINT_SETTLE_S
        cpus = sorted(os.sched_getaffinity(0))
        self.all_cpus = set(cpus)  # the footprint rows' Envoys run on all of them
        if len(cpus) >= 2:
            self.proxy_cpu, self.load_cpu = cpus[0], cpus[1]
            os.sched_setaffinity(0, {self.load_cpu})  # children inherit: wrk and the backend
        else:
            log("warning: fewer than 2 CPUs; nothing is pinned")
            self.proxy_cpu = self.load_cpu = None
        self.proxies = {}  # name -> (port, Popen)
        self.also_measured = {}  # proxy name -> more pids whose CPU counts for it (proxy-mode)
        self.jwt = mint_jwt(args.jwt_minter, args.fresh_tokens)
        self.streams = {}

    def token(self, token):
        """The authorization value of a scenario's next request."""
        if token == JWT:
            return f"Bearer {self.jwt['token']}"
        if token == "<invalid>":
            return f"Bearer {self.jwt['invalid']}"
        if is_token_stream(token):
            if token not in self.streams:
                self.streams[token] = itertools.cycle(self.stream_tokens(token))
            return f"Bearer {next(self.streams[token])}"
        return token

    def stream_tokens(self, token):
        kind, _, alg = token.strip("<>").partition(":")
        return self.jwt[kind][alg]

    def start_backend(self):
        child = self.procs.start([str(self.args.backend)], stdout=subprocess.PIPE, text=True)
        line = child.stdout.readline()
        if not line:
            raise SystemExit(f"{self.args.backend} did not start")
        self.ports = json.loads(line)

    def stats(self):
        status, body = http_get(self.ports["upstream"], "/__bench/stats")
        return json.loads(body)

    def start_envoy(self, name, config, wrapper=(), envoy_args=()):
        path = self.dir / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))
        admin = self.dir / f"{name}.admin"
        logfile = open(self.dir / f"{name}.log", "w")
        child = self.procs.start(
            [*wrapper, str(self.args.envoy), "-c", str(path), "--concurrency", "1", "--use-dynamic-base-id",
             "--admin-address-path", str(admin), "-l", "error", *envoy_args],
            cpu=self.proxy_cpu, stdout=logfile, stderr=subprocess.STDOUT)
        self.proxies[name] = (None, child, admin)

    def start_traefik(self, name="traefik", service=None):
        port = free_port()
        tdir = self.dir / name
        tdir.mkdir()
        config = traefik_files(tdir, port, self.ports, service)
        logfile = open(self.dir / f"{name}.log", "w")
        child = self.procs.start([str(self.args.traefik), f"--configFile={config}"], cpu=self.proxy_cpu,
                                 stdout=logfile, stderr=subprocess.STDOUT)
        self.proxies[name] = (port, child, None)

    def start_proxy_mode(self):
        """proxy-mode: Traefik forwardAuth -> a router-only Envoy (the mesh's sidecar) ->
        the upstream; both on the proxy CPU, their CPU summed (`self.also_measured`)."""
        sidecar = "envoy-behind-traefik"
        self.start_envoy(sidecar, without_wasm(render_envoy(self.args.python, self.args.wasm, self.ports)))
        port = self.envoy_port(sidecar)
        self.start_traefik("proxy-mode", f"http://127.0.0.1:{port}")
        self.also_measured["proxy-mode"] = [self.proxies[sidecar][1].pid]

    def envoy_config(self, proxy):
        py = self.args.python
        if proxy == "envoy-noauth":
            return without_wasm(render_envoy(py, self.args.wasm, self.ports))
        if proxy == "envoy-noop":
            return render_envoy(py, self.args.noop_wasm, self.ports)
        if proxy == "envoy-noop-min":
            return render_envoy(py, self.args.noop_min_wasm, self.ports)
        if proxy.startswith("envoy-floor-"):
            return render_envoy(py, self.args.floor_wasm, self.ports, {"floor": proxy.removeprefix("envoy-floor-")})
        if proxy == "envoy-extauthz":
            return ext_authz(render_envoy(py, self.args.wasm, self.ports))
        if proxy == "envoy-filter-noxf":
            return render_envoy(py, self.args.wasm, self.ports, NOXF_CONFIG)
        if proxy == "envoy-filter-noretry":
            return render_envoy(py, self.args.wasm, self.ports, NORETRY_CONFIG)
        if proxy == "envoy-filter-cached":
            return render_envoy(py, self.args.wasm, self.ports, CACHED_CONFIG)
        if proxy == "envoy-filter-policy":
            return render_envoy(py, self.args.wasm, self.ports, policy_plugin_config())
        if proxy == "envoy-filter-jwt":
            return render_envoy(py, self.args.wasm, self.ports, jwt_plugin_config(self.jwt["jwks"]))
        if proxy == "envoy-jwtauthn":
            return jwt_authn(render_envoy(py, self.args.wasm, self.ports), self.jwt["jwks"])
        return render_envoy(py, self.args.variants.get(proxy, self.args.wasm), self.ports)

    def callgrind(self, scenario, n):
        """Instructions per request of the scenario's Envoy under callgrind: deterministic
        where the machine's load makes timings noisy. Counted over exactly `n` sequential
        requests after a warm-up (all of Envoy's threads, so a little idle work too)."""
        fresh = is_token_stream(SCENARIOS[scenario][2])  # a first-seen token on every request
        if fresh:
            n = min(n, JWT_CALLGRIND_MAX_REQUESTS)
        text = self.callgrind_dump(scenario, n).read_text(errors="replace")
        m = re.search(r"^summary: (\d+)", text, re.M)
        if not m:
            raise SystemExit(f"no summary in the callgrind dump of {scenario}")
        return int(m.group(1)) / n, n

    def callgrind_dump(self, scenario, n, config=None, requests=None, envoy_args=()):
        """The callgrind dump (a file in the work directory) of `n` measured requests;
        `config` replaces the scenario's Envoy config, `requests` (a list of (path,
        expected status), cycled) its requests, `envoy_args` are added (bench/profile.py)."""
        proxy, path, token, expected, _ = SCENARIOS[scenario]
        fresh = is_token_stream(token)  # a first-seen token on every request
        name = f"cg-{scenario}-{len(self.proxies)}"
        out = self.dir / f"{name}.callgrind"
        # One dump per thread: only the worker's counts (`--concurrency 1`: every request,
        # the filter and the callout run there). The main thread's timers (stats flushes)
        # depend on wall time, which a loaded machine stretches: counted in, they moved
        # the per-request count by several thousand instructions between runs.
        wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
                   "--separate-threads=yes", "--smc-check=all-non-file", f"--callgrind-out-file={out}.%p"]
        self.start_envoy(name, config or self.envoy_config(proxy), wrapper, envoy_args)
        port = self.envoy_port(name, timeout=300)
        child = self.proxies[name][1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        plan = requests or [(path, expected)]

        def send(count):
            for i in range(count):
                value = self.token(token)
                want_path, want = plan[i % len(plan)]
                conn.request("GET", want_path, headers={"authorization": value})
                response = conn.getresponse()
                response.read()
                if response.status != want:
                    log_tail = "\n".join((self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-20:])
                    raise SystemExit(f"{scenario} under callgrind answered {response.status}; {name}.log:\n{log_tail}")

        send(50 if fresh else max(n // 2, 200))
        subprocess.run(["callgrind_control", "--instr=on", str(child.pid)], check=True, capture_output=True)
        send(n)
        subprocess.run(["callgrind_control", "--dump", str(child.pid)], check=True, capture_output=True)
        conn.close()
        child.terminate()
        try:
            # valgrind writes its dumps on the way out: slow on a loaded machine.
            child.wait(timeout=300)
        except subprocess.TimeoutExpired:
            # The measured dump is written by then (callgrind_control --dump above).
            child.kill()
            child.wait()
        dumps = []
        for dump in self.dir.glob(f"{name}.callgrind.*"):
            text = dump.read_text(errors="replace")
            m = re.search(r"^summary: (\d+)", text, re.M)
            if ("Trigger: Client Request" in text or "Trigger: dump" in text) and m:
                dumps.append((int(m.group(1)), dump))
        if dumps:
            return max(dumps)[1]  # the busiest thread: the worker
        raise SystemExit(f"no callgrind dump for {scenario} in {self.dir}")

    def envoy_port(self, name, timeout=30.0):
        _, child, admin = self.proxies[name]

        def listening():
            text = admin.read_text().strip() if admin.exists() else ""
            if not text:
                return None
            host, _, aport = text.rpartition(":")
            status, body = http_get(int(aport), "/ready")
            if status != 200:
                return None
            status, body = http_get(int(aport), "/listeners?format=json")
            listeners = json.loads(body)["listener_statuses"]
            return listeners[0]["local_address"]["socket_address"]["port_value"]

        return wait_until(f"Envoy ({name}; log {self.dir / (name + '.log')})", listening, child, timeout)

    def start_all(self, needed):
        for name in needed:
            if name == "traefik":
                self.start_traefik()
            elif name == "proxy-mode":
                self.start_proxy_mode()
            else:
                self.start_envoy(name, self.envoy_config(name))
        for name in needed:
            port, child, _ = self.proxies[name]
            if name in ("traefik", "proxy-mode"):
                wait_until(f"Traefik (log {self.dir / (name + '.log')})",
                           lambda: http_get(port, PUBLIC)[0] == 200 or None, child)
            else:
                port = self.envoy_port(name)
            self.proxies[name] = (port, child, None)
            if name == "envoy-filter-cached":
                # The one callout that fills the cache; every later request is a hit.
                http_get(port, PROTECTED, {"authorization": ALLOW})

    def request(self, scenario):
        proxy, path, token, _, _ = SCENARIOS[scenario]
        port = self.proxies[proxy][0]
        headers = {"authorization": self.token(token)}
        if scenario not in FLOOR_ROWS:  # a floor strips nothing: only filters and peers are tried
            headers["x-nebula-actor-id"] = "spoofed"
        return http_get(port, path, headers)

    # --- footprint: start-up and memory of one sidecar ----------------------------------
    def footprint_sample(self, row, concurrency):
        """One Envoy of a FOOTPRINT row with `concurrency` workers, on every CPU: seconds
        from spawn to the first answered request through the filter, its RSS (bytes) once
        it has answered a few more and settled, and the CPU seconds it had used by the
        first answer (all threads: V8 compiles on background threads; unlike the wall
        clock, this hardly moves with the machine's load). The config is rendered before
        the clock starts."""
        name = f"fp-{row}-{concurrency}-{len(self.proxies)}"
        child, port, _, startup = self.footprint_start(name, self.footprint_config(row), concurrency)
        cpu = cpu_ticks(child.pid) / CLK_TCK
        for _ in range(20):
            http_get(port, PUBLIC, {"authorization": ALLOW})
        # Steady state: envoy.yaml's memory_allocator_manager returns the free pages the
        # compile left once a second.
        time.sleep(self.settle_s)
        rss = rss_bytes(child.pid)
        child.terminate()
        child.wait(timeout=30)
        return startup, rss, cpu

    def footprint_start(self, name, config, concurrency):
        """Starts Envoy with `config` on every CPU and waits for the first request answered
        through its listener: (process, listener port, admin port, seconds from spawn)."""
        path = self.dir / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))
        admin = self.dir / f"{name}.admin"
        logfile = open(self.dir / f"{name}.log", "w")
        started = time.monotonic()
        child = self.procs.start(
            [str(self.args.envoy), "-c", str(path), "--concurrency", str(concurrency), "--use-dynamic-base-id",
             "--admin-address-path", str(admin), "-l", "error"],
            cpus=self.all_cpus, stdout=logfile, stderr=subprocess.STDOUT)
        self.proxies[name] = (None, child, admin)
        port = aport = None
        while True:
            if child.poll() is not None:
                raise SystemExit(f"Envoy ({name}) exited with {child.returncode}; log {self.dir / (name + '.log')}")
            if time.monotonic() - started > 60:
                raise SystemExit(f"Envoy ({name}) did not answer within 60 s; log {self.dir / (name + '.log')}")
            try:
                if port is None and admin.exists() and admin.read_text().strip():
                    aport = int(admin.read_text().strip().rpartition(":")[2])
                    listeners = json.loads(http_get(aport, "/listeners?format=json")[1])["listener_statuses"]
                    port = listeners[0]["local_address"]["socket_address"]["port_value"] or None
                if port is not None and http_get(port, PUBLIC, {"authorization": ALLOW})[0] == 200:
                    break
            except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.005)
        return child, port, aport, time.monotonic() - started

    def reconfig_sample(self, row):
        """A running Envoy (2 workers) whose filter comes by ECDS from a watched file, as
        istiod delivers a WasmPlugin: ms from the rename of a new version into place to
        Envoy's `update_success` and the next request answered, first for a new plugin
        configuration (same module: Envoy keeps the VM, the filter configures again), then
        for a new module (the same code plus one custom section: other bytes, as when a
        new image is pulled, so V8 compiles it again); and the RSS growth (bytes) the new
        module left once it served, and the CPU ms the new module's push took."""
        wasm = self.args.noop_wasm if row == "noop-wasm" else self.args.wasm
        ecds = self.dir / f"ecds-{row}-{len(self.proxies)}"
        ecds.mkdir()
        config = render_envoy(self.args.python, wasm, self.ports, ecds=ecds)
        child, port, aport, _ = self.footprint_start(ecds.name, config, FOOTPRINT_WORKERS[0])
        resource = ecds / "nebula-authz.json"
        stat = "extension_config_discovery.http_filter.nebula-authz.update_success"

        def successes():
            # Envoy's main thread answers the admin port, and compiles a new module: the
            # answer waits for the compile.
            text = http_get(aport, f"/stats?filter={stat}", timeout=60)[1].decode()
            m = re.search(rf"^{re.escape(stat)}: (\d+)$", text, re.M)
            return int(m.group(1)) if m else 0

        def push(change):
            doc = json.loads(resource.read_text())
            doc["version_info"] = str(int(doc["version_info"]) + 1)
            change(doc["resources"][0]["typed_config"]["config"])
            tmp = ecds / "next.tmp"
            tmp.write_text(json.dumps(doc))
            before = successes()
            started, cpu = time.monotonic(), cpu_ticks(child.pid)
            tmp.rename(resource)
            while successes() == before:
                if time.monotonic() - started > 60:
                    raise SystemExit(f"Envoy ({ecds.name}) did not take ECDS version {doc['version_info']}")
                time.sleep(0.005)
            while http_get(port, PUBLIC, {"authorization": ALLOW})[0] != 200:
                time.sleep(0.005)
            return (time.monotonic() - started) * 1e3, (cpu_ticks(child.pid) - cpu) / CLK_TCK * 1e3

        def new_configuration(config):
            plugin = json.loads(config["configuration"]["value"])
            plugin["status_on_error"] = 503  # any valid change; the empty filter ignores it
            config["configuration"]["value"] = json.dumps(plugin)

        def new_module(config):
            copy = ecds / "copy.wasm"
            copy.write_bytes(wasm.read_bytes() + custom_section(b"bench-copy", b"2"))
            config["vm_config"]["code"]["local"]["filename"] = str(copy)

        config_ms, _ = push(new_configuration)
        time.sleep(self.settle_s)
        rss_before = rss_bytes(child.pid)
        module_ms, module_cpu_ms = push(new_module)
        for _ in range(20):
            http_get(port, PUBLIC, {"authorization": ALLOW})
        time.sleep(self.settle_s)
        grown = rss_bytes(child.pid) - rss_before
        child.terminate()
        child.wait(timeout=30)
        return config_ms, module_ms, grown, module_cpu_ms

    def footprint_config(self, row):
        py = self.args.python
        if "@" in row:  # --variant LABEL=WASM: the minimal config on another build
            return render_envoy(py, self.args.variants[f"envoy-{row.partition('@')[2]}"], self.ports)
        if row == "envoy":
            return without_wasm(render_envoy(py, self.args.wasm, self.ports))
        if row == "noop-wasm":
            return render_envoy(py, self.args.noop_wasm, self.ports)
        if row == "filter-minimal":
            return render_envoy(py, self.args.wasm, self.ports)
        if row == "filter-policy":
            return render_envoy(py, self.args.wasm, self.ports, policy_plugin_config())
        return render_envoy(py, self.args.wasm, self.ports, full_plugin_config(self.jwt["jwks"]))

    # --- smoke: correctness only ----------------------------------------------------------
    def smoke(self, scenarios, n=3):
        """Returns (checks run, names of the failed ones)."""
        checks, failures = 0, []
        for scenario in scenarios:
            expected_status, per_request = SCENARIOS[scenario][3], SCENARIOS[scenario][4]
            before = self.stats()
            statuses = [self.request(scenario)[0] for _ in range(n)]
            after = self.stats()
            delta = {k: after[k] - before[k] for k in after}
            problems = []
            if statuses != [expected_status] * n:
                problems.append(f"statuses {statuses}, expected {expected_status}")
            if delta["auth"] != per_request * n:
                problems.append(f"auth service saw {delta['auth']} requests, expected {per_request * n}")
            upstream = n if expected_status == 200 else 0
            if delta["upstream"] != upstream:
                problems.append(f"upstream saw {delta['upstream']} requests, expected {upstream}")
            # A cache hit or a verified JWT injects the identity without a callout.
            identity = upstream if scenario in LOCAL_IDENTITY else upstream * per_request
            if delta["upstream_identity"] != identity:
                problems.append(f"{delta['upstream_identity']} upstream requests carried the auth identity, "
                                f"expected {identity}")
            # Envoy-based filters strip the spoofed identity; peers that skip public paths do not.
            if scenario.startswith("filter-") and delta["upstream_spoofed"]:
                problems.append(f"{delta['upstream_spoofed']} spoofed identities reached the upstream")
            checks += 1
            print(f"{'ok  ' if not problems else 'FAIL'} {scenario}: {n} x {statuses[0]}, "
                  f"auth calls {delta['auth']}, upstream {delta['upstream']}" +
                  "".join(f"\n     {p}" for p in problems))
            if problems:
                failures.append(scenario)
        # The peers must exempt the same public paths (ext_authz per route, Traefik's
        # public router), or their rows would not compare like with like.
        for proxy in sorted({SCENARIOS[s][0] for s in scenarios} & {"envoy-extauthz", "traefik", "proxy-mode"}):
            port = self.proxies[proxy][0]
            for path, status in [(PUBLIC, 200), ("/api/accounts/a/workspaces/w/events/out", 200), (PROTECTED, 401)]:
                before = self.stats()["auth"]
                got = http_get(port, path)[0]
                calls = self.stats()["auth"] - before
                checks += 1
                if got != status or calls != (1 if status == 401 else 0):
                    print(f"FAIL {proxy} {path}: {got} with {calls} auth calls, expected {status}")
                    failures.append(f"{proxy} {path}")
        print("     (ext_authz and traefik: public paths exempt, protected ones checked)")
        return checks, failures

    # --- load -----------------------------------------------------------------------------
    def run_wrk(self, scenario, duration):
        proxy, path, token, expected, per_request = SCENARIOS[scenario]
        port, child, _ = self.proxies[proxy]
        if is_token_stream(token):
            script = wrk_token_script(self.dir / f"{scenario}.lua", self.stream_tokens(token))
            credential = ["-s", str(script)]
        else:
            credential = ["-H", f"authorization: {self.token(token)}"]
        cmd = [self.args.wrk, "-t1", f"-c{self.args.connections}", f"-d{duration}s", "--latency",
               *credential, f"http://127.0.0.1:{port}{path}"]
        pids = [child.pid, *self.also_measured.get(proxy, [])]
        # The previous run stopped mid-flight too: let its last callouts reach the backend
        # before this window's count starts (Traefik's forwardAuth ones land late).
        time.sleep(0.3)
        before_stats, before_cpu = self.stats(), sum(cpu_ticks(pid) for pid in pids)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        after_cpu, after_stats = sum(cpu_ticks(pid) for pid in pids), self.stats()
        result = parse_wrk(out)
        requests = result["requests"]
        result["cpu_us_per_req"] = (after_cpu - before_cpu) / CLK_TCK * 1e6 / requests if requests else None
        auth_calls = after_stats["auth"] - before_stats["auth"]
        result["auth_per_req"] = auth_calls / requests if requests else None
        result["auth_connections"] = after_stats["auth_connections"] - before_stats["auth_connections"]
        result["upstream_connections"] = after_stats["upstream_connections"] - before_stats["upstream_connections"]
        # Errors: socket errors plus responses with another status class than expected.
        unexpected = result["non_2xx_3xx"] if expected < 400 else requests - result["non_2xx_3xx"]
        result["errors"] = result["socket_errors"] + unexpected
        # wrk stops mid-flight: the last connections' callouts may have no counted response.
        slack = self.args.connections + 1
        ok = abs(auth_calls - per_request * requests) <= slack and requests > 0
        result["checked"] = ok
        if not ok:
            log(f"CHECK FAILED {scenario}: {auth_calls} auth calls for {requests} requests "
                f"(expected {per_request} per request)")
        return result


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text):
    def latency(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else None

    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if not m:
        raise SystemExit(f"cannot parse wrk output:\n{text}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    return {
        "requests": int(m.group(1)),
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency(50), "p90_ms": latency(90), "p99_ms": latency(99),
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "non_2xx_3xx": int(non.group(1)) if non else 0,
    }


# --- reporting --------------------------------------------------------------------------

# The footprint rows: Envoy alone, the empty wasm filter, and nebula-authz in three
# configurations. Each Envoy is started alone (nothing else measured meanwhile) with
# 2 workers, then with 4 (the per-worker cost is the slope between the two).
FOOTPRINT = {
    "envoy": "Envoy alone (router only)",
    "noop-wasm": "bench/noop-wasm (an empty wasm filter)",
    "filter-minimal": "nebula-authz, minimal config (`auth` only)",
    "filter-policy": "nebula-authz, policy mode (`make convert`'s config)",
    "filter-full": "nebula-authz, cache + JWT + source_ranges",
}
FOOTPRINT_WORKERS = (2, 4)
# The rows whose Envoy also takes a configuration change, then a new module, by ECDS
# while running (2 workers); the start-up bound applies to both.
RECONFIG = {
    "noop-wasm": "bench/noop-wasm (an empty wasm filter)",
    "filter-minimal": "nebula-authz, minimal config (`auth` only)",
}
MIB = 1024 * 1024
# (what, the row's value minus noop-wasm's, bound): RSS in MiB over Envoy alone at 2
# workers, each further worker's RSS, start-up in ms.
FOOTPRINT_BOUNDS = {"rss": 6.0, "per_worker": 1.0, "startup": 150.0}
# Seconds from the last request to the RSS reading (Envoy's background release of free
# memory, envoy/envoy.yaml, has run by then); the smoke run asserts no bound and reads
# sooner.
FOOTPRINT_SETTLE_S = 1.5
FOOTPRINT_SETTLE_SMOKE_S = 0.2


def footprint_report(bench, rounds):
    """Interleaved rounds of every FOOTPRINT row at each worker count; medians. Returns
    the summary the results file keeps: per row start-up (ms), RSS over Envoy alone (MiB)
    at 2 workers, MiB per further worker, and the module's bytes."""
    samples = {(row, c): [] for row in FOOTPRINT for c in FOOTPRINT_WORKERS}
    reconfig = {row: [] for row in RECONFIG}
    for round_ in range(rounds):
        for row in FOOTPRINT:
            for c in FOOTPRINT_WORKERS:
                samples[(row, c)].append(bench.footprint_sample(row, c))
        for row in RECONFIG:
            reconfig[row].append(bench.reconfig_sample(row))
        log(f"footprint round {round_ + 1}/{rounds} done")
    med = {key: (statistics.median(s for s, _, _ in v), statistics.median(r for _, r, _ in v),
                 statistics.median(c for _, _, c in v))
           for key, v in samples.items()}
    lo, hi = FOOTPRINT_WORKERS
    base = med[("envoy", lo)][1]
    modules = {"envoy": None, "noop-wasm": bench.args.noop_wasm}
    modules.update({f"filter-minimal@{label.removeprefix('envoy-')}": path
                    for label, path in bench.args.variants.items()})
    summary = {}
    for row in FOOTPRINT:
        wasm = modules.get(row, bench.args.wasm)
        summary[row] = {
            "startup_ms": med[(row, lo)][0] * 1e3,
            "startup_cpu_ms": med[(row, lo)][2] * 1e3,
            "rss_mib": med[(row, lo)][1] / MIB,
            "rss_over_envoy_mib": (med[(row, lo)][1] - base) / MIB,
            "mib_per_worker": (med[(row, hi)][1] - med[(row, lo)][1]) / (hi - lo) / MIB,
            "module_bytes": wasm.stat().st_size if wasm else None,
        }
    changes = {row: {"config_change_ms": statistics.median(c for c, _, _, _ in v),
                     "new_module_ms": statistics.median(m for _, m, _, _ in v),
                     "new_module_rss_mib": statistics.median(g for _, _, g, _ in v) / MIB,
                     "new_module_cpu_ms": statistics.median(u for _, _, _, u in v)}
               for row, v in reconfig.items()}
    return {"rounds": rounds, "workers": list(FOOTPRINT_WORKERS), "rows": summary, "reconfig": changes,
            "targets": footprint_targets(summary, changes)}


def footprint_targets(rows, changes):
    noop = rows["noop-wasm"]
    out = []
    for row in (r for r in changes if r != "noop-wasm"):
        for what, key in [("config change (ECDS, same module)", "config_change_ms"),
                          ("new module (ECDS)", "new_module_ms")]:
            over = changes[row][key] - changes["noop-wasm"][key]
            out.append({"target": f"{row} {what}", "measured": changes[row][key], "noop": changes["noop-wasm"][key],
                        "over_noop": over, "bound": f"<= noop-wasm + {FOOTPRINT_BOUNDS['startup']:g} ms",
                        "met": over <= FOOTPRINT_BOUNDS["startup"], "unit": "ms"})
    for row in (r for r in rows if r.startswith("filter-")):
        r = rows[row]
        for what, key, bound, unit in [
                ("RSS over Envoy alone", "rss_over_envoy_mib", FOOTPRINT_BOUNDS["rss"], "MiB"),
                ("RSS per further worker", "mib_per_worker", FOOTPRINT_BOUNDS["per_worker"], "MiB"),
                ("start-up", "startup_ms", FOOTPRINT_BOUNDS["startup"], "ms")]:
            over = r[key] - noop[key]
            out.append({"target": f"{row} {what}", "measured": r[key], "noop": noop[key], "over_noop": over,
                        "bound": f"<= noop-wasm + {bound:g} {unit}", "met": over <= bound, "unit": unit})
    return out


def svg_bars(title, unit, rows, y, width=760):
    """One horizontal bar panel of the chart: (label, value) rows; returns (svg, height)."""
    label_w, bar_w, row_h = 300, 360, 18
    top = max((v for _, v in rows), default=0) or 1
    out = [f'<text x="10" y="{y + 16}" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(rows):
        ry = y + 26 + i * row_h
        w = max(value, 0) / top * bar_w
        out.append(f'<text x="{label_w - 6}" y="{ry + 13}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect class="bar" x="{label_w}" y="{ry + 2}" width="{w:.1f}" height="{row_h - 4}" fill="#4878a8"/>')
        out.append(f'<text x="{label_w + w + 4:.1f}" y="{ry + 13}">{value:,.1f} {escape(unit)}</text>')
    return "\n".join(out), 26 + len(rows) * row_h + 14


def write_chart(path, summary, footprint):
    """bench/results/latest.svg: CPU per request of each scenario (the load run, when there
    is one), and each sidecar's RSS over Envoy alone and start-up (the footprint), from
    the same run as the tables. Plain SVG written here: no plotting library needed."""
    panels, y = [], 10
    if summary:
        rows = [(s, summary[s]["cpu_us_per_req"]) for s in SCENARIOS if summary.get(s, {}).get("cpu_us_per_req")]
        svg, h = svg_bars("CPU per request (µs, proxy process, median)", "µs", rows, y)
        panels.append(svg)
        y += h
    names = list(footprint["rows"])
    for title, key, unit in [("RSS over Envoy alone, 2 workers (MiB)", "rss_over_envoy_mib", "MiB"),
                             ("Start-up: spawn to first answered request (ms)", "startup_ms", "ms")]:
        svg, h = svg_bars(title, unit, [(n, footprint["rows"][n][key]) for n in names], y)
        panels.append(svg)
        y += h
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{y}" '
                    f'font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n'
                    + "\n".join(panels) + "\n</svg>\n")
    return path


def chart_bars(path):
    """The number of bars in a chart written by write_chart (the smoke run's check)."""
    import xml.etree.ElementTree as ET
    root = ET.parse(path).getroot()
    return sum(1 for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "bar")


def footprint_table(fp):
    lo, hi = fp["workers"]
    lines = [f"| Envoy with ({lo} workers, median of {fp['rounds']}) | module | start-up ms | start-up CPU ms | "
             f"RSS MiB | RSS over Envoy alone MiB | MiB per further worker ({lo} -> {hi}) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row, what in FOOTPRINT.items():
        r = fp["rows"][row]
        module = "-" if r["module_bytes"] is None else f"{r['module_bytes'] / 1024:,.0f} KiB"
        lines.append(f"| {what} | {module} | {r['startup_ms']:.0f} | {fmt(r.get('startup_cpu_ms'), '.0f')} | "
                     f"{r['rss_mib']:.1f} | {r['rss_over_envoy_mib']:+.1f} | {r['mib_per_worker']:.2f} |")
    if fp.get("reconfig"):
        lines += ["", f"| a running Envoy ({lo} workers, ECDS, median of {fp['rounds']}) | "
                  "new plugin configuration ms | new module ms | new module CPU ms | "
                  "RSS growth after the new module MiB |",
                  "|---|---:|---:|---:|---:|"]
        for row, what in RECONFIG.items():
            r = fp["reconfig"][row]
            lines.append(f"| {what} | {r['config_change_ms']:.0f} | {r['new_module_ms']:.0f} | "
                         f"{fmt(r.get('new_module_cpu_ms'), '.0f')} | "
                         f"{r['new_module_rss_mib']:+.1f} |")
    lines += ["", "| footprint target | measured | noop-wasm | over noop-wasm | bound | met |",
              "|---|---:|---:|---:|---|---|"]
    for t in fp["targets"]:
        lines.append(f"| {t['target']} | {t['measured']:.1f} {t['unit']} | {t['noop']:.1f} | "
                     f"{t['over_noop']:+.1f} | {t['bound']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


METRICS = ["rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req", "auth_per_req", "auth_connections"]


def summarize(runs):
    """Median of each metric over the rounds; errors summed."""
    out = {}
    for scenario, results in runs.items():
        row = {k: statistics.median([r[k] for r in results if r[k] is not None])
               for k in METRICS if any(r[k] is not None for r in results)}
        row["errors"] = sum(r["errors"] for r in results)
        row["requests"] = sum(r["requests"] for r in results)
        row["rounds"] = len(results)
        row["checked"] = all(r["checked"] for r in results)
        out[scenario] = row
    return out


def ratio(summary, num, den, metric):
    a, b = summary.get(num, {}).get(metric), summary.get(den, {}).get(metric)
    return a / b if a is not None and b else None


def targets(summary):
    rows = []
    for what, num, den, metric, (op, bound) in TARGETS:
        r = ratio(summary, num, den, metric)
        met = None if r is None else (r <= bound if op == "<=" else r >= bound)
        rows.append({"target": what, "ratio": r, "bound": f"{op} {bound:.2f}", "met": met})
    return rows


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(summary):
    lines = ["| scenario | req/s | p50 ms | p90 ms | p99 ms | errors | CPU µs/req | auth calls/req | auth conns | "
             + " | ".join(f"CPU × {b}" for b in BASELINES) + " | req/s × ext_authz |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(BASELINES) + "---:|"]
    for scenario in SCENARIOS:
        row = summary.get(scenario)
        if not row:
            continue
        ratios = [fmt(ratio(summary, scenario, b, "cpu_us_per_req"), ".2f") for b in BASELINES]
        lines.append(
            f"| {scenario} | {fmt(row.get('rps'), '.0f')} | {fmt(row.get('p50_ms'), '.2f')} | "
            f"{fmt(row.get('p90_ms'), '.2f')} | {fmt(row.get('p99_ms'), '.2f')} | {row['errors']} | "
            f"{fmt(row.get('cpu_us_per_req'), '.1f')} | {fmt(row.get('auth_per_req'), '.2f')} | "
            f"{fmt(row.get('auth_connections'), '.0f')} | "
            + " | ".join(ratios) + f" | {fmt(ratio(summary, scenario, 'ext_authz', 'rps'), '.2f')} |")
    return "\n".join(lines)


def targets_table(rows):
    lines = ["| target | measured | bound | met |", "|---|---:|---|---|"]
    for t in rows:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {fmt(t['ratio'], '.2f')} | {t['bound']} | {met} |")
    return "\n".join(lines)


def micro_table(micro):
    lines = ["| micro-benchmark | ns/op |", "|---|---:|"]
    for case in micro.get("results", []):
        lines.append(f"| {case['name']} | {case['ns']:.1f} |")
    if "templates_10000_vs_10" in micro:
        lines.append(f"| matching, 10 000 vs 10 templates (ratio) | {micro['templates_10000_vs_10']:.2f} |")
    return "\n".join(lines)


def machine():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"nproc": os.cpu_count(), "cpu_model": model}


def markdown(doc):
    m = doc["machine"]
    p = doc["parameters"]
    out = [f"Machine: {m['nproc']} CPUs, {m['cpu_model']}; {p['rounds']} rounds x {p['duration_s']} s per "
           f"scenario, {p['connections']} connections, wrk 1 thread; {doc['date']}.", "", table(doc["summary"]),
           "", targets_table(doc["targets"])]
    if doc.get("footprint"):
        out += ["", footprint_table(doc["footprint"])]
    if doc.get("micro"):
        out += ["", micro_table(doc["micro"])]
    return "\n".join(out)


def callgrind_targets_table(counts):
    lines = ["| target (instructions/request) | measured | bound | met |", "|---|---:|---|---|"]
    for what, num, den, (op, bound) in CALLGRIND_TARGETS:
        r = counts[num] / counts[den] if num in counts and den in counts and counts[den] else None
        met = "-" if r is None else ("yes" if (r <= bound if op == "<=" else r >= bound) else "**no**")
        # Three decimals: a ratio at its bound must not print as equal to it and fail.
        lines.append(f"| {what} | {fmt(r, '.3f')} | {op} {bound:.2f} | {met} |")
    return "\n".join(lines)


def floor_table(counts):
    """The instruction targets against bench/floor-wasm: the bound, what the floor row costs in
    the same ratio, the filter's, and the filter's instructions above its floor."""
    lines = ["| target (instructions/request) | bound | floor (bench/floor-wasm) | filter | filter over its floor |",
             "|---|---|---:|---:|---:|"]
    for what, num, den, (op, bound) in CALLGRIND_TARGETS:
        floor = FLOOR_OF.get(num)
        if not floor or not {num, den, floor} <= set(counts):
            continue
        below = " (the bound is below the floor)" if counts[floor] / counts[den] > bound else ""
        lines.append(f"| {what} | {op} {bound:.2f} | {counts[floor] / counts[den]:.3f}{below} | "
                     f"{counts[num] / counts[den]:.3f} | {counts[num] - counts[floor]:,.0f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def callgrind_report(bench, scenarios, n):
    counts, requests = {}, {}
    for scenario in scenarios:
        counts[scenario], requests[scenario] = bench.callgrind(scenario, n)
        log(f"{scenario:15} {counts[scenario]:10.0f} instructions/request")
    print(f"| scenario | instructions/request (callgrind) | requests | × no-auth | × noop-wasm | × ext_authz |")
    print("|---|---:|---:|---:|---:|---:|")
    for scenario, ir in counts.items():
        ratios = [fmt(ir / counts[b], ".2f") if b in counts else "-" for b in BASELINES]
        print(f"| {scenario} | {ir:.0f} | {requests[scenario]} | " + " | ".join(ratios) + " |")
    print()
    print(callgrind_targets_table(counts))
    floors = floor_table(counts)
    if floors:
        print()
        print(floors)
    jwt_callgrind_targets(counts)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "callgrind.json").write_text(json.dumps(
        {"requests": requests, "instructions_per_request": counts}, indent=2))
    return 0


def wasm_exports(path):
    """The names of the functions a wasm module exports (its export section, read by hand:
    the standard library has no wasm parser)."""
    data = Path(path).read_bytes()

    def leb(i):
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i

    names, i = [], 8
    while i < len(data):
        section, i = data[i], i + 1
        size, i = leb(i)
        end = i + size
        if section == 7:
            count, i = leb(i)
            for _ in range(count):
                length, i = leb(i)
                name = data[i:i + length].decode()
                kind, i = data[i + length], i + length + 1
                _, i = leb(i)
                if kind == 0:
                    names.append(name)
        i = end
    return names


def check_noop_exports(args):
    """The patched SDK both ways (third_party/proxy-wasm): noop-wasm (default features)
    exports every callback, noop-wasm-min only the SDK's own, floor-wasm those plus its
    three. Returns (checks, failures)."""
    callbacks = {
        path: sorted(n for n in wasm_exports(path) if n.startswith("proxy_on_"))
        for path in (args.noop_wasm, args.noop_min_wasm, args.floor_wasm)
    }
    # 23 callbacks with a feature, plus context create and delete and the allocator.
    expected = {args.noop_wasm: 26, args.noop_min_wasm: 3, args.floor_wasm: 6}
    failures = []
    for path, names in callbacks.items():
        ok = len(names) == expected[path] and {"proxy_on_context_create", "proxy_on_delete"} <= set(names)
        print(f"{'ok  ' if ok else 'FAIL'} {path.name} exports {len(names)} proxy_on_* callbacks"
              + ("" if ok else f", expected {expected[path]}: {names}"))
        if not ok:
            failures.append(path.name)
    return len(callbacks), failures


# --- main -------------------------------------------------------------------------------

def main():
    venv = ROOT / ".venv" / "bin"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="start every scenario, a few requests each, no load")
    p.add_argument("--quick", action="store_true", help="1 round of 3 s (about 30 s in all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=6, help="seconds per scenario per round")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per scenario first")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--scenarios", help="comma-separated subset (default: all; --callgrind adds the EdDSA rows)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=WASM",
                   help="also run filter-callout with another build of the filter (A/B experiments)")
    p.add_argument("--callgrind", type=int, metavar="N", nargs="?", const=2000,
                   help="instructions per request under valgrind's callgrind over N requests (default 2000) "
                        "for the Envoy scenarios, instead of the load run; slow but repeatable")
    p.add_argument("--footprint", action="store_true",
                   help="only the footprint table (start-up and RSS per sidecar), --rounds rounds")
    p.add_argument("--unchecked", action="store_true",
                   help="skip the behaviour check before the load (for experiments with stripped-down filters)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--micro", type=Path, help="micro-benchmark JSON to include (from make bench)")
    p.add_argument("--markdown", type=Path, metavar="RESULTS", help="print the markdown tables of a results file")
    p.add_argument("--envoy", type=Path, default=Path(os.environ.get("ENVOY_BIN", venv / "envoy")))
    p.add_argument("--traefik", type=Path, default=Path(os.environ.get("TRAEFIK_BIN", venv / "traefik")))
    p.add_argument("--python", default=os.environ.get("NEBULA_PYTHON", sys.executable))
    p.add_argument("--wasm", type=Path, default=Path(os.environ.get(
        "NEBULA_WASM", ROOT / "target/wasm32-wasip1/release/nebula_authz.wasm")))
    p.add_argument("--noop-wasm", type=Path, default=ROOT / "target/wasm32-wasip1/release/noop_wasm.wasm")
    p.add_argument("--noop-min-wasm", type=Path, default=ROOT / "target/wasm32-wasip1/release/noop_wasm_min.wasm",
                   help="bench/noop-wasm built --no-default-features (make bench-build)")
    p.add_argument("--floor-wasm", type=Path, default=ROOT / "target/wasm32-wasip1/release/floor_wasm.wasm",
                   help="bench/floor-wasm (make bench-build): the floor-* rows")
    p.add_argument("--backend", type=Path, default=ROOT / "target/release/bench-backend")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    # Release (make bench-build) signs thousands of RS256 tokens in seconds; the debug
    # build (make bench-smoke) is enough for a few.
    minter = ROOT / "target/release/examples/bench-jwt"
    p.add_argument("--jwt-minter", type=Path,
                   default=minter if minter.exists() else ROOT / "target/debug/examples/bench-jwt",
                   help="tests/examples/bench-jwt.rs (mints the JWT rows' tokens)")
    p.add_argument("--fresh-tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if not args.scenarios:
        # The smoke run starts the floor rows too: their module is checked like the rest.
        args.scenarios = ",".join(s for s in SCENARIOS if args.callgrind or s not in CALLGRIND_ONLY
                                  or (args.smoke and s in FLOOR_ROWS))
    variants = {}
    for spec in args.variant:
        label, _, path = spec.partition("=")
        variants[f"envoy-{label}"] = Path(path)
        SCENARIOS[f"filter-callout@{label}"] = (f"envoy-{label}",) + SCENARIOS["filter-callout"][1:]
        args.scenarios += f",filter-callout@{label}"
        FOOTPRINT[f"filter-minimal@{label}"] = f"nebula-authz, minimal config, build `{label}`"
    args.variants = variants
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if any(is_token_stream(SCENARIOS[s][2]) for s in scenarios):
        # First-seen tokens: under callgrind one per request (plus 50 for the warm-up);
        # under load more than the verified cache holds; a few for the smoke run.
        args.fresh_tokens = (min(args.callgrind, JWT_CALLGRIND_MAX_REQUESTS) + 50 if args.callgrind
                             else 8 if args.smoke else JWT_FRESH_TOKENS)

    needs = [("Envoy", args.envoy, "make envoy"), ("the filter", args.wasm, "make build"),
             ("the noop filter", args.noop_wasm, "make bench-build"),
             ("the minimal noop filter", args.noop_min_wasm, "make bench-build"),
             ("the floor filter", args.floor_wasm, "make bench-build"),
             ("the bench backend", args.backend, "make bench-build"),
             ("the JWT minter", args.jwt_minter, "make bench-build")]
    if {"traefik", "proxy-mode"} & set(scenarios):
        needs.append(("Traefik", args.traefik, "make envoy (installs traefik-bin into .venv)"))
    if not (args.smoke or args.footprint or args.callgrind):
        needs.append(("wrk", Path(shutil.which(args.wrk) or args.wrk), "apt-get install wrk (make bench does)"))
    missing = [f"{what} not found at {path}: run `{how}`" for what, path, how in needs if not path.exists()]
    if missing:
        raise SystemExit("\n".join(missing))

    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as tmp:
        try:
            bench = Bench(args, procs, Path(tmp))
            bench.start_backend()
            if args.footprint:
                print(footprint_table(footprint_report(bench, args.rounds)))
                return 0
            if args.callgrind:
                return callgrind_report(bench, [s for s in scenarios if s not in ("traefik", "proxy-mode")],
                                        args.callgrind)
            started = time.monotonic()
            bench.start_all(sorted({SCENARIOS[s][0] for s in scenarios}))
            log(f"proxies up in {time.monotonic() - started:.1f} s (proxy CPU {bench.proxy_cpu}, "
                f"load CPU {bench.load_cpu})")
            if args.smoke:
                checks, failures = bench.smoke(scenarios)
                export_checks, export_failures = check_noop_exports(args)
                checks, failures = checks + export_checks, failures + export_failures
                # The footprint table once (one round, no bound asserted): every row
                # starts, answers and gets a start-up time and an RSS.
                fp = footprint_report(bench, 1)
                print(footprint_table(fp))
                made = all(r["startup_ms"] > 0 and r["rss_mib"] > 0 for r in fp["rows"].values()) \
                    and set(fp["rows"]) == set(FOOTPRINT) and len(fp["targets"]) == 11 \
                    and all(v > 0 for r in fp["reconfig"].values() for v in list(r.values())[:2])
                print(f"{'ok  ' if made else 'FAIL'} footprint table: {len(fp['rows'])} rows, "
                      f"{len(fp['targets'])} targets")
                checks, failures = checks + 1, failures + ([] if made else ["footprint"])
                # The chart make bench writes, from this run's footprint (no load run here).
                bars = chart_bars(write_chart(Path(tmp) / "bench.svg", None, fp))
                charted = bars == 2 * len(FOOTPRINT)
                print(f"{'ok  ' if charted else 'FAIL'} chart: {bars} bars, expected {2 * len(FOOTPRINT)}")
                checks, failures = checks + 1, failures + ([] if charted else ["chart"])
                print(f"{checks - len(failures)} passed, {len(failures)} failed")
                return 1 if failures else 0
            _, failures = bench.smoke(scenarios, n=1)
            if failures and not args.unchecked:
                raise SystemExit(f"scenarios do not behave as they should: {failures}")
            # Start-up and memory first, while the load's proxies idle.
            footprint = footprint_report(bench, args.rounds)
            for scenario in scenarios:
                bench.run_wrk(scenario, args.warmup)
            runs = {s: [] for s in scenarios}
            for round_ in range(args.rounds):
                # Interleaved, and rotated each round so no scenario always runs first.
                order = scenarios[round_ % len(scenarios):] + scenarios[:round_ % len(scenarios)]
                for scenario in order:
                    r = bench.run_wrk(scenario, args.duration)
                    runs[scenario].append(r)
                    log(f"round {round_ + 1}/{args.rounds} {scenario:15} {r['rps']:9.0f} req/s  "
                        f"p99 {fmt(r['p99_ms'], '.2f')} ms  CPU {fmt(r['cpu_us_per_req'], '.1f')} µs/req")
        finally:
            procs.stop()

    summary = summarize(runs)
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "parameters": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                       "connections": args.connections, "load_generator": "wrk -t1 --latency",
                       "envoy_concurrency": 1},
        "summary": summary,
        "targets": targets(summary),
        "footprint": footprint,
        "runs": runs,
    }
    if args.micro and args.micro.exists():
        doc["micro"] = json.loads(args.micro.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    chart = write_chart(args.out.with_suffix(".svg"), summary, footprint)
    print(f"\n(written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}; "
          f"chart {chart.relative_to(ROOT) if chart.is_relative_to(ROOT) else chart})")
    unchecked = [s for s, row in summary.items() if not row["checked"]]
    if unchecked:
        log(f"scenarios that did not behave as expected under load: {unchecked}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
