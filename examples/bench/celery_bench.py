"""The Celery 5.7 app the benchmark runs: tests/interop/pyapp.py's app and its
`tasks.add`, with Celery's own defaults where pyapp tunes them for tests
(prefetch multiplier 4), no remote control or events, and the benchmark's
queue as the default queue so that `tasks_add.delay(x, y)` goes there.

With BENCH_RESULT_BACKEND set (`redis://...`: the benchmark's `redis`
section), results go to that backend instead of `rpc://`, kept one hour
(the client deletes its keys anyway).

With a Redis BROKER_URL (the `redis_broker` section), kombu's transport
options in its query (`?global_keyprefix=<prefix>`) become
`broker_transport_options`, so that Celery uses the keys the Rust side does.

Used as `celery -A celery_bench worker ...` and by celery_client.py, with
PYTHONPATH=examples/bench:tests/interop and BENCH_QUEUE set."""

import os

from pyapp import app, tasks_add  # noqa: F401  (tasks_add is `tasks.add`)


@app.task(name="tasks.sum_all")
def tasks_sum_all(values):
    """A chord body: the header's values come first (the canvas section)."""
    return sum(values)


app.conf.update(
    worker_prefetch_multiplier=4,  # Celery's default (pyapp uses 1 for tests)
    worker_enable_remote_control=False,  # no pidbox queue left behind
    worker_send_task_events=False,
    task_default_queue=os.environ.get("BENCH_QUEUE", "celery"),
)

# A Redis broker URL may carry kombu's transport options in its query, as
# the Rust side reads them (`redis://...?global_keyprefix=<prefix>`: the
# `redis_broker` section): Celery takes them as broker_transport_options.
_broker = os.environ.get("BROKER_URL", "")
if _broker.startswith(("redis://", "rediss://")) and "?" in _broker:
    from urllib.parse import parse_qsl, urlencode

    _base, _query = _broker.split("?", 1)
    _options, _kept = {}, []
    for _name, _value in parse_qsl(_query, keep_blank_values=True):
        if _name == "global_keyprefix":
            _options[_name] = _value
        elif _name == "visibility_timeout":
            _options[_name] = float(_value)
        else:
            _kept.append((_name, _value))
    _broker = _base + ("?" + urlencode(_kept) if _kept else "")
    app.conf.update(broker_url=_broker, broker_transport_options=_options)
    # `celery worker` copies BROKER_URL to CELERY_BROKER_URL, which wins.
    if "CELERY_BROKER_URL" in os.environ:
        os.environ["CELERY_BROKER_URL"] = _broker

if os.environ.get("BENCH_RESULT_BACKEND"):
    app.conf.update(
        result_backend=os.environ["BENCH_RESULT_BACKEND"],
        result_expires=3600,
    )
