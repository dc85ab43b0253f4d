"""Shared fixtures for the Redis tests: a real redis-server, queues, and CLI processes.

Every redis-server is started per test, in the foreground, as a child of the test
runner, on 127.0.0.1 with a free port, and is always terminated and reaped; so are the
``isopool worker`` and ``isopool node`` processes a test starts (each leads its own
process group, so a test can SIGKILL or SIGSTOP the whole worker at once).

``redis_cluster`` is the exception to "per test": six cluster-enabled redis-servers
(three masters, three replicas) take a few seconds to form, so one cluster serves a
whole test module, and is always terminated and reaped after it.

tests/conftest.py loads this module as a plugin, so every test can ask for them by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import descendants

REPO = Path(__file__).resolve().parents[1]
SECRET = "isopool-tests-secret-0123456789abcdef"
_READY_TIMEOUT = 15.0  # seconds for redis-server to answer PING (it takes ~10 ms)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique(prefix: str = "q") -> str:
    """A name no other test (or xdist worker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _reap(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate ``proc`` if it runs, SIGKILL it after ``timeout`` s, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout)


class RedisServer:
    """One redis-server on 127.0.0.1: started, killed and restarted on the same port."""

    def __init__(self, directory: Path, *, appendonly: bool = False, tls: bool = False) -> None:
        self.dir = directory
        self.appendonly = appendonly
        self.tls = tls
        self.tls_port: int | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """A rediss:// URL that verifies the server against the test's own CA."""
        assert self.tls_port is not None
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.dir / 'cert.pem'}"

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not on PATH: cannot make a TLS certificate")
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"),
                *("-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _args(self, port: int) -> list[str]:
        args = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--save",
            "",
        ]
        if self.tls:
            args += ["--tls-port", str(self.tls_port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.dir / "cert.pem")]
            args += ["--tls-key-file", str(self.dir / "key.pem")]
            args += ["--tls-ca-cert-file", str(self.dir / "cert.pem")]
        if self.appendonly:
            return [*args, "--appendonly", "yes", "--appendfsync", "always"]
        return [*args, "--appendonly", "no"]

    def start(self, port: int | None = None) -> RedisServer:
        """Start on ``port`` (default: a free one, retried if another process took it)."""
        if self.tls and not (self.dir / "cert.pem").exists():
            self._make_certificate()
        for _attempt in range(1 if port is not None else 5):
            chosen = port if port is not None else free_port()
            if self.tls and (port is None or self.tls_port is None):
                self.tls_port = free_port()
            proc = subprocess.Popen(
                self._args(chosen),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if _answers_ping(proc, chosen, _READY_TIMEOUT):
                self.proc, self.port = proc, chosen
                self.starts += 1
                return self
            _reap(proc)
        raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save) and reap it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        """Start again on the same port, with the same directory and persistence."""
        assert self.port is not None
        self.start(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            _reap(self.proc)

    def client(self):  # -> redis.Redis
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)


def _answers_ping(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False  # e.g. the port was taken
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers (``appendonly=True``: AOF with fsync always; ``tls=True``: also a
    TLS port with a self-signed certificate); all are terminated and reaped after the test."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (CI installs Debian's redis-server package)")
    pytest.importorskip("redis", reason="redis-py is not installed: pip install 'isopool[redis]'")
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = False, tls: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, appendonly=appendonly, tls=tls)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """A redis-server without persistence, on 127.0.0.1 and a free port, for this test."""
    return redis_factory()


@pytest.fixture
def queues(redis_server: RedisServer) -> Iterator[Callable[..., object]]:
    """Make RedisQueues (unique name, the test secret) on ``redis_server``; all closed after."""
    import isopool

    made: list[isopool.RedisQueue] = []

    def make(name: str | None = None, *, url: str | None = None, **kwargs: object):
        kwargs.setdefault("secret", SECRET)
        queue = isopool.RedisQueue(url or redis_server.url, name or unique(), **kwargs)
        made.append(queue)
        return queue

    try:
        yield make
    finally:
        for queue in made:
            queue.close()


class Proc:
    """An ``isopool`` CLI process leading its own process group, with its log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log_path = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tree(self) -> set[int]:
        """The process and its live descendants (the fork server and job processes)."""
        return {self.pid} | descendants(self.pid)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the process group this process leads."""
        os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the group and every descendant (jobs lead groups of their own); reap."""
        tree = descendants(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGCONT, SIGTERM and wait; SIGKILL whatever is left; reap. The exit code."""
        tree = descendants(self.pid)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.signal_group(signal.SIGCONT)
            self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        code = self.popen.poll()
        for pid in tree | descendants(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)
        return code


class Processes:
    """Starts ``isopool worker`` and ``isopool node`` processes; the fixture stops them all."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.started: list[Proc] = []

    def env(
        self, extra: dict[str, str] | None = None, secret: str | None = SECRET
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISOPOOL_")}
        if secret is not None:
            env["ISOPOOL_SECRET"] = secret
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def spawn(
        self, args: list[str], env: dict[str, str] | None = None, secret: str | None = SECRET
    ) -> Proc:
        """Start ``python -m isopool ARGS`` in the repository, in a new session, logging
        to a file; ``secret`` goes in ISOPOOL_SECRET (None: no secret in the environment)."""
        log = self.dir / f"isopool-{len(self.started)}-{args[0]}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "isopool", *args],
                cwd=REPO,
                env=self.env(env, secret),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(popen, log)
        self.started.append(proc)
        return proc

    def worker(
        self,
        url: str,
        queue: str,
        *,
        workers: int = 1,
        lease: float = 30.0,
        drain: float = 1.0,
        env: dict[str, str] | None = None,
        secret: str | None = SECRET,
        secret_file: Path | None = None,
        key_id: str | None = None,
    ) -> Proc:
        """``isopool worker --redis URL --queue NAME`` with the test secret."""
        args = ["--redis", url, "--queue", queue, "--workers", str(workers)]
        args += ["--lease", str(lease), "--drain", str(drain)]
        if secret_file is not None:
            args += ["--secret-file", str(secret_file)]
        if key_id is not None:
            args += ["--key-id", key_id]
        return self.spawn(["worker", *args], env, secret)

    def node(
        self,
        url: str,
        name: str,
        supervisors: list[str],
        *,
        workers: int = 1,
        lease: float = 3.0,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """``isopool node --name NAME --redis URL --supervisor S ...`` with the test secret."""
        args = ["--name", name, "--redis", url, "--workers", str(workers), "--lease", str(lease)]
        for supervisor in supervisors:
            args += ["--supervisor", supervisor]
        return self.spawn(["node", *args], env)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def processes(tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> Iterator[Processes]:
    """Start isopool CLI processes; each is stopped (then killed) and reaped after the test."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# -- a real Redis Cluster -------------------------------------------------------------------

