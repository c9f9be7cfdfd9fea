"""The Python Celery client of the benchmark (see examples/bench/celery.rs).

    python celery_client.py publish N     send N tasks (nobody consumes), time it
    python celery_client.py warm N W      N round trips, untimed
    python celery_client.py e2e N W       N round trips with W in flight, timed
    python celery_client.py seq N         N one-at-a-time round trips
    python celery_client.py burst N       N tasks sent at once, then every result, timed
    python celery_client.py chord N       chord(N tasks, tasks.sum_all), timed

Every task is `tasks_add.delay(i, 1)` to $BENCH_QUEUE; results come back
through `rpc://`, or through $BENCH_RESULT_BACKEND when set (Celery's Redis
backend), whose keys the client deletes once its timing is done. Prints one
JSON object on its last line. Celery publishes without publisher confirms by
default: that is what is measured."""

import json
import resource
import sys
import time
from collections import deque

from celery import chord, group
from celery_bench import app, tasks_add, tasks_sum_all

TIMEOUT = 120

# Task ids whose results are kept in a key-value backend, deleted at the end.
created = []
keeps_results = not app.conf.result_backend.startswith("rpc")


def sent(result):
    if keeps_results:
        created.append(result.id)
    return result


def forget_created():
    """Deletes the result keys of the tasks this client sent."""
    if not created:
        return
    keys = [app.backend.get_key_for_task(task_id) for task_id in created]
    for start in range(0, len(keys), 1000):
        app.backend.client.delete(*keys[start : start + 1000])


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def round_trips(n, window):
    pending = deque()
    count = 0
    while count < min(window, n):
        pending.append((count, sent(tasks_add.delay(count, 1))))
        count += 1
    while pending:
        i, result = pending.popleft()
        value = result.get(timeout=TIMEOUT)
        if value != i + 1:
            raise SystemExit(f"tasks.add({i}, 1) returned {value!r}")
        if count < n:
            pending.append((count, sent(tasks_add.delay(count, 1))))
            count += 1


def main():
    mode, n = sys.argv[1], int(sys.argv[2])
    window = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    # Connect (and declare the reply queue) before any timing.
    app.connection_for_write().ensure_connection()
    if keeps_results:
        app.backend.client.ping()
    out = {"mode": mode, "n": n}
    if mode == "publish":
        for i in range(min(200, n)):
            tasks_add.delay(i, 1)
        start, cpu0 = time.perf_counter(), cpu()
        for i in range(n):
            tasks_add.delay(i, 1)
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = cpu() - cpu0
    elif mode == "warm":
        round_trips(n, window)
    elif mode == "e2e":
        start, cpu0 = time.perf_counter(), cpu()
        round_trips(n, window)
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = cpu() - cpu0
    elif mode == "seq":
        latencies = []
        for i in range(n):
            start = time.perf_counter()
            value = sent(tasks_add.delay(i, 1)).get(timeout=TIMEOUT)
            latencies.append((time.perf_counter() - start) * 1e3)
            if value != i + 1:
                raise SystemExit(f"tasks.add({i}, 1) returned {value!r}")
        out["latencies_ms"] = latencies
    elif mode == "burst":
        start, cpu0 = time.perf_counter(), cpu()
        results = [sent(tasks_add.delay(i, 1)) for i in range(n)]
        for i, result in enumerate(results):
            value = result.get(timeout=TIMEOUT)
            if value != i + 1:
                raise SystemExit(f"tasks.add({i}, 1) returned {value!r}")
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = cpu() - cpu0
    elif mode == "chord":
        start, cpu0 = time.perf_counter(), cpu()
        header = group(tasks_add.s(i, 1) for i in range(n))
        result = sent(chord(header)(tasks_sum_all.s()))
        value = result.get(timeout=TIMEOUT)
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = cpu() - cpu0
        if value != n * (n + 1) // 2:
            raise SystemExit(f"the chord's body returned {value!r}")
        parent = getattr(result, "parent", None)
        for part in getattr(parent, "results", None) or []:
            created.append(part.id)
    else:
        raise SystemExit(f"unknown mode {mode}")
    forget_created()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
