"""A Python Celery 5.7 client for the Redis result-backend interop tests.

    py_redis_client.py send <task> <json args> [--kwargs JSON] [--queue Q]
        sends the task, prints its id, does not wait;
    py_redis_client.py get <task_id> [--timeout S]
        waits for the result (AsyncResult(id).get(), a process that did not
        send the task) and prints one JSON line {state, result, traceback,
        name, args, kwargs, worker, retries, queue, date_done, task_id}; an
        exception (the task's, or TimeoutError) is printed as result
        {exc_type, exc_module, message}, never raised;
    py_redis_client.py state <task_id>
        prints the state (PENDING, STARTED, RETRY, SUCCESS, ...) at once;
    py_redis_client.py forget <task_id>
        deletes the stored result;
    py_redis_client.py chord <json header> <json body>
        sends chord(header, body), each signature {"task", "args", "queue"},
        and prints the body's task id without waiting;
    py_redis_client.py canvas <json canvas>
        builds a canvas from a tree ({"task", "args", "queue"} for a task,
        {"chain": [...]}, {"group": [...]}, {"chord": [...], "body": {...}}),
        applies it and prints, without waiting, the JSON id of its result:
        a string, or a list of ids for a group's results;
    py_redis_client.py dict <json canvas>
        builds the same tree and prints it in Celery's dict form (what
        json.dumps makes of a signature), without sending it;
    py_redis_client.py apply-dict <json dict>
        reads a canvas in Celery's dict form (celery.signature), applies it
        and prints its result's JSON id as `canvas` does.

The broker is $BROKER_URL and the result backend $INTEROP_RESULT_BACKEND
(default redis://127.0.0.1:6379/0), or --broker / --backend before the command."""

import argparse
import json
import os

from celery import Celery
from celery.result import AsyncResult

parser = argparse.ArgumentParser()
parser.add_argument("--broker", default=os.environ.get("BROKER_URL"))
parser.add_argument(
    "--backend", default=os.environ.get("INTEROP_RESULT_BACKEND", "redis://127.0.0.1:6379/0")
)
commands = parser.add_subparsers(dest="command", required=True)
send = commands.add_parser("send")
send.add_argument("task")
send.add_argument("args", type=json.loads)
send.add_argument("--kwargs", type=json.loads, default={})
send.add_argument("--queue")
get = commands.add_parser("get")
get.add_argument("task_id")
get.add_argument("--timeout", type=float, default=60)
for name in ("state", "forget"):
    commands.add_parser(name).add_argument("task_id")
chord_command = commands.add_parser("chord")
chord_command.add_argument("header", type=json.loads)
chord_command.add_argument("body", type=json.loads)
commands.add_parser("canvas").add_argument("tree", type=json.loads)
commands.add_parser("dict").add_argument("tree", type=json.loads)
commands.add_parser("apply-dict").add_argument("dict", type=json.loads)
cli = parser.parse_args()
if not cli.broker:
    parser.error("no broker: set BROKER_URL or pass --broker")

app = Celery("pyredisclient", broker=cli.broker, backend=cli.backend)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_extended=True,
)


def exception(exc):
    return {"exc_type": type(exc).__name__, "exc_module": type(exc).__module__, "message": str(exc)}


if cli.command == "send":
    options = {"queue": cli.queue} if cli.queue else {}
    print(app.send_task(cli.task, args=cli.args, kwargs=cli.kwargs, **options).id)
elif cli.command == "get":
    result = AsyncResult(cli.task_id, app=app)
    try:
        value = result.get(timeout=cli.timeout)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
        value = exception(exc)
    meta = result._get_task_meta()  # what AsyncResult's properties read
    print(json.dumps({
        "state": result.state,
        "result": value,
        "traceback": result.traceback,
        "name": result.name,
        "args": result.args,
        "kwargs": result.kwargs,
        "worker": result.worker,
        "retries": result.retries,
        "queue": result.queue,
        "date_done": meta.get("date_done"),
        "task_id": meta.get("task_id"),
    }, default=str))
elif cli.command == "state":
    print(AsyncResult(cli.task_id, app=app).state)
elif cli.command == "forget":
    AsyncResult(cli.task_id, app=app).forget()
elif cli.command == "chord":
    from celery import chord

    def signature(spec):
        options = {"queue": spec["queue"]} if spec.get("queue") else {}
        return app.signature(spec["task"], args=spec.get("args", []), **options)

    result = chord([signature(s) for s in cli.header])(signature(cli.body))
    print(result.id)
elif cli.command in ("canvas", "dict", "apply-dict"):
    from celery import chain, chord, group, signature
    from celery.result import GroupResult

    def build(spec):
        if "chain" in spec:
            return chain(*[build(s) for s in spec["chain"]])
        if "group" in spec:
            return group([build(s) for s in spec["group"]])
        if "chord" in spec:
            return chord([build(s) for s in spec["chord"]], build(spec["body"]))
        options = {"queue": spec["queue"]} if spec.get("queue") else {}
        return app.signature(spec["task"], args=spec.get("args", []), **options)

    if cli.command == "dict":
        print(json.dumps(build(cli.tree)))
    else:
        canvas = build(cli.tree) if cli.command == "canvas" else signature(cli.dict, app=app)
        result = canvas.apply_async()
        if isinstance(result, GroupResult):
            print(json.dumps([r.id for r in result.results]))
        else:
            print(json.dumps(result.id))
