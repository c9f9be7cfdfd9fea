"""The Python Celery side of the Redis *broker* interop tests
(`tests/interop_redis_broker.rs`): a Celery 5.7 app whose broker is the Redis
at $REDIS_BROKER_URL (default redis://127.0.0.1:6379/0) under the key prefix
$REDIS_BROKER_PREFIX (kombu's `global_keyprefix`), with the visibility timeout
$REDIS_VISIBILITY_TIMEOUT (seconds, default kombu's 3600), and the Redis
result backend at $INTEROP_RESULT_BACKEND (default: the broker's Redis,
without the prefix: the Rust result backend has none).

Its restorer of unacknowledged messages sweeps once when the worker starts,
then every $REDIS_RESTORE_INTERVAL seconds (`unacked_restore_interval`,
default 1, with `unacked_restore_throttle` 1) instead of every 100 s, so a
short visibility timeout shows within a test. The restore mutex it takes
expires after 5 s (`unacked_mutex_expire`, kombu's 300 s), so a worker
SIGKILLed while it held the mutex does not keep every other restorer (the
Rust one included) off the prefix for five minutes.

The `celery` command takes its broker and result backend from $BROKER_URL
and $RESULT_BACKEND (its `--broker` / `--result-backend`), over the app's
own settings: a worker must be started with both pointing at this Redis
(the test harness sets $BROKER_URL to RabbitMQ). This module refuses to load
when they point elsewhere, instead of consuming from another broker.

Run a worker with `celery -A pyapp_redis_broker worker -Q <queue>` from this
directory; `py_redis_broker_client.py` imports the same app as a client."""

import os
import time
from datetime import datetime

from celery import Celery

BROKER_URL = os.environ.get("REDIS_BROKER_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("REDIS_BROKER_PREFIX", "")
VISIBILITY_TIMEOUT = float(os.environ.get("REDIS_VISIBILITY_TIMEOUT", "3600"))
RESTORE_INTERVAL = int(os.environ.get("REDIS_RESTORE_INTERVAL", "1"))
RESULT_BACKEND = os.environ.get("INTEROP_RESULT_BACKEND", BROKER_URL)

# What the `celery` command made of $BROKER_URL / $RESULT_BACKEND wins over
# the app's settings: it must be the same Redis.
for variable, wanted in (
    ("CELERY_BROKER_URL", BROKER_URL),
    ("CELERY_RESULT_BACKEND", RESULT_BACKEND),
):
    given = os.environ.get(variable)
    if given and given != wanted:
        raise RuntimeError(
            f"{variable} is {given!r} (from the celery command's $BROKER_URL or "
            f"$RESULT_BACKEND), not {wanted!r}: this app runs on that Redis only"
        )

app = Celery(
    "pyapp_redis_broker",
    broker=BROKER_URL,
    backend=RESULT_BACKEND,
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # What the tests store outside their prefix goes by itself too.
    result_expires=600,
    broker_transport_options={
        "global_keyprefix": PREFIX,
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 5,
    },
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def _timestamp(eta):
    """A request's eta (an ISO string, or a datetime) as seconds since the epoch."""
    if eta is None:
        return None
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    return eta.timestamp()


@app.task(name="interop.rb.add")
def add(x, y):
    return x + y


@app.task(name="interop.rb.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="interop.rb.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="interop.rb.stamp", bind=True)
def stamp(self, label):
    """When it ran and the eta its message carried (seconds since the epoch)."""
    return {"label": label, "ran_at": time.time(), "eta": _timestamp(self.request.eta)}


@app.task(name="interop.rb.record", bind=True)
def record(self, key, label):
    """Appends `label` to the Redis list `key` (the order tasks ran in)."""
    app.backend.client.rpush(key, label)
    return {"label": label, "priority": self.request.delivery_info.get("priority")}


@app.task(name="interop.rb.hold", acks_late=True, track_started=True)
def hold(seconds):
    """Runs `seconds` (STARTED stored first), acknowledged only after: the
    test kills the worker meanwhile."""
    time.sleep(seconds)
    return "python"

