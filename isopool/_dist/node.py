"""A node: serves named supervisors to other machines through Redis (``isopool node``).

Elixir reaches ``{MyApp.TaskSupervisor, :"worker1@host"}`` over distribution; isopool
reaches it through Redis, so a node needs only an outbound connection::

    isopool:nodes                 hash: node name -> JSON (supervisors and their
                                  options, isopool version, environment fingerprint,
                                  host, pid, start time)
    isopool:node:NAME:alive       a key with a time-to-live, renewed by the heartbeat;
                                  when it lapses the node is down
    queue  node.NAME.SUPERVISOR   one RedisQueue per supervisor: its own streams,
                                  leases and signed payloads, served by a QueueWorker

A call addressed to a node goes into that node's queue only, so it never runs on
another node. Workers of a node see ``ISOPOOL_NODE=NAME`` in their environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from .queue_worker import QueueWorker
from .redis_queue import JobOptions, RedisQueue

__all__ = ["NODES_KEY", "Node", "SupervisorSpec", "alive_key", "fingerprint", "queue_name"]

log = logging.getLogger(__name__)

NODES_KEY: Final = "isopool:nodes"
HEARTBEAT: Final = 1.0  # seconds between heartbeats
ALIVE_TTL: Final = 3.0  # seconds a heartbeat keeps the node alive (three missed beats)


def alive_key(node: str) -> str:
    """The key whose presence says node ``node`` is alive."""
    return f"isopool:node:{node}:alive"


def queue_name(node: str, supervisor: str) -> str:
    """The RedisQueue that carries calls to ``supervisor`` on ``node``."""
    return f"node.{node}.{supervisor}"


def fingerprint() -> str:
    """A hash of what this Python can import: its version, sys.path and distributions."""
    from importlib import metadata  # only nodes need it (~10 ms to import)

    digest = hashlib.sha256(sys.version.encode())
    for entry in sys.path:
        digest.update(entry.encode() + b"\0")
    for dist in sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()):
        digest.update(dist.encode() + b"\0")
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor a node serves: its name and the default options of its children.

    Parsed from ``Name[:key=value,...]``, e.g. ``MyApp.TaskSupervisor:restart=transient``.
    """

    name: str
    options: Mapping[str, object]

    @classmethod
    def parse(cls, text: str) -> SupervisorSpec:
        """Parse ``Name[:key=value,...]``; raise ValueError naming what is wrong."""
        name, _, rest = text.partition(":")
        if not name:
            raise ValueError(f"--supervisor needs a name, got {text!r}")
        options: dict[str, object] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--supervisor option {item!r} is not key=value")
            options[key.strip()] = _parse_value(value.strip())
        JobOptions.build(**options)  # validate now, with a clear message
        return cls(name, options)


def _parse_value(value: str) -> object:
    if value.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class Node:
    """Serve ``supervisors`` under the node name ``name`` until ``stop()``.

    Args:
        name: The node's name; one live node per name.
        url: The Redis URL.
        supervisors: What to serve.
        workers: Worker processes per supervisor (default: one per CPU).
        secret / secret_file: The signing secret (see ``RedisQueue``).
        lease: The job lease in seconds.
        drain: On stop, seconds to let running calls finish before handing them back.
        cluster: The URL names a Redis Cluster (implied by ``redis+cluster://``). The
            registry's keys (``isopool:nodes``, ``isopool:node:NAME:alive``) are only
            ever used one at a time, so they need no common hash tag.

    Raises:
        ValueError: another live node has this name, or a bad option.
    """

    def __init__(
        self,
        name: str,
        url: str,
        supervisors: list[SupervisorSpec],
        *,
        workers: int | None = None,
        secret: str | bytes | None = None,
        secret_file: str | None = None,
        lease: float = 30.0,
        drain: float = 30.0,
        cluster: bool = False,
    ) -> None:
        if not name or any(c in name for c in "{}:. "):
            raise ValueError(f"node name must be a word without '{{}}:. ', got {name!r}")
        if not supervisors:
            raise ValueError("a node must serve at least one --supervisor")
        self.name = name
        os.environ["ISOPOOL_NODE"] = name  # seen by every worker process of this node
        self._stopping = threading.Event()
        self._queues = [
            RedisQueue(
                url,
                queue_name(name, spec.name),
                secret=secret,
                secret_file=secret_file,
                lease=lease,
                cluster=cluster,
            )
            for spec in supervisors
        ]
        self.redis: Any = self._queues[0].redis
        self._names = [spec.name for spec in supervisors]
        self._info = {
            "name": name,
            "supervisors": {spec.name: dict(spec.options) for spec in supervisors},
            "version": _version(),
            "fingerprint": fingerprint(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
        self._claim_name()
        self._workers = [QueueWorker(q, workers=workers, drain=drain) for q in self._queues]

    @property
    def queue_workers(self) -> list[QueueWorker]:
        """The QueueWorker serving each supervisor (their pools and job metrics)."""
        return list(self._workers)

    def _claim_name(self) -> None:
        token = f"{self._info['host']}:{self._info['pid']}"
        if not self.redis.set(alive_key(self.name), token, nx=True, ex=int(ALIVE_TTL)):
            holder = self.redis.get(alive_key(self.name))
            raise ValueError(
                f"a node named {self.name!r} is already running ({holder!r}); "
                "pick another --name or stop it first"
            )
        self._token = token
        self.redis.hset(NODES_KEY, self.name, json.dumps(self._info))

    def stop(self) -> None:
        """Stop taking calls; running ones finish or are handed back (safe in a handler)."""
        self._stopping.set()
        for worker in self._workers:
            worker.stop()

    def run(self) -> None:
        """Serve until ``stop()``: one thread per supervisor, the heartbeat here."""
        threads = [
            threading.Thread(target=w.run, name=f"isopool-node[{q.name}]", daemon=True)
            for w, q in zip(self._workers, self._queues, strict=True)
        ]
        for thread in threads:
            thread.start()
        log.info("node %r serving %s", self.name, ", ".join(self._names))
        try:
            while not self._stopping.wait(HEARTBEAT):
                self._beat()
                if not all(t.is_alive() for t in threads):
                    log.error("node %r: a supervisor's worker stopped; shutting down", self.name)
                    self.stop()
        finally:
            for thread in threads:
                thread.join(timeout=60)
            self._leave()

    def _beat(self) -> None:
        try:
            self.redis.set(alive_key(self.name), self._token, ex=int(ALIVE_TTL))
        except Exception as exc:  # Redis down: the node lapses; the workers retry
            log.warning("node %r: heartbeat failed: %s", self.name, exc)

    def _leave(self) -> None:
        try:
            if self.redis.get(alive_key(self.name)) == self._token.encode():
                self.redis.delete(alive_key(self.name))
            self.redis.hdel(NODES_KEY, self.name)
        except Exception as exc:
            log.warning("node %r: could not unregister: %s", self.name, exc)


def _version() -> str:
    from .._version import __version__

    return __version__
