#!/usr/bin/env python3
"""Run the nebula-authz demo: Envoy with the filter in front of envoy/demo/demo.py.

Default (what `make run` runs): Envoy on 127.0.0.1:10000 (admin :9901), prints three
curl commands with what they should show, and stays up until Ctrl-C.

--check: the same stack on free ports; sends those three requests, asserts the
results, then runs every console block of README.md and docs/ marked
`<!-- checked: demo -->` (scripts/check_docs.py finds them) with the real curl and
compares its output with the block (`...` stands for any text). Prints `N passed, M
failed` and exits non-zero on any failure. Part of `make test`. --save-stats FILE also
writes the Envoy's /stats/prometheus at the end (scripts/check_observability.py reads it).

The demo services always take free ports: only Envoy's are meant to be reached.
"""
import argparse
import ctypes
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "envoy" / "demo" / "demo.py"
RENDER = ROOT / "scripts" / "render_envoy.py"
STARTUP_TIMEOUT = 60  # seconds; V8 compiles the module at startup, slow on a busy CI box


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def echoed(body):
    """The upstream's echo of the request it received."""
    try:
        return json.loads(body)
    except ValueError:
        raise CheckFailed(f"upstream did not answer with its JSON echo: {body[:200]!r}")


def check_allow(status, headers, body):
    expect(status == 200, f"status {status}, want 200")
    got = echoed(body)["headers"]
    for name, value in [("x-nebula-actor-id", "demo-user"),
                        ("x-nebula-actor-permissions", "read,write"),
                        ("x-nebula-ratelimit-config", '{"limit":100}'),
                        ("x-nebula-log-limit-config", '{"limit":10}')]:
        expect(got.get(name) == value, f"upstream saw {name}={got.get(name)!r}, want {value!r}")


def check_deny(status, headers, body):
    expect(status == 401, f"status {status}, want 401")
    auth = headers.get("www-authenticate")
    expect(auth == 'Bearer realm="prefect"', f"www-authenticate={auth!r}")
    expect(b"not authenticated" in body, f"body {body[:200]!r} is not the auth service's")


def check_public(status, headers, body):
    expect(status == 200, f"status {status}, want 200")
    got = echoed(body)["headers"]
    expect("x-nebula-actor-id" not in got,
           f"spoofed x-nebula-actor-id reached the upstream: {got.get('x-nebula-actor-id')!r}")


# The three requests the demo shows and --check asserts: (name, path, headers, what to
# expect, check).
CHECKS = [
    ("allow: a valid token reaches the upstream with the actor injected",
     "/api/flows", {"Authorization": "Bearer demo-token"},
     'HTTP 200; the echoed headers include "x-nebula-actor-id": "demo-user"', check_allow),
    ("deny: no token gets the auth service's 401",
     "/api/flows", {},
     'HTTP 401, www-authenticate: Bearer realm="prefect", {"detail":"not authenticated"}',
     check_deny),
    ("public: /api/health skips the callout and drops a spoofed identity",
     "/api/health", {"x-nebula-actor-id": "evil"},
     "HTTP 200; no x-nebula-actor-id in the echoed headers", check_public),
]


def die_with_parent():
    # Children must not outlive this script even if it is killed hard (a CI timeout).
    # Linux-only (PR_SET_PDEATHSIG); elsewhere the finally-block cleanup has to do.
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (AttributeError, OSError):
        pass


def tail(path, lines=30):
    """The end of a log, without Envoy's startup inventory (`[info][main]` lines)."""
    try:
        text = Path(path).read_text(errors="replace").splitlines(True)
    except OSError:
        return ""
    return "".join([line for line in text if "][info][main]" not in line][-lines:])


def fail(message, *logs):
    print(f"error: {message}", file=sys.stderr)
    for log in logs:
        if tail(log):
            print(f"--- end of {log}:\n{tail(log)}---", file=sys.stderr)
    sys.exit(1)


