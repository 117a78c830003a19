#!/usr/bin/env python3
"""Demo services for nebula-authz: a stand-in auth service and an echo upstream.

auth      GET anything. `Authorization: Bearer demo-token` -> 200 with the identity headers
          the filter injects upstream; anything else -> 401 the filter passes back as is.
upstream  Any method and path -> 200 JSON {"method", "path", "headers"}: shows what
          reached the application (injected identity in, spoofed identity stripped).

Standard library only, so the same file runs on the host (`make run`) and in a stock
python image (envoy/docker-compose.yml). On start it prints one line per service,
`<role> listening on HOST:PORT`; scripts/run_demo.py reads them to learn ports picked
with --*-port 0. Request logs go to stderr.
"""
import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEMO_TOKEN = "demo-token"
ALLOW_HEADERS = {
    "x-nebula-actor-id": "demo-user",
    "x-nebula-actor-permissions": "read,write",
    "x-nebula-ratelimit-config": '{"limit":100}',
    "x-nebula-log-limit-config": '{"limit":10}',
}
DENY_BODY = b'{"detail":"not authenticated"}'
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive: Envoy pools connections to both clusters.
    protocol_version = "HTTP/1.1"
    server_version = "nebula-demo"
    sys_version = ""
    role = ""

    def log_message(self, fmt, *args):
        sys.stderr.write(f"[{self.role}] {fmt % args}\n")

    def log_request(self, code="-", size="-"):
        # One short line per request; the default adds client address and timestamp.
        self.log_message("%s %s -> %s", self.command, self.path, code)

    def drain_body(self):
        """Read and discard the request body so the connection can be reused."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Skip trailers up to the empty line that ends the message.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                self.rfile.read(size + 2)  # chunk data and its CRLF
        length = int(self.headers.get("content-length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                return
            length -= len(chunk)

    def reply(self, status, headers, body=b""):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        self.drain_body()
        if self.role == "auth":
            self.auth()
        else:
            self.echo()

    def auth(self):
        # The scheme is case-insensitive (RFC 9110 11.1): Prefect's Cloud events client
        # sends `bearer <key>`.
        scheme, _, token = (self.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token == DEMO_TOKEN:
            self.reply(200, ALLOW_HEADERS)
        else:
            self.reply(401, {
                "www-authenticate": 'Bearer realm="prefect"',
                "content-type": "application/json",
            }, DENY_BODY)

    def echo(self):
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers},
                          indent=2, sort_keys=True).encode() + b"\n"
        self.reply(200, {"content-type": "application/json"}, body)


for _method in METHODS:
    setattr(Handler, f"do_{_method}", Handler.handle_any)


def serve(role, bind, port):
    handler = type(f"{role.title()}Handler", (Handler,), {"role": role})
    server = ThreadingHTTPServer((bind, port), handler)
    host, port = server.server_address[:2]
    print(f"{role} listening on {host}:{port}", flush=True)
    threading.Thread(target=server.serve_forever, name=role, daemon=True).start()
    return server


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("auth", "upstream", "both"), default="both")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--auth-port", type=int, default=4300, help="0 picks a free port")
    p.add_argument("--upstream-port", type=int, default=8080, help="0 picks a free port")
    args = p.parse_args()

    stop = threading.Event()
    # SIGTERM from `docker stop` or run_demo.py, SIGINT from Ctrl-C: shut down cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    servers = []
    if args.role in ("auth", "both"):
        servers.append(serve("auth", args.bind, args.auth_port))
    if args.role in ("upstream", "both"):
        servers.append(serve("upstream", args.bind, args.upstream_port))

    while not stop.wait(0.2):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
