"""End-to-end fixture: the real Prefect server behind Envoy + nebula-authz.

    Prefect client/CLI ──► Envoy (envoy/envoy.yaml, rendered by scripts/render_envoy.py)
                              │  nebula-authz ──callout──► auth (envoy/demo/demo.py's auth)
                              ▼
                           Prefect server (serve.py: create_app + a recording ASGI layer)

Everything listens on 127.0.0.1 with ephemeral ports; the server and each client get their
own PREFECT_HOME in a temporary directory. Anything missing (Envoy, the wasm, the Prefect
venv) fails the run with how to get it: `make prefect-e2e` installs all of it.
"""
import http.client
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The API key the auth service allows (Prefect's API key: `Authorization: Bearer <key>`).
KEY = "nebula-e2e-key-7f3a"
WRONG_KEY = "nebula-e2e-wrong-key"
START_TIMEOUT = 240  # seconds: migrations on a loaded 2-core box take a while
IDENTITY = ("x-nebula-actor-id", "x-nebula-actor-permissions", "x-nebula-ratelimit-config",
            "x-nebula-log-limit-config")


def need(path, what):
    if not Path(path).exists():
        pytest.fail(f"{what} not found at {path}: run `make prefect-e2e` (or `make test`)", pytrace=False)
    return str(path)


def envoy_bin():
    return need(os.environ.get("ENVOY_BIN") or ROOT / ".venv/bin/envoy", "Envoy")


def render_python():
    return need(os.environ.get("NEBULA_PYTHON") or ROOT / ".venv/bin/python", "the venv python (PyYAML)")


def wasm_path():
    return need(os.environ.get("NEBULA_WASM") or ROOT / "target/wasm32-wasip1/release/nebula_authz.wasm",
                "the filter (make build)")


def pytest_sessionfinish(session, exitstatus):
    """A skipped test is a failed test here: nothing in this suite is optional."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = 1


def wait_until(what, cond, timeout=60, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the auth service -----------------------------------------------------------------

def load_demo():
    spec = importlib.util.spec_from_file_location("nebula_demo", ROOT / "envoy/demo/demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AuthService:
    """envoy/demo/demo.py's seed-000 auth service, allowing `Bearer KEY`, recording each
    callout (the forwarded method and URI, and what the Authorization header was)."""

    def __init__(self):
        demo = load_demo()
        demo.DEMO_TOKEN = KEY
        self.calls = []
        self.lock = threading.Lock()
        outer = self

        class Recording(demo.Handler):
            role = "auth"

            def log_message(self, fmt, *args):
                pass

            def auth(self):
                value = self.headers.get("authorization")
                with outer.lock:
                    outer.calls.append({
                        "method": self.headers.get("x-forwarded-method"),
                        "uri": self.headers.get("x-forwarded-uri"),
                        "path": self.path,
                        "authorization": classify_header(value),
                    })
                super().auth()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.calls)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def classify_header(value):
    """An Authorization value as `none`, `bearer key`, `bearer other`, `basic`...: never the secret."""
    if value is None:
        return "none"
    scheme, _, token = value.partition(" ")
    return f"{scheme.lower()} {'key' if token == KEY else 'other'}"


# --- the Prefect server ---------------------------------------------------------------

class PrefectServer:
    def __init__(self, home):
        self.home = Path(home)
        self.record = self.home / "reached-prefect.jsonl"
        self.log = open(self.home / "server.log", "w")
        env = server_env(self.home)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve.py"), "--record", str(self.record), "--key", KEY],
            env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("prefect listening on "):
            self.stop()
            raise AssertionError(f"serve.py did not start: {line!r}\n{self.log_text()}")
        self.port = int(line.rsplit(":", 1)[1])
        wait_until("Prefect's /api/health", lambda: self.alive() and http_status(self.port, "/api/health") == 200,
                   timeout=START_TIMEOUT, interval=0.25)
        self.start_seconds = time.monotonic() - started
        print(f"\nPrefect server up on :{self.port} after {self.start_seconds:.1f} s")

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the Prefect server exited ({self.proc.returncode}):\n{self.log_text()}")
        return True

    def log_text(self):
        try:
            return (self.home / "server.log").read_text()[-4000:]
        except OSError:
            return ""

    def reached(self):
        """Every record of what reached Prefect so far."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def api(self, method, path, body=None):
        """A call straight to Prefect (not through Envoy): what the server recorded."""
        return request(self.port, method, "/api" + path, body=body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def server_env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
        PREFECT_SERVER_SERVICES_FOREMAN_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        # Off by default in Prefect: /api/logs/out (what `flow-run watch` shows) streams
        # nothing without them.
        PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED="true",
        PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED="true",
    )
    return env


def request(port, method, path, body=None, headers=None, timeout=30):
    """(status, parsed JSON or text) of one HTTP/1.1 request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs.setdefault("content-type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return resp.status, parsed
    finally:
        conn.close()


def http_status(port, path):
    try:
        return request(port, "GET", path, timeout=5)[0]
    except OSError:
        return None


# --- Envoy ----------------------------------------------------------------------------

class Envoy:
    """envoy/envoy.yaml with the filter, its auth cluster on the auth service and its
    upstream on Prefect; an access log of every request (path, upgrade, status, flags)."""

    def __init__(self, home, auth_port, upstream_port, plugin_config=None, log_level="info",
                 extra_args=()):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [render_python(), str(ROOT / "scripts/render_envoy.py"), "--wasm", wasm_path(),
               "--listen-port", "0", "--admin-port", "0",
               "--auth", f"127.0.0.1:{auth_port}", "--upstream", f"127.0.0.1:{upstream_port}"]
        if plugin_config is not None:
            (self.home / "plugin.json").write_text(plugin_config)
            cmd += ["--plugin-config", str(self.home / "plugin.json")]
        rendered = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        config = json.loads(rendered)
        self.access_log = self.home / "access.jsonl"
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(self.access_log),
                "log_format": {"json_format": {
                    "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%", "upgrade": "%REQ(UPGRADE)%",
                    # The scheme only ("Bearer", "Basic "): never the credential.
                    "authorization": "%REQ(AUTHORIZATION):6%",
                    "status": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
                    "user_agent": "%REQ(USER-AGENT):24%",
                }},
            },
        }]
        (self.home / "envoy.json").write_text(json.dumps(config, indent=2))
        admin_path = self.home / "admin-address"
        admin_path.unlink(missing_ok=True)
        self.log_path = self.home / "envoy.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [envoy_bin(), "-c", str(self.home / "envoy.json"), "--use-dynamic-base-id",
             "--admin-address-path", str(admin_path), "--concurrency", "1", "-l", log_level, *extra_args],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

        def admin_port():
            self.check_alive()
            text = admin_path.read_text().strip() if admin_path.exists() else ""
            return int(text.rsplit(":", 1)[1]) if ":" in text else None

        self.admin_port = wait_until("Envoy's admin address", admin_port, timeout=60)

        def listener_port():
            self.check_alive()
            try:
                status, listeners = request(self.admin_port, "GET", "/listeners?format=json", timeout=5)
                ready_status, ready = request(self.admin_port, "GET", "/ready", timeout=5)
            except OSError:
                return None
            if status != 200 or ready_status != 200 or str(ready).strip() != "LIVE":
                return None
            port = listeners["listener_statuses"][0]["local_address"]["socket_address"].get("port_value")
            return port or None

        self.port = wait_until("Envoy's listener", listener_port, timeout=60)
        self.url = f"http://127.0.0.1:{self.port}"

    def check_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"Envoy exited ({self.proc.returncode}):\n{self.log_text()[-4000:]}")

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def accesses(self):
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --- the client side ------------------------------------------------------------------

class Client:
    """Runs the Prefect client and CLI as users do, in subprocesses with their own
    PREFECT_HOME, pointed at Envoy."""

    def __init__(self, home, api_url, key=KEY, custom_headers=True):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=api_url,
            PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false",
            PREFECT_CLIENT_MAX_RETRIES="1",
            PREFECT_CLIENT_RETRY_JITTER_FACTOR="0",
            PREFECT_LOGGING_LEVEL="INFO",
            # Flow logs reach the server (and `flow-run watch`) within a fraction of a second.
            PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.3",
            # Wide enough that the CLI's tables do not truncate names.
            COLUMNS="300",
            PYTHONUNBUFFERED="1",
        )
        if key is not None:
            self.env["PREFECT_API_KEY"] = key
        if custom_headers and key is not None:
            # The documented client setting (docs/prefect-clients.md).
            self.env["PREFECT_CLIENT_CUSTOM_HEADERS"] = json.dumps({"Authorization": f"Bearer {key}"})

    def python(self, *args, timeout=120, check=True):
        return self.run([sys.executable, str(HERE / "client_ops.py"), *args], timeout=timeout, check=check)

    def cli(self, *args, timeout=120, check=True):
        return self.run([str(Path(sys.executable).parent / "prefect"), *args], timeout=timeout, check=check)

    def run(self, cmd, timeout, check):
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.home)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[-3:])} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}"
                                 f"\nstderr:\n{proc.stderr[-3000:]}")
        return proc

    def popen(self, cmd, **kwargs):
        return subprocess.Popen(cmd, env=self.env, cwd=self.home, text=True, **kwargs)

    def prefect(self):
        return str(Path(sys.executable).parent / "prefect")

    def script(self):
        return [sys.executable, str(HERE / "client_ops.py")]


# --- session fixtures -----------------------------------------------------------------

@pytest.fixture(scope="session")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="nebula-prefect-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def auth():
    service = AuthService()
    yield service
    service.close()


@pytest.fixture(scope="session")
def prefect_server(workdir):
    home = workdir / "server"
    home.mkdir()
    server = PrefectServer(home)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def envoy(workdir, auth, prefect_server):
    proxy = Envoy(workdir / "envoy", auth.port, prefect_server.port)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def envoy_preset(workdir, auth, prefect_server):
    """The same Envoy with envoy/presets/prefect.json (tight public templates)."""
    proxy = Envoy(workdir / "envoy-preset", auth.port, prefect_server.port,
                  plugin_config=(ROOT / "envoy/presets/prefect.json").read_text())
    yield proxy
    proxy.stop()


@pytest.fixture
def client(workdir, envoy, request):
    return Client(workdir / f"client-{request.node.name}", envoy.url + "/api")


@pytest.fixture(scope="session")
def wire():
    """What each operation put on the wire, collected across tests and written at the end
    (tests/prefect/wire.md is the committed copy)."""
    notes = {}
    yield notes
    out = os.environ.get("NEBULA_PREFECT_WIRE")
    if out and notes:
        Path(out).write_text(json.dumps(notes, indent=2, sort_keys=True) + "\n")
