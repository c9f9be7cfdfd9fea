"""A Python `celery beat` for the scheduler interop test: one entry every
second sending the Rust task `beat.rust_tick` to `$BEAT_QUEUE` with
`$BEAT_LABEL`."""

import os

from celery import Celery

app = Celery("pybeat", broker=os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    broker_connection_retry_on_startup=True,
    beat_schedule={
        "rust-tick": {
            "task": "beat.rust_tick",
            "schedule": 1.0,
            "args": [os.environ.get("BEAT_LABEL", "")],
            "options": {"queue": os.environ.get("BEAT_QUEUE", "celery")},
        },
    },
)
