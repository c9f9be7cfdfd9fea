"""A Python Celery 5.7 client for the interop tests.

argv[1] is a JSON list of calls {name, queue, queue_arguments, args, kwargs,
options, watch_states, link, chain}; every call is sent with `send_task` (with
`link`: a callback signature {name, args}; with `chain`: a list of further
steps {name, args}, sent as `chain(call, *steps).apply_async()`), then every
result is awaited (for a chain: the last step's). Prints one JSON list: per call, the value or the raised exception
(type, module, message, traceback) and, with watch_states, every state
message received for it."""

import json
import os
import sys

import time

from celery import Celery, chain
from kombu import Exchange, Queue

# Imported so that Celery rebuilds its exception classes (it looks them up in
# sys.modules).
import interop_errors  # noqa: F401

app = Celery("pyclient", broker=os.environ["BROKER_URL"], backend="rpc://")
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])

def queue(call):
    """The call's queue; with queue_arguments, declared with them (e.g. x-max-priority)."""
    if "queue_arguments" not in call:
        return call["queue"]
    name = call["queue"]
    return Queue(name, Exchange(name), routing_key=name, queue_arguments=call["queue_arguments"])


def send(c):
    options = dict(c.get("options", {}))
    if "link" in c:
        options["link"] = app.signature(c["link"]["name"], args=c["link"].get("args", []), queue=queue(c))
    if "chain" in c:
        first = app.signature(c["name"], args=c.get("args", []), kwargs=c.get("kwargs", {}), queue=queue(c))
        steps = [app.signature(s["name"], args=s.get("args", []), queue=queue(c)) for s in c["chain"]]
        return chain(first, *steps).apply_async(**options)
    return app.send_task(
        c["name"],
        args=c.get("args", []),
        kwargs=c.get("kwargs", {}),
        queue=queue(c),
        **options,
    )


calls = json.loads(sys.argv[1])
sent = []
for c in calls:
    sent.append((time.monotonic(), send(c)))
out = []
for call, (sent_at, result) in zip(calls, sent):
    states = []
    # rpc:// delivers every state message to get()'s on_message callback.
    on_message = (lambda meta: states.append(meta["status"])) if call.get("watch_states") else None
    try:
        value = result.get(timeout=60, on_message=on_message)
        elapsed = time.monotonic() - sent_at
        out.append({"status": "SUCCESS", "result": value, "states": states, "elapsed": elapsed, "id": result.id})
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
        out.append({
            "status": result.state,
            "exc_type": type(exc).__name__,
            "exc_module": type(exc).__module__,
            "message": str(exc),
            "args": [a if isinstance(a, (str, int, float, bool, type(None))) else repr(a) for a in exc.args],
            "traceback": result.traceback,
            "states": states,
        })
print(json.dumps(out))
