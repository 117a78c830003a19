"""The real Prefect client and server through Envoy + nebula-authz.

Each test does what a user does through Envoy and then checks what the *server*
recorded by asking it directly (not through Envoy), plus what reached it (serve.py's
record) and what the auth service was asked.
"""
import json
import re
import subprocess
import uuid

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import IDENTITY, KEY, WRONG_KEY, Client, request, wait_until

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
WEBSOCKETS = ("/api/events/in", "/api/events/out", "/api/logs/out", "/api/task_runs/subscriptions/scheduled")
# The websockets the filter lets through without a callout (the default public list).
PUBLIC_WEBSOCKETS = ("/api/events/out", "/api/task_runs/subscriptions/scheduled")


def marks(server, envoy, auth):
    """Positions in the three records, to look at what one operation added."""
    return len(server.reached()), len(envoy.accesses()), len(auth.snapshot())


def since(server, envoy, auth, mark):
    return server.reached()[mark[0]:], envoy.accesses()[mark[1]:], auth.snapshot()[mark[2]:]


def via_envoy(reached):
    """The records of requests that came through Envoy (the tests also ask Prefect directly)."""
    return [r for r in reached if "x-request-id" in r["headers"]]


def upgrades(reached):
    """{path: record} of the WebSockets that reached Prefect, with the in-band auth message."""
    return {r["path"]: r for r in reached if r["type"] == "websocket" and r.get("event") == "first_message"}


def wait_accesses(envoy, mark, predicate, what, count=1):
    """Envoy flushes its access log about once a second: wait until `count` lines match
    (two requests' lines may land in different flushes)."""
    def found():
        lines = [a for a in envoy.accesses()[mark[1]:] if predicate(a)]
        return lines if len(lines) >= count else None
    return wait_until(what, found, timeout=15)


