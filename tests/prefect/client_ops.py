#!/usr/bin/env python3
"""What Prefect users do with the client, one operation per subcommand. Run by the
tests in a subprocess whose environment points PREFECT_API_URL at Envoy; each prints
one JSON line with what it got back, so the test can check it against the server.
"""
import asyncio
import json
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task


@task
def double(x: int) -> int:
    return 2 * x


@task
def add(x: int, y: int) -> int:
    return x + y


@flow(name="e2e-two-tasks")
def two_tasks(x: int = 3) -> int:
    get_run_logger().info("e2e log line from the flow")
    return add(double(x), 1)


@task(name="e2e-background")
def background(x: int) -> int:
    return x * 10


@flow(name="e2e-watched")
def watched(go_file: str) -> str:
    logger = get_run_logger()
    logger.info("e2e watched flow waiting")
    deadline = time.monotonic() + 60
    while not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    logger.info("e2e watched flow done")
    # Longer than the log batch interval: the line is streamed before the final state.
    time.sleep(2)
    return "done"


def emit(record):
    print(json.dumps(record), flush=True)


def op_flow():
    state = two_tasks(3, return_state=True)
    emit({"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value,
          "result": state.result()})


async def op_api():
    from prefect import get_client
    from prefect.states import Completed, Running

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("e2e-api-flow")
        run = await client.create_flow_run(flow=_named_flow("e2e-api-flow"), name="e2e-api-run")
        await client.set_flow_run_state(run.id, Running())
        await client.set_flow_run_state(run.id, Completed())
        read = await client.read_flow_run(run.id)
        flows = await client.read_flows()
        emit({"flow_id": str(flow_id), "flow_run_id": str(run.id), "state": read.state.type.value,
              "flow_names": sorted(f.name for f in flows)})


def _named_flow(name):
    @flow(name=name)
    def placeholder():
        return None

    return placeholder


def op_task_worker():
    from prefect.task_worker import serve

    serve(background)


def op_delay(value):
    future = background.delay(int(value))
    result = future.result(timeout=90)
    emit({"task_run_id": str(future.task_run_id), "result": result})


def op_watched(go_file, id_file):
    @flow(name="e2e-watched")
    def wrapper():
        from prefect.runtime import flow_run

        Path(id_file).write_text(flow_run.id)
        return watched.fn(go_file)

    state = wrapper(return_state=True)
    emit({"state": state.type.value})


async def op_open_sockets():
    """Opens each WebSocket the client uses, with the client's own classes, and reports
    per endpoint `ok` or the error (e.g. the 401 on the upgrade)."""
    from prefect.client.schemas.objects import TaskRun
    from prefect.client.subscriptions import Subscription
    from prefect.events.clients import get_events_client, get_events_subscriber
    from prefect.logging.clients import get_logs_subscriber
    from prefect.settings import get_current_settings

    async def events_in():
        async with get_events_client(reconnection_attempts=0):
            pass

    async def events_out():
        async with get_events_subscriber(reconnection_attempts=0):
            pass

    async def logs_out():
        async with get_logs_subscriber(reconnection_attempts=0):
            pass

    async def scheduled():
        subscription = Subscription(model=TaskRun, path="/task_runs/subscriptions/scheduled",
                                    keys=["e2e-no-such-task"], base_url=get_current_settings().api.url)
        await subscription._ensure_connected()
        await subscription.websocket.close()

    report = {}
    for path, opener in [("/api/events/in", events_in), ("/api/events/out", events_out),
                         ("/api/logs/out", logs_out), ("/api/task_runs/subscriptions/scheduled", scheduled)]:
        try:
            await asyncio.wait_for(opener(), 60)
            report[path] = "ok"
        except BaseException as exc:  # noqa: BLE001 (the report is the point)
            status = getattr(getattr(exc, "response", None), "status_code", None)
            report[path] = f"error: {type(exc).__name__} status={status}: {str(exc)[:200]}"
    emit(report)


def main(argv):
    op, args = argv[1], argv[2:]
    if op == "flow":
        op_flow()
    elif op == "api":
        asyncio.run(op_api())
    elif op == "task-worker":
        op_task_worker()
    elif op == "delay":
        op_delay(*args)
    elif op == "watched":
        op_watched(*args)
    elif op == "open-sockets":
        asyncio.run(op_open_sockets())
    else:
        raise SystemExit(f"unknown operation {op!r}")


if __name__ == "__main__":
    main(sys.argv)
