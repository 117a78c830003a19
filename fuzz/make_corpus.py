#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into corpus/<target>/ (committed; run again
only to change the seeds). Standard library only. Regression inputs of past findings are
added by hand as corpus/<target>/regression-*."""
import base64, hashlib, hmac, json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"nebula-authz-fuzz-secret-0123456789abcdef"  # src/lib.rs JWT_SECRET
ISSUER = "https://issuer.example"
NOW_S = 1_700_000_000


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256(header, claims, secret=SECRET):
    signed = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return signed + "." + b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


# config
write("config", "minimal.json", '{"auth": {"cluster": "auth"}}')
write("config", "envoy-yaml.json", '{"auth": {"cluster": "auth", "authority": "auth:4300"}}')
write("config", "full-auth.json", json.dumps({
    "auth": {"cluster": "outbound|4300||auth.prefect.svc.cluster.local", "path": "/check", "timeout_ms": 400,
             "request_headers": ["authorization", "cookie", "x-*"], "upstream_headers": ["x-nebula-actor-id"],
             "client_headers": ["www-authenticate", "location"], "allow_statuses": [200, 204],
             "max_response_bytes": 4096, "forward_auth": True, "trust_forward_header": False,
             "upstream_headers_regex": "^X-Auth-Request-", "add_auth_cookies_to_response": ["_oauth2_proxy"]},
    "strip_headers": ["x-nebula-*", "x-auth-request-user"], "public_paths": ["/auth", "/{prefix}/events/out", "/api/{id}/x"],
    "frontend_prefix": "/ui", "status_on_error": 503}))
write("config", "cache.json", '{"auth": {"cluster": "auth"}, "cache": {"entries": 64, "default_ttl": 1, '
      '"max_ttl": 60, "negative_ttl": 1, "stale_if_error": 5}}')
write("config", "jwt.json", json.dumps({"auth": {"cluster": "auth"}, "jwt": {
    "mode": "local_then_callout", "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
    "from_cookies": ["session"], "max_token_bytes": 8192, "cache_entries": 16, "unknown_issuer": "callout",
    "providers": [{"issuer": ISSUER, "secret": SECRET.decode(), "audiences": ["prefect"], "leeway_s": 30,
                   "claims_to_headers": {"sub": "x-nebula-actor-id"}},
                  {"issuer": "https://remote.example", "remote_jwks": {"cluster": "jwks", "path": "/keys"}}]}}))
write("config", "bad-types.json", '{"auth": {"cluster": 7, "timeout_ms": "5s"}, "public_paths": "/x"}')
write("config", "not-json.json", '{"auth": {"cluster": "auth"')

# header_map: the host's serialization, and header lines
def map_bytes(pairs):
    out = struct.pack("<I", len(pairs))
    for n, v in pairs:
        out += struct.pack("<II", len(n), len(v))
    for n, v in pairs:
        out += n + b"\0" + v + b"\0"
    return out

write("header_map", "request.bin", map_bytes([(b":method", b"GET"), (b":path", b"/api/flows"),
                                              (b":authority", b"localhost"), (b"authorization", b"Bearer x")]))
write("header_map", "response.bin", map_bytes([(b":status", b"200"), (b"x-nebula-actor-id", b"caf\xe9"),
                                               (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"x-empty", b"")]))
write("header_map", "empty.bin", map_bytes([]))
write("header_map", "lines.txt", ":path: /api\nx-a: 1\nx-a: 2\n")

# public_path: template lines, then the target (one line: seed 000's paths)
for name, data in [("health", "/api/health"), ("health-query", "/api/health?x=/../admin"),
                   ("dotdot", "/api/health/../flows"), ("double-slash", "//api/health"), ("escaped", "/api%2Fhealth"),
                   ("events", "/v1/events/out"), ("events-trailing", "/a/b/events/out/"), ("hooks", "/hooks/x"),
                   ("hooksx", "/hooksx"), ("templates", "/api/{id}/x\n/{prefix}/events/out\n/hooks/\n/api/7/x/y"),
                   ("templates-miss", "/a/{x}\n/a/b/c\n/a/bc/d"),
                   ("templates-exact", "=/api/events/out\n=/a/{x}/b\n/hooks\n/api/events/out/"),
                   ("templates-strict", "==/api/health\n==/x/\n/x/{any}\n==/{prefix}/events/out\n/api/health/"),
                   ("templates-strict-suffix", "==/{prefix}/events/out/\n==/\n/a/events/out/")]:
    write("public_path", name + ".txt", data)

# access_deny: a flags byte (bit 0 inside the range, bit 1 the identity, bits 2-3 which
# rules), the rule's template line, then the target (one line: under /internal)
def access(flags, target, template=None):
    return bytes([flags]) + ((template + "\n").encode() if template else b"") + target.encode("latin-1")

for i, target in enumerate(["/internal/metrics", "//internal/metrics", "/internal/./metrics", "/x/../internal/metrics",
                            "/%69nternal/metrics", "/internal%2fmetrics", "/internal;v=1/metrics", "/%2569nternal",
                            "/internal%5cmetrics", "/x/..;/internal", "/x/%c0%ae%c0%ae/internal", "/internal#/../x",
                            "/internal%00/../x", "http://h/x/../internal", "/internal/a//../../b", "/api/flows%20x"]):
    write("access_deny", f"spelling-{i:02}.bin", access(i % 16, target))
write("access_deny", "suffix.bin", access(0, "/a/x/..%2fevents/out", "/{prefix}/events/out"))
write("access_deny", "param.bin", access(8, "/api/%61/x;p/../y", "/api/{id}/x"))
write("access_deny", "exact.bin", access(12, "/api//events/out/", "=/api/events/out"))

# cache_control: header lines
for name, data in [("max-age", "cache-control: max-age=30"), ("s-maxage", "cache-control: private, s-maxage=5, max-age=30"),
                   ("no-store", "cache-control: no-store, max-age=60"), ("age", "cache-control: max-age=10\nage: 4"),
                   ("quoted", 'cache-control: max-age="20", no-transform'), ("bad", "cache-control: max-age=x\nage: -1"),
                   ("huge", "cache-control: max-age=99999999999999999999999")]:
    write("cache_control", name + ".txt", data)

# cache_slot: version, key, expires, stale limit, kind, ... (cache.rs Entry::encode)
def slot(kind_bytes, key=b"\x11" * 32, expires=NOW_S * 1000 + 5000, stale=2**64 - 1):
    return bytes([1]) + key + struct.pack(">QQ", expires, stale) + kind_bytes

def pairs(items):
    out = struct.pack(">H", len(items))
    for n, v in items:
        out += struct.pack(">H", len(n)) + n + struct.pack(">I", len(v)) + v
    return out

write("cache_slot", "allow.bin", slot(b"\x01" + pairs([(b"x-nebula-actor-id", b"alice")]) + pairs([(b"", b"s=1")])))
write("cache_slot", "deny.bin", slot(b"\x02" + struct.pack(">H", 401) + pairs([(b"www-authenticate", b"Bearer")])
                                     + struct.pack(">I", 2) + b"no"))
write("cache_slot", "truncated.bin", slot(b"\x01\x00\x05"))
write("cache_slot", "garbage.bin", b"\x02not a slot")

# jwt: tokens (valid ones are signed with the target's secret)
claims = {"iss": ISSUER, "sub": "alice", "scope": ["read", "write"], "org": {"team": "blue"}, "exp": NOW_S + 600,
          "iat": NOW_S, "nbf": NOW_S}
write("jwt", "valid.txt", hs256({"alg": "HS256", "typ": "JWT"}, claims))
write("jwt", "valid-newline-claim.txt", hs256({"alg": "HS256"}, dict(claims, sub="a\r\nx-injected: 1")))
write("jwt", "expired.txt", hs256({"alg": "HS256"}, dict(claims, exp=NOW_S - 3600)))
write("jwt", "other-issuer.txt", hs256({"alg": "HS256"}, dict(claims, iss="https://other.example")))
write("jwt", "wrong-key.txt", hs256({"alg": "HS256"}, claims, secret=b"x" * 40))
write("jwt", "alg-none.txt", b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims).encode()) + ".")
write("jwt", "not-jwt.txt", "opaque-api-key")

# jwks
g = {"kty": "EC", "crv": "P-256", "kid": "es", "use": "sig",
     "x": b64(bytes.fromhex("6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296")),
     "y": b64(bytes.fromhex("4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"))}
ed = {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
n = int.from_bytes(hashlib.sha512(b"n").digest() * 4, "big") | 1 | (1 << 2047)
rsa = {"kty": "RSA", "kid": "rs", "alg": "RS256", "n": b64(n.to_bytes(256, "big")), "e": "AQAB"}
write("jwks", "ec-ed.json", json.dumps({"keys": [g, ed]}))
write("jwks", "rsa.json", json.dumps({"keys": [rsa]}))
write("jwks", "private.json", json.dumps({"keys": [dict(g, d="AAAA"), {"kty": "oct", "k": "c2VjcmV0"}]}))
write("jwks", "mixed.json", json.dumps({"keys": [dict(g, use="enc"), dict(rsa, alg="XX1"), {"kty": "EC"}, ed]}))
write("jwks", "not-jwks.json", '{"keys": {}}')

# forward_auth: flags byte (bit 0: trust_forward_header), then header lines
req = ":method: GET\n:path: /api/flows?x=1\n:authority: prefect.example\n:scheme: https\nauthorization: Bearer t\n"
spoof = "x-nebula-actor-id: evil\nx-forwarded-for: 6.6.6.6\nx-forwarded-host: evil.example\nx-real-ip: 6.6.6.6\n"
write("forward_auth", "plain.txt", "\x00" + req)
write("forward_auth", "spoofed.txt", "\x00" + req + spoof)
write("forward_auth", "trusted.txt", "\x01" + req + spoof + "x-forwarded-port: 8443\n")
write("forward_auth", "public.txt", "\x00:method: GET\n:path: /api/health\n" + spoof)
write("forward_auth", "no-path.txt", "\x00authorization: Bearer t\n")
write("forward_auth", "underscores.txt", "\x00" + req + "x_nebula_actor_id: evil\nx-nebula_actor_permissions: admin\n"
      "x_nebula_ratelimit_config: none\nx_nebula_actor_idx: kept\nx_forwarded_host: evil.example\n")

# authz_rules: an Istio rule's JSON on the first line, then header lines (`@peer:` the TCP peer)
def rule_input(rule, headers):
    return json.dumps(rule, separators=(",", ":")) + "\n" + "".join(f"{n}: {v}\n" for n, v in headers)

get = [(":method", "GET"), (":path", "/api/flows"), (":authority", "prefect.example:8080"), ("@peer", "10.0.0.7")]
for name, rule, extra in [
    ("paths", {"to": [{"operation": {"paths": ["/api/*"], "notPaths": ["/api/health"]}}]}, []),
    ("hosts", {"to": [{"operation": {"hosts": ["Prefect.example*"], "methods": ["GET", "P*"]}}]}, []),
    ("ipblocks-xff", {"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}, [("x-forwarded-for", "192.0.2.1")]),
    ("notipblocks-xff", {"from": [{"source": {"notIpBlocks": ["10.0.0.7"]}}]}, [("x-forwarded-for", "10.0.0.9, 192.0.2.1")]),
    ("header-repeated", {"when": [{"key": "request.headers[x-tenant]", "values": ["gold"], "notValues": ["gold-trial"]}]},
     [("x-tenant", "free"), ("x-tenant", "gold")]),
    ("header-not-repeated", {"when": [{"key": "request.headers[x-tenant]", "notValues": ["gold*"]}]},
     [("x-tenant", "free"), ("x-tenant", "gold")]),
    ("source-ip", {"to": [{"operation": {"paths": ["*/flows"]}}], "when": [{"key": "source.ip", "values": ["10.0.0.0/24"]}]},
     [("x-forwarded-for", "not an address")]),
    ("empty", {}, []),
]:
    write("authz_rules", name + ".txt", rule_input(rule, get + extra))
