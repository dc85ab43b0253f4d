"""The queue benchmark's jobs as a Celery app: Redis broker and Redis result backend.

``celery -A _bench_celery worker`` and the benchmark both import this module; the
Redis URL comes from ``BENCH_REDIS_URL`` (queue_bench.py starts its own server).
Settings are Celery's defaults (prefork, ``acks_late=False``, prefetch multiplier 4)
unless ``BENCH_CELERY_ACKS_LATE=1``, which turns on Celery's documented at-least-once
settings (``task_acks_late`` and ``task_reject_on_worker_lost``).
"""

from __future__ import annotations

import os

import _bench_tasks as t
from celery import Celery

URL = os.environ["BENCH_REDIS_URL"]
app = Celery("bench", broker=URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True  # silences a deprecation warning only
if os.environ.get("BENCH_CELERY_ACKS_LATE") == "1":
    app.conf.task_acks_late = True
    app.conf.task_reject_on_worker_lost = True


@app.task(name="echo")
def echo(value):
    return t.echo(value)


@app.task(name="burn_ms")
def burn_ms(ms):
    return t.burn_ms(ms)


@app.task(name="stamp")
def stamp():
    return t.stamp()


@app.task(name="whoami")
def whoami(seconds):
    return t.whoami(seconds)


@app.task(name="mark_sleep")
def mark_sleep(path, seconds):
    return t.mark_sleep(path, seconds)
