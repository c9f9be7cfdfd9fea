"""The Python Celery side of the Redis result-backend interop tests: a Celery
5.7 app like `pyapp`, but with the Redis result backend at
$INTEROP_RESULT_BACKEND (default redis://127.0.0.1:6379/0) and
`result_extended=True`, and tasks that exercise every state the backend
stores (SUCCESS, FAILURE, RETRY, STARTED).

Run a worker with `celery -A pyapp_redis worker -Q <queue>` from this
directory, with BROKER_URL and INTEROP_RESULT_BACKEND in the environment."""

import os
import time

from celery import Celery

app = Celery(
    "pyapp_redis",
    broker=os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("INTEROP_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_extended=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="interop.py_add")
def py_add(x, y):
    return x + y


@app.task(name="interop.py_echo")
def py_echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="interop.py_sum")
def py_sum(values):
    """A chord body: the header's values, summed."""
    return sum(values)


@app.task(name="interop.py_fail")
def py_fail(message):
    raise ValueError(message)


@app.task(name="interop.py_retry_once", bind=True, max_retries=3)
def py_retry_once(self, value):
    """Retries once (RETRY is stored), then returns `value` and its retry count."""
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError(f"retrying {value}"), countdown=0.1)
    return {"value": value, "retries": self.request.retries}


@app.task(name="interop.py_wait_for_key", track_started=True)
def py_wait_for_key(key, timeout=30):
    """STARTED is stored, then the task polls the result backend's Redis until
    `key` is set (by the test) and returns its value; TimeoutError if it is
    not set within `timeout` seconds."""
    client = app.backend.client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = client.get(key)
        if value is not None:
            return value.decode()
        time.sleep(0.05)
    raise TimeoutError(f"{key} was not set within {timeout} s")
