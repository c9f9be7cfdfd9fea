"""The Python Celery side of the interop tests: a Celery 5.7 app with the
`rpc://` result backend and a few tasks that echo what they received."""

import os
import time

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

import interop_errors

app = Celery(
    "pyapp",
    broker=os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="tasks.add")
def tasks_add(x, y):
    """The same task as the Rust `tasks.add`, for a mixed fleet on one queue."""
    return x + y


@app.task(name="py.add")
def add(x, y):
    return x + y


@app.task(name="py.mul")
def mul(x, y):
    return x * y


@app.task(name="py.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="py.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="py.expected_failure")
def expected_failure():
    raise interop_errors.ExpectedException("Task expected to fail", "test")


@app.task(name="py.unserializable_failure")
def unserializable_failure():
    # An argument JSON cannot carry: Celery's worker sends its repr.
    raise interop_errors.ExpectedException(object(), "x")


@app.task(name="py.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="py.soft_limited")
def soft_limited(seconds):
    try:
        time.sleep(seconds)
        return "finished"
    except SoftTimeLimitExceeded:
        return "soft limit seen"


@app.task(name="py.request", bind=True)
def request(self):
    """What the Python worker read from the message's headers and properties."""
    r = self.request
    return {
        "id": r.id,
        "eta": r.eta,
        "expires": r.expires,
        "timelimit": list(r.timelimit) if r.timelimit else None,
        "root_id": r.root_id,
        "parent_id": r.parent_id,
        "argsrepr": r.argsrepr,
        "kwargsrepr": r.kwargsrepr,
        "origin": r.origin,
        "retries": r.retries,
        "priority": (r.delivery_info or {}).get("priority"),
        "reply_to": r.reply_to,
        "correlation_id": r.correlation_id,
    }


@app.task(name="py.beat_relay", bind=True)
def beat_relay(self, queue, label):
    """Tells `queue` (as a `beat.seen` task message) what a task sent by a
    scheduler looked like to the Python worker."""
    report = {
        "label": label,
        "celery_beat_task": getattr(self.request, "celery_beat_task", None),
        "beat_entry": getattr(self.request, "beat_entry", None),
    }
    app.send_task("beat.seen", args=[report], queue=queue)
