"""Connections to Redis for the queue: a server or a cluster, and what their errors mean.

Kept apart from ``_redis_queue`` (the queue's protocol and API) because it is about
reaching Redis at all: which client a URL needs (``redis+cluster://`` means redis-py's
``RedisCluster``), which database a URL names and what to say when the server has no
such database, which redis-py errors mean "not reachable right now" (worth a retry
until the caller's deadline) and which do not, and when Redis may forget a queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from .._errors import QueueUnavailableError

if TYPE_CHECKING:
    import redis

__all__ = ["SOCKET_TIMEOUT", "connect", "is_cluster_url"]

log = logging.getLogger(__name__)

SOCKET_TIMEOUT: Final = 30.0  # the longest any one Redis reply may take (s)


_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in _CLUSTER_SCHEMES


def _is_cluster_client(client: object) -> bool:
    if client is None:
        return False
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def connect(
    url: str,
    *,
    cluster: bool = False,
    socket_timeout: float = SOCKET_TIMEOUT,
    nodes: list[Any] | None = None,
) -> Any:  # noqa: ANN401 - redis.Redis or RedisCluster
    """A client for ``url``: ``redis.Redis``, or ``RedisCluster`` for a cluster URL."""
    try:
        import redis
        from redis.cluster import RedisCluster
    except ImportError as exc:
        raise ImportError(
            "isopool's Redis queue needs redis-py: pip install 'isopool[redis]'"
        ) from exc
    scheme, sep, rest = url.partition("://")
    plain = f"{_CLUSTER_SCHEMES.get(scheme.lower(), scheme)}{sep}{rest}"
    options: dict[str, Any] = {
        "socket_connect_timeout": min(5.0, socket_timeout),
        "socket_timeout": socket_timeout,
    }
    if not (cluster or is_cluster_url(url)):
        return redis.Redis.from_url(plain, health_check_interval=10, **options)
    db = _database(plain)
    if db not in (None, 0):
        raise ValueError(
            f"a Redis Cluster has only database 0, but the URL {_redact(url)} asks for "
            f"database {db}"
        )
    # Failover: a dead master's connections fail, the client re-reads the slot map and
    # retries; our own retries (RedisQueue.retrying, the worker loop) cover the rest.
    if nodes:
        from redis.cluster import ClusterNode

        # redis-py leaves ClusterNode.__init__ unannotated.
        options["startup_nodes"] = [ClusterNode(n.host, n.port) for n in nodes]  # type: ignore[no-untyped-call]
    return RedisCluster.from_url(plain, **options)


def _database(url: str) -> int | None:
    """The database number in ``url`` (its path or ``?db=``), or None."""
    from urllib.parse import parse_qs, urlparse

    parsed = urlparse(url)
    raw = parse_qs(parsed.query).get("db", [parsed.path.strip("/")])[0]
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


@contextmanager
def _naming_database(url: str) -> Iterator[None]:
    """Turn a SELECT the server refuses into a ValueError naming the database number."""
    import redis

    try:
        yield
    except redis.ResponseError as exc:
        if "DB index is out of range" not in str(exc):
            raise
        raise ValueError(
            f"the Redis at {_redact(url)} has no database {_database(url)} (the server's "
            "'databases' setting bounds the number, 16 by default): use another "
            "number in the URL or raise that setting"
        ) from exc


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """redis-py's errors that mean "not reachable right now", cluster ones included."""
    import redis
    from redis import exceptions as e

    return (
        redis.ConnectionError,
        redis.TimeoutError,
        e.ClusterDownError,  # a master failed and no replica took over yet
        e.TryAgainError,  # a slot is being moved
        e.RedisClusterException,  # no node answers, or a slot has no node
        e.ClusterError,  # the cluster client ran out of redirections
        e.MovedError,  # only from a node's own client (``replicated``): the slot moved
    )


def _refused(exc: BaseException) -> bool:
    """Whether Redis refused our credentials (no retry will help)."""
    import redis

    # AuthorizationError (a refused ACL) is newer than redis-py 5.0.
    refused = getattr(redis.exceptions, "AuthorizationError", redis.AuthenticationError)
    return isinstance(exc.__cause__, redis.AuthenticationError | refused)


def _state_lost(exc: QueueUnavailableError) -> bool:
    """Whether ``exc`` says Redis lost the queue's state (not worth a retry)."""
    return "lost the state" in str(exc)


def _warn_if_volatile(r: redis.Redis, name: str) -> None:
    try:
        config = r.config_get("appendonly")
        config.update(r.config_get("save"))
    except Exception:  # CONFIG may be refused to an ACL user: then we cannot tell
        return
    if config.get("appendonly") in ("no", b"no") and not config.get("save"):
        log.warning(
            "queue %r: Redis persistence is off (no AOF, no RDB snapshots): a restart of "
            "the server loses every queued job; enable appendonly for a durable queue",
            name,
        )


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