def start_demo(children, stderr):
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), "--bind", "127.0.0.1", "--auth-port", "0",
         "--upstream-port", "0"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=die_with_parent)
    children.append(proc)
    ports = {}
    # demo.py prints `<role> listening on HOST:PORT` once per service, then only logs
    # to stderr, so its stdout pipe never needs draining after this.
    while len(ports) < 2:
        line = proc.stdout.readline()
        match = re.fullmatch(r"(\w+) listening on [^:]+:(\d+)\n", line)
        if not match:
            fail(f"demo.py did not start (said {line!r})")
        ports[match[1]] = int(match[2])
    return ports


def render_config(path, args, ports):
    cmd = [sys.executable, str(RENDER), "--wasm", str(args.wasm),
           "--listen-port", str(args.listen_port), "--admin-port", str(args.admin_port),
           "--auth", f"127.0.0.1:{ports['auth']}",
           "--upstream", f"127.0.0.1:{ports['upstream']}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"render_envoy.py failed (its venv needs pyyaml: `make envoy`):\n{result.stderr}")
    path.write_text(result.stdout)


def start_envoy(children, args, config, workdir, log):
    admin_path = workdir / "admin-address"
    admin_path.unlink(missing_ok=True)
    with open(log, "w") as out:
        # --use-dynamic-base-id: several Envoys (tests, a second demo) can run at once.
        proc = subprocess.Popen(
            [str(args.envoy), "-c", str(config), "--use-dynamic-base-id",
             "--admin-address-path", str(admin_path)],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    children.append(proc)

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"envoy exited with status {proc.returncode} during startup", log)
        admin = admin_path.read_text().strip() if admin_path.exists() else ""
        if admin:
            try:
                with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as resp:
                    if resp.read().strip() == b"LIVE":
                        return admin, listener_port(admin)
            except OSError:  # refused, or 503 while still initializing
                pass
        time.sleep(0.1)
    fail(f"envoy was not ready after {STARTUP_TIMEOUT}s", log)


def listener_port(admin):
    """The port the ingress listener really bound (it may have been asked for port 0)."""
    with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=5) as resp:
        statuses = json.load(resp)["listener_statuses"]
    return statuses[0]["local_address"]["socket_address"]["port_value"]


def request(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def expected_output(lines):
    """A documented output as a regex: a line `...` is any lines, `...` in a line any text."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    parts = []
    for line in lines:
        if line.strip() == "...":
            parts.append(r"(?:.*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.rstrip().split("...")) + r"[ \t]*\n")
    return re.compile("".join(parts))


def run_documented(command, port, admin):
    """Runs one `$ ...` line of a checked block (curl | grep only) against this stack."""
    # The documented ports are make run's; this stack has free ones. Map them both ways.
    command = command.replace("localhost:10000", f"localhost:{port}").replace("localhost:9901", admin)
    stages = [[]]
    for token in shlex.split(command, comments=True):
        if token == "|":
            stages.append([])
        else:
            stages[-1].append(token)
    data = b""
    for argv in stages:
        expect(argv and argv[0] in ("curl", "grep"), f"only curl | grep can run here: {command!r}")
        if shutil.which(argv[0]) is None:
            raise CheckFailed(f"{argv[0]} is not installed (apt-get install {argv[0]})")
        run = subprocess.run(argv, input=data, capture_output=True, timeout=20)
        expect(run.returncode == 0, f"{argv[0]} exited {run.returncode}: {run.stderr.decode(errors='replace')}")
        data = run.stdout
    return data.decode(errors="replace").replace("\r\n", "\n").replace(f"localhost:{port}", "localhost:10000")


def run_doc_blocks(port, admin):
    """The console blocks of README.md and docs/ marked `checked: demo`, as curl runs them."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from check_docs import demo_blocks
    results = []
    for where, commands in demo_blocks():
        for command, lines in commands:
            name = f"{where}: $ {command.split('  #')[0].strip()}"
            try:
                got = run_documented(command, port, admin)
                if not got.endswith("\n"):
                    got += "\n"
                if not expected_output(lines).fullmatch(got):
                    raise CheckFailed("output differs from the documented one; got:\n" + got)
            except (CheckFailed, OSError, subprocess.TimeoutExpired) as err:
                results.append((name, err))
            else:
                results.append((name, None))
    return results


def run_checks(port, admin):
    results = []
    for name, path, headers, _, check in CHECKS:
        try:
            check(*request(port, path, headers))
        except (CheckFailed, OSError, http.client.HTTPException) as err:
            results.append((name, err))
        else:
            results.append((name, None))
    results += run_doc_blocks(port, admin)
    for name, err in results:
        print(f"FAIL {name}: {err}" if err else f"ok   {name}")
    failed = sum(1 for _, err in results if err)
    print(f"{len(results) - failed} passed, {failed} failed")
    return failed == 0


def save_stats(admin, path):
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=10) as resp:
        Path(path).write_bytes(resp.read())


