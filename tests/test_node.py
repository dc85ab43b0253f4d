"""Remote nodes through a real redis-server (issue 4, test 8): ``isopool node`` processes on
loopback serve named supervisors; ``isopool.connect`` calls them by (supervisor, node)."""

from __future__ import annotations

import signal

import pytest

import isopool
from isopool import NodeDownError, Reply, UnknownSupervisorError
from tests import _tasks
from tests._redis import SECRET
from tests.conftest import pid_alive, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.remote]

SUP = "MyApp.Sup"
IDENTITY = "tests._tasks:node_identity"


@pytest.fixture
def cluster(redis_server):
    """A cluster handle on the test's Redis, with the nodes' secret; closed after."""
    handle = isopool.connect(redis_server.url, secret=SECRET)
    try:
        yield handle
    finally:
        handle.redis.close()


def alive_nodes(cluster) -> set[str]:
    return {info.name for info in cluster.nodes() if info.alive}


def start_node(processes, redis_server, cluster, name, supervisors=(SUP,), **kwargs):
    """Start ``isopool node --name NAME`` and wait until it has registered and beats."""
    node = processes.node(redis_server.url, name, list(supervisors), **kwargs)
    assert wait_for(lambda: name in alive_nodes(cluster), timeout=30), node.log()
    return node


@pytest.fixture
def two_nodes(processes, redis_server, cluster):
    """Nodes n1 and n2, both serving MyApp.Sup, alive and registered."""
    n1 = processes.node(redis_server.url, "n1", [SUP])
    n2 = processes.node(redis_server.url, "n2", [SUP, "Other.Sup"])
    ready = wait_for(lambda: alive_nodes(cluster) == {"n1", "n2"}, timeout=30)
    assert ready, n1.log() + n2.log()
    return {"n1": n1, "n2": n2}


def test_remote_call_by_supervisor_name_runs_on_named_node(cluster, two_nodes):
    """A call to MyApp.Sup on n1 runs in a process of n1; the same call on n2, of n2."""
    for name, node in two_nodes.items():
        task = cluster.supervisor(SUP, node=name).async_(IDENTITY)
        reported_node, pid = task.await_(30)
        assert reported_node == name
        assert pid in node.tree()


def test_remote_call_by_tuple_address_runs_on_named_node(cluster, two_nodes):
    """Elixir's {Name, node} spelling, ("MyApp.Sup", "n2"), addresses the same supervisor."""
    task = cluster.supervisor((SUP, "n2")).async_(IDENTITY)
    reported_node, pid = task.await_(30)
    assert reported_node == "n2"
    assert pid in two_nodes["n2"].tree()


def test_remote_cluster_nodes_lists_both_nodes_alive(cluster, two_nodes):
    """cluster.nodes() lists every node with its supervisors, pid and a live heartbeat."""
    infos = {info.name: info for info in cluster.nodes()}
    assert set(infos) == {"n1", "n2"}
    assert all(info.alive for info in infos.values())
    assert set(infos["n1"].supervisors) == {SUP}
    assert set(infos["n2"].supervisors) == {SUP, "Other.Sup"}
    assert infos["n1"].pid == two_nodes["n1"].pid
    assert infos["n1"].version == isopool.__version__


def test_remote_unknown_supervisor_raises_error_naming_both(cluster, two_nodes):
    """A supervisor the node does not run: UnknownSupervisorError naming it and the node."""
    with pytest.raises(UnknownSupervisorError) as info:
        cluster.supervisor("No.Such.Sup", node="n1")
    assert "No.Such.Sup" in str(info.value)
    assert "'n1'" in str(info.value)


def test_remote_supervisor_on_other_node_only_raises_unknown_supervisor(cluster, two_nodes):
    """Other.Sup runs on n2 only: addressing it on n1 is an error, never a silent reroute."""
    with pytest.raises(UnknownSupervisorError, match=r"Other\.Sup"):
        cluster.supervisor(("Other.Sup", "n1"))
    task = cluster.supervisor(("Other.Sup", "n2")).async_(IDENTITY)
    assert task.await_(30)[0] == "n2"


def test_remote_unregistered_node_raises_node_down_error(cluster, two_nodes):
    """A node that never registered is not alive: NodeDownError at once."""
    with pytest.raises(NodeDownError, match="n3"):
        cluster.supervisor(SUP, node="n3")


