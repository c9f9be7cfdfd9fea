"""A Python Celery 5.7 client on the Redis broker, for
`tests/interop_redis_broker.rs`; the app (broker, key prefix, visibility
timeout, result backend) is `pyapp_redis_broker`'s, from the same
environment variables.

    py_redis_broker_client.py send <json calls>
        sends each call of the list, in order, and prints one JSON list with,
        per call, {"id", "sent_before", "sent_after"} (seconds since the
        epoch around the publish); a call is {"name", "args", "kwargs",
        "queue", "countdown", "priority", "ignore_result"}, all but "name"
        optional;
    py_redis_broker_client.py get <json ids> [--timeout S]
        waits for each result (AsyncResult(id).get over the Redis result
        backend) and prints one JSON list with, per id, {"id", "state",
        "result"}; a failure's result is {"exc_type", "exc_module",
        "message"} (the exception Celery rebuilt), never raised."""

import argparse
import json
import time

from celery.result import AsyncResult

from pyapp_redis_broker import app

parser = argparse.ArgumentParser()
commands = parser.add_subparsers(dest="command", required=True)
commands.add_parser("send").add_argument("calls", type=json.loads)
get = commands.add_parser("get")
get.add_argument("ids", type=json.loads)
get.add_argument("--timeout", type=float, default=60)
cli = parser.parse_args()


def exception(exc):
    return {"exc_type": type(exc).__name__, "exc_module": type(exc).__module__, "message": str(exc)}


if cli.command == "send":
    sent = []
    for call in cli.calls:
        options = {
            key: call[key]
            for key in ("queue", "countdown", "priority", "ignore_result")
            if call.get(key) is not None
        }
        before = time.time()
        result = app.send_task(
            call["name"], args=call.get("args", []), kwargs=call.get("kwargs", {}), **options
        )
        sent.append({"id": result.id, "sent_before": before, "sent_after": time.time()})
    print(json.dumps(sent))
elif cli.command == "get":
    out = []
    for task_id in cli.ids:
        result = AsyncResult(task_id, app=app)
        try:
            value = result.get(timeout=cli.timeout, propagate=True)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
            value = exception(exc)
        out.append({"id": task_id, "state": result.state, "result": value})
    print(json.dumps(out))