def show_usage(port, admin, log):
    print(f"\nEnvoy with nebula-authz listens on http://127.0.0.1:{port} "
          f"(admin http://{admin}, log {log}). Try:\n")
    for _, path, headers, what, _ in CHECKS:
        flags = "".join(f" -H '{k}: {v}'" for k, v in headers.items())
        print(f"  curl -i{flags} http://127.0.0.1:{port}{path}\n    # {what}\n")
    print("Ctrl-C stops Envoy and the demo services.", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="run the three requests on free ports and exit")
    p.add_argument("--envoy", type=Path,
                   default=os.environ.get("ENVOY_BIN", ROOT / ".venv" / "bin" / "envoy"),
                   help="Envoy binary (default: $ENVOY_BIN or .venv/bin/envoy)")
    p.add_argument("--wasm", type=Path,
                   default=os.environ.get(
                       "NEBULA_WASM",
                       ROOT / "target" / "wasm32-wasip1" / "release" / "nebula_authz.wasm"),
                   help="filter module (default: $NEBULA_WASM or the release build)")
    p.add_argument("--save-stats", type=Path, help="with --check: write /stats/prometheus here at the end")
    p.add_argument("--listen-port", type=int, help="default 10000; 0 with --check")
    p.add_argument("--admin-port", type=int, help="default 9901; 0 with --check")
    args = p.parse_args()
    if args.listen_port is None:
        args.listen_port = 0 if args.check else 10000
    if args.admin_port is None:
        args.admin_port = 0 if args.check else 9901
    return args


def main():
    args = parse_args()
    # Never skip: a demo check that silently did nothing would hide a broken build.
    if not (args.envoy.is_file() and os.access(args.envoy, os.X_OK)):
        fail(f"no Envoy binary at {args.envoy}: run `make envoy` (or set ENVOY_BIN)")
    if not args.wasm.is_file():
        fail(f"no filter module at {args.wasm}: run `make build` (or set NEBULA_WASM)")

    # Ctrl-C and SIGTERM (make, CI) unwind through the cleanup below. Set SIGINT
    # explicitly: a shell starts background jobs with it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    if args.check:
        workdir = Path(tempfile.mkdtemp(prefix="nebula-demo-"))
    else:
        workdir = ROOT / ".run"
        workdir.mkdir(exist_ok=True)
    children = []
    ok = False
    try:
        # --check keeps the request logs out of its report; `make run` shows them live.
        demo_log = open(workdir / "demo.log", "w") if args.check else None
        ports = start_demo(children, demo_log)
        config = workdir / "envoy.json"
        render_config(config, args, ports)
        envoy_log = workdir / "envoy.log"
        admin, port = start_envoy(children, args, config, workdir, envoy_log)
        if args.check:
            ok = run_checks(port, admin)
            if args.save_stats:
                save_stats(admin, args.save_stats)
            if not ok:
                fail("demo check failed", workdir / "demo.log", envoy_log)
        else:
            show_usage(port, admin, envoy_log)
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            fail("a demo process exited on its own", envoy_log)
    except KeyboardInterrupt:
        if args.check:
            fail("interrupted")
        print()
    finally:
        for child in reversed(children):
            child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if args.check and ok:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
