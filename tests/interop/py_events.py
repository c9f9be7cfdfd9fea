"""Celery 5.7's own event receiver (what `celery events` and Flower use),
watching one worker for the Rust event tests.

    py_events.py <hostname> <last task id>

Prints every event from <hostname> as one JSON line (after the receiver
added `local_received`), starting with the first one it gets (it wakes the
workers up, as Flower does, so a heartbeat comes at once), and exits once
it printed an event about <last task id> whose type is task-failed. The
broker is $BROKER_URL."""

import json
import os
import sys

from celery import Celery

hostname, last_task = sys.argv[1], sys.argv[2]
app = Celery("pyevents", broker=os.environ["BROKER_URL"])


def on_event(event):
    if event.get("hostname") != hostname:
        return
    print(json.dumps(event), flush=True)
    if event.get("type") == "task-failed" and event.get("uuid") == last_task:
        raise SystemExit(0)


with app.connection() as connection:
    receiver = app.events.Receiver(connection, handlers={"*": on_event})
    receiver.capture(limit=None, timeout=None, wakeup=True)
