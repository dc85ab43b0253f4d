"""The queue benchmark's jobs as Dramatiq actors: Redis broker, Results middleware on Redis.

``dramatiq _bench_dramatiq`` and the benchmark both import this module; the Redis URL
comes from ``BENCH_REDIS_URL``. Everything is Dramatiq's default except that the
actors store their results (``store_results=True`` with the Results middleware's Redis
backend), because every row of the benchmark waits for results.
"""

from __future__ import annotations

import os

import _bench_tasks as t
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

URL = os.environ["BENCH_REDIS_URL"]
broker = RedisBroker(url=URL)
backend = RedisBackend(url=URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def echo(value):
    return t.echo(value)


@dramatiq.actor(store_results=True)
def burn_ms(ms):
    return t.burn_ms(ms)


@dramatiq.actor(store_results=True)
def stamp():
    return t.stamp()


@dramatiq.actor(store_results=True)
def whoami(seconds):
    return t.whoami(seconds)


@dramatiq.actor(store_results=True)
def mark_sleep(path, seconds):
    return t.mark_sleep(path, seconds)


@dramatiq.actor(store_results=True)
def burn_ms_span(ms):
    return t.burn_ms_span(ms)
