"""The Celery 5.7 app the benchmark runs: tests/interop/pyapp.py's app and its
`tasks.add`, with Celery's own defaults where pyapp tunes them for tests
(prefetch multiplier 4), no remote control or events, and the benchmark's
queue as the default queue so that `tasks_add.delay(x, y)` goes there.

With BENCH_RESULT_BACKEND set (`redis://...`: the benchmark's `redis`
section), results go to that backend instead of `rpc://`, kept one hour
(the client deletes its keys anyway).

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
if os.environ.get("BENCH_RESULT_BACKEND"):
    app.conf.update(
        result_backend=os.environ["BENCH_RESULT_BACKEND"],
        result_expires=3600,
    )
