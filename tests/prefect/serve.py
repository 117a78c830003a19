#!/usr/bin/env python3
"""The real Prefect server (SQLite, UI off) on an ephemeral loopback port, recording what
reaches it.

Runs Prefect's own app factory (`prefect.server.api.server:create_app`, what `prefect
server start` runs) under uvicorn, wrapped in one outer ASGI layer that appends a JSON
line per HTTP request / WebSocket to --record: method, raw path, header names (values
only for the identity headers, never for credentials) and, for a WebSocket, what the
client's first message said about its in-band token. The tests read that file to see
what Prefect received through Envoy.

Settings come from the environment (PREFECT_HOME, database URL, ...), set by conftest.py.
Prints `prefect listening on 127.0.0.1:PORT` once the socket is bound.
"""
import argparse
import json
import socket
import sys
import threading

import uvicorn

IDENTITY = ("x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config",
            "x-nebula-log-limit-config")


class Recorder:
    """ASGI middleware: one record per connection scope, written when it is seen."""

    def __init__(self, app, path, key):
        self.app = app
        self.file = open(path, "a", buffering=1)
        self.key = key
        self.lock = threading.Lock()

    def write(self, record):
        with self.lock:
            self.file.write(json.dumps(record) + "\n")

    def describe(self, scope):
        headers = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name in IDENTITY:
                headers.setdefault(name, []).append(value)
            elif name == "authorization":
                headers.setdefault(name, []).append(self.classify(value.split(" ", 1)[-1]))
            else:
                headers.setdefault(name, []).append(None)
        return {
            "type": scope["type"],
            "method": scope.get("method", "GET"),
            "path": scope.get("raw_path", b"").decode("latin-1") or scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
        }

    def classify(self, token):
        """What a credential was, without its value: the test key, null, or something else."""
        if token is None:
            return "null"
        return "key" if token == self.key else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.write(self.describe(scope))
        elif scope["type"] == "websocket":
            record = self.describe(scope)
            first = {"done": False}

            async def recording_receive():
                message = await receive()
                if message["type"] == "websocket.receive" and not first["done"]:
                    first["done"] = True
                    text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
                    try:
                        body = json.loads(text)
                    except ValueError:
                        body = None
                    if isinstance(body, dict) and body.get("type") == "auth":
                        record["in_band_token"] = self.classify(body.get("token"))
                    else:
                        record["first_message_type"] = body.get("type") if isinstance(body, dict) else None
                    self.write(dict(record, event="first_message"))
                return message

            self.write(dict(record, event="upgrade"))
            return await self.app(scope, recording_receive, send)
        return await self.app(scope, receive, send)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--record", required=True, help="JSON-lines file of what reached Prefect")
    p.add_argument("--key", required=True, help="the test API key (recorded as 'key', never by value)")
    args = p.parse_args()

    from prefect.server.api.server import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = Recorder(create_app(final=True), args.record, args.key)
    config = uvicorn.Config(app, log_level="warning", ws_ping_interval=20, ws_ping_timeout=20)
    server = uvicorn.Server(config)
    print(f"prefect listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