_CLUSTER_TIMEOUT = 60.0  # seconds for the cluster to form or fail over (~2 s each here)
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: a master silent this long is failed over


class RedisCluster:
    """Six redis-servers on loopback forming a cluster of three masters, three replicas.

    Each node has its own directory, ``nodes.conf`` and AOF. ``kill`` SIGKILLs one;
    ``restart`` brings it back (it rejoins, as a replica of whoever took its slots).
    """

    SIZE = 6

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        return subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--daemonize", "no", "--dir", str(node_dir), "--save", ""),
                *("--logfile", str(node_dir / "redis.log")),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                *("--appendonly", "yes", "--appendfsync", "everysec"),
                # Sync a new replica at once (the default waits 5 s for more), and let a
                # replica take over however long its master has been silent.
                *("--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> RedisCluster:
        """Start the six nodes, create the cluster, and wait until every node says ok."""
        while len(self.ports) < self.SIZE:
            port = free_port()
            proc = self._spawn(port)
            if _answers_ping(proc, port, _READY_TIMEOUT):
                self.ports.append(port)
                self.procs[port] = proc
            else:
                _reap(proc)
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create"),
                *(f"127.0.0.1:{p}" for p in self.ports),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        if not (self.wait_ok(self.ports) and self.wait_synced()):
            raise RuntimeError(f"the cluster did not form; see the logs under {self.dir}")
        return self

    def wait_synced(self, timeout: float = _CLUSTER_TIMEOUT) -> bool:
        """Wait until every live replica's link to its master is up (it has its data)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = []
            for port in self.live():
                done = subprocess.run(
                    ["redis-cli", "-p", str(port), "info", "replication"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                infos.append(done.stdout)
            replicas = [i for i in infos if "role:slave" in i]
            if len(replicas) == self.SIZE // 2 and all(
                "master_link_status:up" in i for i in replicas
            ):
                return True
            time.sleep(0.05)
        return False

    def info(self, port: int, *args: str) -> str:
        """``redis-cli -p PORT cluster ARGS`` (e.g. info, nodes), or "" if it does not answer."""
        try:
            done = subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", *args],
                capture_output=True,
                text=True,
                timeout=5,
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout if done.returncode == 0 else ""

    def masters(self, port: int | None = None) -> dict[int, list[tuple[int, int]]]:
        """Each live master's port and its slot ranges, as node ``port`` sees them."""
        port = port if port is not None else self.live()[0]
        out: dict[int, list[tuple[int, int]]] = {}
        for line in self.info(port, "nodes").splitlines():
            fields = line.split()
            if len(fields) < 8 or "master" not in fields[2] or "fail" in fields[2]:
                continue
            ranges = []
            for item in fields[8:]:
                if item.startswith("["):
                    continue  # a slot being migrated
                low, _, high = item.partition("-")
                ranges.append((int(low), int(high or low)))
            if ranges:
                out[int(fields[1].split(":")[1].split("@")[0])] = ranges
        return out

    def master_of(self, slot: int, port: int | None = None) -> int | None:
        """The port of the master serving ``slot``."""
        for master, ranges in self.masters(port).items():
            if any(low <= slot <= high for low, high in ranges):
                return master
        return None

    def live(self) -> list[int]:
        return [p for p in self.ports if self.procs[p].poll() is None]

    def wait_ok(
        self, ports: list[int], timeout: float = _CLUSTER_TIMEOUT, without: int | None = None
    ) -> bool:
        """Wait until every node of ``ports`` says cluster_state:ok and sees 3 masters
        (none of them ``without``: a killed master whose replica must take over)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.info(p, "info") for p in ports]
            views = [self.masters(p) for p in ports]
            if all("cluster_state:ok" in s for s in states) and all(
                len(v) == 3 and without not in v for v in views
            ):
                return True
            time.sleep(0.05)
        return False

    def kill(self, port: int) -> None:
        """SIGKILL node ``port`` and reap it."""
        self.procs[port].kill()
        self.procs[port].wait(10)

    def restart(self, port: int) -> None:
        """Start node ``port`` again with its nodes.conf and AOF; it rejoins the cluster."""
        proc = self._spawn(port)
        if not _answers_ping(proc, port, _READY_TIMEOUT):
            _reap(proc)
            raise RuntimeError(f"cluster node {port} did not restart")
        self.procs[port] = proc

    def stop(self) -> None:
        for proc in self.procs.values():
            _reap(proc)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real Redis Cluster (3 masters, 3 replicas) on loopback, one per test module;
    every node is terminated and reaped after the module."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli are not on PATH (CI installs Debian's redis-server)")
    pytest.importorskip("redis", reason="redis-py is not installed: pip install 'isopool[redis]'")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