def task_runs_of(server, flow_run_id):
    status, runs = server.api("POST", "/task_runs/filter",
                              {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert status == 200, runs
    return runs


def note_wire(wire, operation, reached, accesses, calls):
    wire[operation] = {
        "websockets": {
            path: {
                "authorization_on_upgrade": (rec["headers"].get("authorization") or ["none"])[0],
                "in_band_token": rec.get("in_band_token"),
            } for path, rec in upgrades(reached).items()
        },
        "http": sorted({f"{r['method']} {UUID.sub('{id}', r['path'])}" for r in via_envoy(reached)
                        if r["type"] == "http"}),
        "callouts": sorted({f"{c['method']} {c['uri'].split('?')[0]} ({c['authorization']})" for c in calls if c['uri']}),
    }


# --- what users do, with the documented client setting ---------------------------------

def test_flow_with_two_tasks_is_recorded_with_its_task_runs(client, prefect_server, envoy, auth, wire):
    mark = marks(prefect_server, envoy, auth)
    out = json.loads(client.python("flow").stdout.splitlines()[-1])
    assert out["state"] == "COMPLETED" and out["result"] == 7, out

    status, run = prefect_server.api("GET", f"/flow_runs/{out['flow_run_id']}")
    assert status == 200 and run["state_type"] == "COMPLETED", run
    # Task-run states travel as events over /api/events/in; the server's task-run
    # recorder turns them into rows. A lost websocket shows up here as 0 task runs.
    def completed_task_runs():
        runs = task_runs_of(prefect_server, out["flow_run_id"])
        return runs if len(runs) >= 2 and all(r["state_type"] == "COMPLETED" for r in runs) else None

    runs = wait_until("2 completed task runs on the server", completed_task_runs, timeout=60)
    assert sorted(r["task_key"].split("-")[0] for r in runs) == ["add", "double"], runs
    status, logs = prefect_server.api("POST", "/logs/filter",
                                      {"logs": {"flow_run_id": {"any_": [out["flow_run_id"]]}}})
    assert status == 200 and any("e2e log line from the flow" in log["message"] for log in logs), logs

    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    assert "/api/events/in" in upgrades(reached), "the flow's events websocket never reached Prefect"
    note_wire(wire, "flow with two tasks", reached, accesses, calls)


def test_client_api_calls(client, prefect_server, envoy, auth, wire):
    mark = marks(prefect_server, envoy, auth)
    out = json.loads(client.python("api").stdout.splitlines()[-1])
    assert out["state"] == "COMPLETED" and "e2e-api-flow" in out["flow_names"], out
    status, run = prefect_server.api("GET", f"/flow_runs/{out['flow_run_id']}")
    assert status == 200 and run["state_type"] == "COMPLETED" and run["name"] == "e2e-api-run", run
    status, flow = prefect_server.api("GET", f"/flows/{out['flow_id']}")
    assert status == 200 and flow["name"] == "e2e-api-flow", flow
    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    # Every call went through the callout with the key and reached Prefect with the identity.
    assert calls and all(c["authorization"] == "bearer key" for c in calls), calls
    api_calls = [r for r in via_envoy(reached) if r["type"] == "http" and r["path"].startswith("/api/flow")]
    assert api_calls and all(r["headers"].get("x-nebula-actor-id") == ["demo-user"] for r in api_calls), api_calls
    note_wire(wire, "get_client() API calls", reached, accesses, calls)


def test_cli_flow_ls_and_flow_run_ls(client, prefect_server):
    name = f"e2e-cli-{uuid.uuid4().hex[:8]}"
    status, flow = prefect_server.api("POST", "/flows/", {"name": name})
    assert status in (200, 201), flow
    status, run = prefect_server.api("POST", "/flow_runs/", {"flow_id": flow["id"], "name": f"{name}-run"})
    assert status in (200, 201), run
    flows = client.cli("flow", "ls").stdout
    assert name in flows, flows
    runs = client.cli("flow-run", "ls", "--limit", "50").stdout
    assert f"{name}-run" in runs, runs


def test_event_emit_and_stream(client, prefect_server, envoy, auth, wire, tmp_path):
    name = f"e2e.cli.emitted.{uuid.uuid4().hex[:8]}"
    out_file = tmp_path / "stream.jsonl"
    mark = marks(prefect_server, envoy, auth)
    # (Prefect 3.9.1's --output-file is broken: "'coroutine' object does not support the
    # asynchronous context manager protocol". stdout it is.)
    stream = client.popen([client.prefect(), "event", "stream", "--format", "json"],
                          stdout=open(out_file, "w"), stderr=open(tmp_path / "stream.err", "w"))
    try:
        wait_until("the stream's subscription on /api/events/out",
                   lambda: "/api/events/out" in upgrades(prefect_server.reached()[mark[0]:]), timeout=90)
        client.cli("event", "emit", name, "--resource-id", "e2e.resource.1", "--payload", '{"n": 1}')
        status, page = wait_until(
            "the emitted event on the server",
            lambda: (lambda r: r if r[0] == 200 and r[1]["events"] else None)(
                prefect_server.api("POST", "/events/filter", {"filter": {"event": {"name": [name]}}})),
            timeout=60)
        assert page["events"][0]["resource"]["prefect.resource.id"] == "e2e.resource.1", page
        streamed = wait_until("the event in `prefect event stream`'s output",
                              lambda: [json.loads(line) for line in out_file.read_text().splitlines()
                                       if line.startswith("{") and name in line], timeout=60)
        assert streamed[0]["event"] == name and streamed[0]["payload"] == {"n": 1}, streamed
    finally:
        stream.terminate()
        stream.wait(15)
    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    note_wire(wire, "prefect event stream + prefect event emit", reached, accesses, calls)


def test_flow_run_watch(client, prefect_server, envoy, auth, wire, tmp_path):
    go, id_file = tmp_path / "go", tmp_path / "flow-run-id"
    flow_proc = client.popen(client.script() + ["watched", str(go), str(id_file)],
                             stdout=open(tmp_path / "flow.out", "w"), stderr=open(tmp_path / "flow.err", "w"))
    watch = None
    try:
        flow_run_id = wait_until("the watched flow's run id", lambda: id_file.exists() and id_file.read_text(),
                                 timeout=90)
        mark = marks(prefect_server, envoy, auth)
        watch = client.popen([client.prefect(), "flow-run", "watch", flow_run_id, "--timeout", "120"],
                             stdout=open(tmp_path / "watch.out", "w"), stderr=open(tmp_path / "watch.err", "w"))
        # Release the flow once `watch` holds both of its streams.
        wait_until("flow-run watch's events and logs streams",
                   lambda: {"/api/events/out", "/api/logs/out"} <= set(upgrades(prefect_server.reached()[mark[0]:])),
                   timeout=90)
        go.write_text("go")
        assert watch.wait(120) == 0, (tmp_path / "watch.out").read_text() + (tmp_path / "watch.err").read_text()
        assert flow_proc.wait(60) == 0, (tmp_path / "flow.err").read_text()
    finally:
        for proc in (watch, flow_proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    output = (tmp_path / "watch.out").read_text()
    assert "finished successfully" in output and "e2e watched flow done" in output, output
    status, run = prefect_server.api("GET", f"/flow_runs/{flow_run_id}")
    assert status == 200 and run["state_type"] == "COMPLETED", run
    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    note_wire(wire, "prefect flow-run watch", reached, accesses, calls)


def test_task_worker_runs_delayed_task(client, prefect_server, envoy, auth, wire, tmp_path):
    mark = marks(prefect_server, envoy, auth)
    worker = client.popen(client.script() + ["task-worker"],
                          stdout=open(tmp_path / "worker.out", "w"), stderr=open(tmp_path / "worker.err", "w"))
    try:
        wait_until("the task worker's subscription",
                   lambda: "/api/task_runs/subscriptions/scheduled" in upgrades(prefect_server.reached()[mark[0]:]),
                   timeout=90)
        out = json.loads(client.python("delay", "4").stdout.splitlines()[-1])
        assert out["result"] == 40, out
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    status, run = wait_until(
        "the delayed task run COMPLETED on the server",
        lambda: (lambda r: r if r[0] == 200 and r[1]["state_type"] == "COMPLETED" else None)(
            prefect_server.api("GET", f"/task_runs/{out['task_run_id']}")), timeout=60)
    assert run["name"].startswith("e2e-background"), run
    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    note_wire(wire, "task worker + task.delay()", reached, accesses, calls)


@pytest.mark.parametrize("config", ["envoy.yaml", "prefect preset"])
def test_every_websocket_opens_with_the_documented_setting(config, request, workdir, prefect_server, auth, wire):
    envoy = request.getfixturevalue("envoy" if config == "envoy.yaml" else "envoy_preset")
    client = Client(workdir / f"client-sockets-{config.replace(' ', '-')}", envoy.url + "/api")
    mark = marks(prefect_server, envoy, auth)
    report = json.loads(client.python("open-sockets").stdout.splitlines()[-1])
    assert report == {path: "ok" for path in WEBSOCKETS}, report
    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    seen = upgrades(reached)
    for path in WEBSOCKETS:
        assert seen[path]["headers"].get("authorization") == ["key"], (path, seen.get(path))
    note_wire(wire, f"each websocket, PREFECT_CLIENT_CUSTOM_HEADERS set ({config})", reached, accesses, calls)


def test_without_the_setting_the_in_band_websockets_get_401(workdir, envoy, prefect_server, auth, wire):
    """Why the docs ask for PREFECT_CLIENT_CUSTOM_HEADERS: with only PREFECT_API_KEY, the
    client opens /api/events/in and /api/logs/out without an Authorization header (it
    authenticates in-band after the 101 against a non-Cloud URL), and the callout denies
    the upgrade."""
    bare = Client(workdir / "client-no-custom-headers", envoy.url + "/api", custom_headers=False)
    mark = marks(prefect_server, envoy, auth)
    report = json.loads(bare.python("open-sockets").stdout.splitlines()[-1])
    for path in ("/api/events/in", "/api/logs/out"):
        assert report[path].startswith("error: InvalidStatus status=401"), report
    for path in PUBLIC_WEBSOCKETS:
        assert report[path] == "ok", report
    denied = wait_accesses(envoy, mark, lambda a: a["upgrade"] == "websocket" and a["status"] == 401,
                           "the two 401 upgrades in Envoy's access log", count=2)
    assert sorted(a["path"] for a in denied) == ["/api/events/in", "/api/logs/out"], denied
    assert all(a["authorization"] is None for a in denied), denied
    # Plain HTTP calls carry the key (PREFECT_API_KEY) and pass: only the sockets fail.
    emitted = bare.cli("event", "emit", "e2e.without.header", "--resource-id", "e2e.r", check=False)
    assert emitted.returncode != 0 or "401" in emitted.stdout + emitted.stderr, emitted
    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    assert "/api/events/in" not in upgrades(reached) and "/api/logs/out" not in upgrades(reached), reached
    note_wire(wire, "each websocket, only PREFECT_API_KEY", reached, accesses, calls)


# --- wrong key, no key, spoofed identity ------------------------------------------------

PROTECTED = [
    ("GET", "/api/admin/version", None),
    ("POST", "/api/flows/filter", {}),
    ("POST", "/api/flow_runs/filter", {}),
    ("POST", "/api/task_runs/filter", {}),
    ("POST", "/api/flows/", {"name": "e2e-must-not-exist"}),
    ("POST", "/api/events/filter", {}),
    ("POST", "/api/logs/", []),
    ("GET", "/api/admin/settings", None),
]
PUBLIC = ["/api/health", "/api/version", "/api/openapi.json", "/api/docs"]


def ws_status(envoy, path, headers):
    try:
        with connect(f"ws://127.0.0.1:{envoy.port}{path}", additional_headers=headers,
                     subprotocols=["prefect"], open_timeout=30) as ws:
            ws.close()
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.parametrize("credential", ["wrong key", "no key"])
def test_wrong_or_missing_key(credential, prefect_server, envoy, workdir):
    headers = {"authorization": f"Bearer {WRONG_KEY}"} if credential == "wrong key" else {}
    before = len(prefect_server.reached())
    for method, path, body in PROTECTED:
        status, reply = request(envoy.port, method, path, body=body, headers=headers)
        assert status == 401, (method, path, status, reply)
    for path in ("/api/events/in", "/api/logs/out"):
        assert ws_status(envoy, path, headers) == 401, path
    leaked = [r for r in prefect_server.reached()[before:]]
    assert leaked == [], f"denied requests reached Prefect: {leaked}"
    for path in PUBLIC:
        status, _ = request(envoy.port, "GET", path, headers=headers)
        assert status == 200, (path, status)
    for path in PUBLIC_WEBSOCKETS:
        assert ws_status(envoy, path, headers) == 101, path
    status, flows = prefect_server.api("POST", "/flows/filter", {"flows": {"name": {"any_": ["e2e-must-not-exist"]}}})
    assert status == 200 and flows == [], flows
    # The CLI as a user with that key sees the 401 and fails.
    user = Client(workdir / f"client-{credential.replace(' ', '-')}", envoy.url + "/api",
                  key=WRONG_KEY if credential == "wrong key" else None, custom_headers=True)
    result = user.cli("flow", "ls", check=False)
    assert result.returncode != 0 and "401" in result.stdout + result.stderr, result


def test_public_events_out_accepts_a_null_token_on_an_open_server(envoy):
    """The security note of docs/prefect-clients.md, proven: /api/events/out is public with
    the default public paths, and an OSS server without PREFECT_SERVER_API_AUTH_STRING accepts
    `{"type":"auth","token":null}`, so anyone reaching Envoy can read the event stream."""
    with connect(f"ws://127.0.0.1:{envoy.port}/api/events/out", subprotocols=["prefect"], open_timeout=30) as ws:
        ws.send(json.dumps({"type": "auth", "token": None}))
        answer = json.loads(ws.recv(timeout=30))
    assert answer["type"] == "auth_success", answer


def test_spoofed_identity_headers_never_reach_prefect(prefect_server, envoy):
    spoof = {name: "spoofed-admin" for name in IDENTITY}
    before = len(prefect_server.reached())
    status, _ = request(envoy.port, "POST", "/api/flows/filter", body={},
                        headers={"authorization": f"Bearer {KEY}", **spoof})
    assert status == 200
    status, _ = request(envoy.port, "GET", "/api/health", headers=spoof)
    assert status == 200
    assert ws_status(envoy, "/api/events/out", spoof) == 101
    assert ws_status(envoy, "/api/events/in", {"authorization": f"Bearer {KEY}", **spoof}) == 101
    reached = via_envoy(prefect_server.reached()[before:])
    paths = {r["path"] for r in reached}
    assert {"/api/flows/filter", "/api/health", "/api/events/out", "/api/events/in"} <= paths, paths
    for record in reached:
        for name in IDENTITY:
            assert "spoofed-admin" not in (record["headers"].get(name) or []), record
        allowed = record["path"] in ("/api/flows/filter", "/api/events/in")
        expected = ["demo-user"] if allowed else None
        assert record["headers"].get("x-nebula-actor-id") == expected, record


def test_cloud_style_url_sends_the_key_on_events_in_only(workdir, envoy, prefect_server, auth, wire):
    """With PREFECT_API_URL under PREFECT_CLOUD_API_URL the client takes its Cloud classes:
    the events client puts `Authorization: bearer <key>` on the /api/events/in upgrade,
    the subscribers still authenticate in-band, so /api/logs/out still needs
    PREFECT_CLIENT_CUSTOM_HEADERS (docs/prefect-clients.md "Cloud-style URLs")."""
    cloud = Client(workdir / "client-cloud-style", envoy.url + "/api", custom_headers=False)
    cloud.env["PREFECT_CLOUD_API_URL"] = envoy.url + "/api"
    mark = marks(prefect_server, envoy, auth)
    report = json.loads(cloud.python("open-sockets").stdout.splitlines()[-1])
    assert report["/api/events/in"] == "ok", report
    assert report["/api/logs/out"].startswith("error: InvalidStatus status=401"), report
    reached, accesses, calls = since(prefect_server, envoy, auth, mark)
    events_in = [c for c in calls if c["uri"] == "/api/events/in"]
    assert events_in and all(c["authorization"] == "bearer key" for c in events_in), calls
    assert upgrades(reached)["/api/events/out"]["in_band_token"] == "key", upgrades(reached)
    note_wire(wire, "each websocket, Cloud-style URL, only PREFECT_API_KEY", reached, accesses, calls)
