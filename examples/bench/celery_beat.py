"""Celery 5.7's beat for the `beat` benchmark section: `$BENCH_ENTRIES`
entries, each sending `bench.beat_tick(i)` to `$BENCH_QUEUE` every
`$BENCH_PERIOD` seconds."""

import os

from celery import Celery

app = Celery("celery_beat", broker=os.environ["BROKER_URL"])
entries = int(os.environ.get("BENCH_ENTRIES", "10"))
period = float(os.environ.get("BENCH_PERIOD", "1"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    broker_connection_retry_on_startup=True,
    beat_schedule={
        f"e{i}": {
            "task": "bench.beat_tick",
            "schedule": period,
            "args": [i],
            "options": {"queue": os.environ["BENCH_QUEUE"]},
        }
        for i in range(entries)
    },
)