@pytest.mark.slow
def test_remote_killed_node_call_raises_node_down_error(cluster, two_nodes):
    """Once a SIGKILLed node's heartbeat lapses, calls to it raise NodeDownError."""
    held = cluster.supervisor(SUP, node="n1")
    two_nodes["n1"].kill()
    assert wait_for(lambda: "n1" not in alive_nodes(cluster), timeout=30)
    assert {info.name: info.alive for info in cluster.nodes()} == {"n1": False, "n2": True}
    with pytest.raises(NodeDownError, match="n1"):
        cluster.supervisor(SUP, node="n1")
    with pytest.raises(NodeDownError, match="n1"):
        held.async_(IDENTITY)
    assert cluster.supervisor(SUP, node="n2").async_(IDENTITY).await_(30)[0] == "n2"


@pytest.mark.slow
def test_remote_node_killed_mid_task_await_raises_node_down_error(
    processes, redis_server, cluster, tmp_path
):
    """A node dying mid-task: await_ raises NodeDownError and the job is cancelled."""
    node = start_node(processes, redis_server, cluster, "n1")
    pid_file = tmp_path / "pid"
    task = cluster.supervisor(SUP, node="n1").async_("tests._tasks:write_then_hang", str(pid_file))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    job_pid = int(pid_file.read_text())
    node.kill()
    assert wait_for(lambda: not pid_alive(job_pid), timeout=10)
    with pytest.raises(NodeDownError, match="went down"):
        task.await_(60)
    assert task.job.info().get("cancel") == "1"


def test_remote_task_exception_comes_back_with_own_type(cluster, processes, redis_server):
    """A remote task's exception is raised by await_ as itself."""
    start_node(processes, redis_server, cluster, "n1")
    task = cluster.supervisor(SUP, node="n1").async_("tests._tasks:raise_value_error", "far")
    with pytest.raises(ValueError, match="far"):
        task.await_(30)


def test_remote_yield_returns_ok_reply(cluster, processes, redis_server):
    """yield_ gives Reply("ok", value) for a finished remote task."""
    start_node(processes, redis_server, cluster, "n1")
    task = cluster.supervisor(SUP, node="n1").async_("tests._tasks:add", 20, 22)
    assert task.yield_(30) == Reply("ok", 42)


def test_remote_shutdown_stops_running_task_process(cluster, processes, redis_server, tmp_path):
    """shutdown() of a running remote task stops its process on the node."""
    start_node(processes, redis_server, cluster, "n1")
    pid_file = tmp_path / "pid"
    task = cluster.supervisor(SUP, node="n1").async_("tests._tasks:write_then_hang", str(pid_file))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    task.shutdown()
    assert wait_for(lambda: not pid_alive(int(pid_file.read_text())), timeout=30)
    assert task.job.status() == "cancelled"


def test_remote_shutdown_of_running_task_returns_none(cluster, processes, redis_server, tmp_path):
    """As locally: shutdown() of a task still running returns None (no reply raced in)."""
    start_node(processes, redis_server, cluster, "n1")
    pid_file = tmp_path / "pid"
    task = cluster.supervisor(SUP, node="n1").async_("tests._tasks:write_then_hang", str(pid_file))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    assert task.shutdown() is None


@pytest.mark.slow
def test_remote_transient_supervisor_start_child_retries_until_success(
    cluster, processes, redis_server, tmp_path
):
    """A node's supervisor declared restart=transient retries a failing child to success."""
    start_node(processes, redis_server, cluster, "n1", [f"{SUP}:restart=transient,backoff=0.1"])
    runs = tmp_path / "runs"
    child = cluster.supervisor(SUP, node="n1").start_child(
        "tests._tasks:fail_n_times", str(runs), 2, "third time"
    )
    assert child.await_(60) == "third time"
    assert _tasks.runs(runs) == 3


@pytest.mark.slow
def test_node_sigterm_hands_back_running_task_after_drain(
    cluster, processes, redis_server, tmp_path
):
    """SIGTERM to a node with a running task exits after --drain seconds, not --lease."""
    node = processes.spawn(
        [
            "node",
            *("--name", "n1", "--redis", redis_server.url, "--supervisor", SUP),
            *("--workers", "1", "--lease", "60", "--drain", "0.5"),
        ]
    )
    assert wait_for(lambda: "n1" in alive_nodes(cluster), timeout=30), node.log()
    pid_file = tmp_path / "pid"
    task = cluster.supervisor(SUP, node="n1").async_("tests._tasks:write_then_hang", str(pid_file))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    node.popen.send_signal(signal.SIGTERM)
    try:
        assert wait_for(lambda: node.popen.poll() is not None, timeout=5)  # 10x the drain
    finally:
        node.kill()
    assert task.job.status() == "queued"  # handed back, not lost
