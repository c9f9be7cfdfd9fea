"""A Python Celery 5.7 peer on quorum queues, as Celery's docs configure one
for native delayed delivery: the task queue ``$QUORUM_QUEUE`` declared with
``x-queue-type: quorum`` and a topic exchange of the same name. As a worker
(``celery -A py_quorum worker``) it declares Celery's delay levels and binds
its queue to ``celery_delayed_delivery``; as a client (``python py_quorum.py
CALLS``) it sends each call of the JSON list ``[{name, args, countdown}]``
through those levels and prints, per call, ``{"result", "elapsed"}``."""

import json
import os
import sys
import time

from celery import Celery
from kombu import Exchange, Queue

QUEUE = os.environ["QUORUM_QUEUE"]

app = Celery("py_quorum", broker=os.environ["BROKER_URL"], backend="rpc://")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_default_queue_type="quorum",
    task_default_exchange_type="topic",
    task_queues=[
        Queue(
            QUEUE,
            Exchange(QUEUE, type="topic"),
            routing_key=QUEUE,
            queue_arguments={"x-queue-type": "quorum"},
        )
    ],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="pyq.stamp")
def stamp(label):
    """When it ran (wall clock, seconds since the epoch)."""
    return {"label": label, "ran_at": time.time()}


if __name__ == "__main__":
    calls = json.loads(sys.argv[1])
    sent = []
    for call in calls:
        started = time.time()
        result = app.send_task(
            call["name"], args=call.get("args", []), countdown=call.get("countdown")
        )
        sent.append((started, result))
    out = []
    for started, result in sent:
        value = result.get(timeout=60)
        out.append({"result": value, "sent_at": started, "elapsed": time.time() - started})
    print(json.dumps(out))
