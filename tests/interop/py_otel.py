"""Celery 5.7 instrumented with OpenTelemetry (opentelemetry-instrumentation-
celery, spans kept in memory), for the trace tests.

`client <queue> <task>`: calls `task` (no arguments) on `queue` and waits for
its value; prints JSON {"value", "publish": the ids of the publish span, whose
context the message's `traceparent` carries}.
`worker <queue>`: a solo worker on `queue`, whose task `py.otel.where` returns
where its run span is: {"trace_id", "span_id", "parent_span_id"}.
"""

import json
import os
import sys

from celery import Celery
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
CeleryInstrumentor().instrument()

app = Celery("pyotel", broker=os.environ["BROKER_URL"], backend="rpc://")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


def ids(context):
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


@app.task(name="py.otel.where")
def where():
    span = trace.get_current_span()
    found = ids(span.get_span_context())
    parent = getattr(span, "parent", None)
    found["parent_span_id"] = format(parent.span_id, "016x") if parent else None
    return found


def stands_for_the_rust_task():
    """Never runs here: registered under the Rust task's name (see below)."""


if __name__ == "__main__":
    mode, queue = sys.argv[1], sys.argv[2]
    if mode == "client":
        # Registered here under the Rust task's name, so that the
        # instrumentation ends (and exports) its publish span.
        remote = app.task(name=sys.argv[3])(stands_for_the_rust_task)
        value = remote.apply_async(queue=queue).get(timeout=20)
        publish = [ids(s.context) for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.PRODUCER]
        print(json.dumps({"value": value, "publish": publish}))
    else:
        app.worker_main(["worker", "-Q", queue, "-P", "solo", "--without-gossip", "--without-mingle",
                         "--without-heartbeat", "-l", "warning", "-n", f"{queue}@%h"])
