"""The dashboard's HTTP contract (issue 10, section 4), over HTTP to a real uvicorn server.

Actions are POST only, need the token, an Origin naming this host and a known Host;
a read-only dashboard refuses them all; every response carries the security headers.
Against a real redis-server, with dead letters made by a real ``isopool worker``.
"""

from __future__ import annotations

import pytest

from tests._redis import free_port
from tests.conftest import wait_for

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

TOKEN = "dashboard-test-token-0123"
FAIL = "tests._tasks:raise_value_error"
ORIGIN: dict[str, str] = {}  # filled in by the ``served`` fixture: this server's origin


@pytest.fixture
def served():
    """Serve dashboards with uvicorn in a thread on 127.0.0.1; each is shut down after."""
    import threading

    import uvicorn

    from isopool._dist.dashboard import create_app

    servers, clients = [], []
    port = free_port()  # one server per test: its origin is known before it starts
    ORIGIN["origin"] = f"http://127.0.0.1:{port}"

    def serve(queue, token=TOKEN):
        app = create_app(queue.redis, url=queue.url, token=token)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
        thread.start()
        servers.append((server, thread))
        assert wait_for(lambda: server.started, timeout=30)
        client = httpx.Client(base_url=ORIGIN["origin"], timeout=30)
        clients.append(client)
        return client

    try:
        yield serve
    finally:
        for client in clients:
            client.close()
        for server, thread in servers:
            server.should_exit = True
            thread.join(30)


@pytest.fixture
def client_for(served):
    return served


@pytest.fixture
def dead(queues, processes):
    """A queue with one dead letter (a job that failed with max_retries=0); no worker left."""
    queue = queues()
    job = queue.options(restart="transient", max_retries=0).enqueue(FAIL, "x")
    worker = processes.worker(queue.url, queue.name)
    assert wait_for(lambda: job.status() == "dead", timeout=30)
    worker.stop()
    (entry,) = queue.redis.xrange(f"{queue.prefix}:dead")
    return queue, job, entry[0].decode()


def requeue_url(queue, entry):
    return f"/api/queues/{queue.name}/dead/{entry}/requeue"


@pytest.mark.redis
def test_requeue_post_without_token_is_refused(dead, client_for):
    """A POST with the right Origin but no token is 403, and the job stays dead."""
    queue, job, entry = dead
    reply = client_for(queue).post(requeue_url(queue, entry), headers=ORIGIN)
    assert reply.status_code == 403
    assert "token" in reply.json()["error"]
    assert job.status() == "dead"


@pytest.mark.redis
def test_requeue_post_with_wrong_token_is_refused(dead, client_for):
    """A wrong token is 403, and the job stays dead."""
    queue, job, entry = dead
    headers = {**ORIGIN, "x-isopool-token": TOKEN + "x"}
    assert client_for(queue).post(requeue_url(queue, entry), headers=headers).status_code == 403
    assert job.status() == "dead"


@pytest.mark.redis
def test_action_get_is_405_and_changes_nothing(dead, client_for):
    """A GET of an action URL (a link, an <img>, a prefetch) is 405, even with the token."""
    queue, job, entry = dead
    headers = {**ORIGIN, "x-isopool-token": TOKEN}
    client = client_for(queue)
    for action in ("requeue", "delete"):
        url = f"/api/queues/{queue.name}/dead/{entry}/{action}"
        assert client.get(url, headers=headers).status_code == 405
    assert client.get(f"/api/queues/{queue.name}/jobs/{job.id}/cancel").status_code == 405
    assert job.status() == "dead"
    assert queue.redis.xlen(f"{queue.prefix}:dead") == 1


@pytest.mark.redis
@pytest.mark.parametrize(
    "origin",
    [None, "http://evil.example", "http://127.0.0.1:1", "null"],
    ids=["no-origin", "foreign-origin", "other-port", "null-origin"],
)
def test_requeue_from_another_origin_is_refused(dead, client_for, origin):
    """With the token but a missing or foreign Origin, a POST is 403 (CSRF)."""
    queue, job, entry = dead
    headers = {"x-isopool-token": TOKEN} | ({} if origin is None else {"origin": origin})
    assert client_for(queue).post(requeue_url(queue, entry), headers=headers).status_code == 403
    assert job.status() == "dead"


@pytest.mark.redis
def test_cross_site_fetch_metadata_is_refused(dead, client_for):
    """Sec-Fetch-Site other than same-origin is 403, whatever else the request says."""
    queue, job, entry = dead
    headers = {**ORIGIN, "x-isopool-token": TOKEN, "sec-fetch-site": "same-site"}
    assert client_for(queue).post(requeue_url(queue, entry), headers=headers).status_code == 403
    assert job.status() == "dead"


@pytest.mark.redis
def test_requeue_with_token_queues_the_job_and_drops_its_letter(dead, client_for):
    """With the token and this Origin, requeue puts the job back and removes its letter."""
    queue, job, entry = dead
    headers = {**ORIGIN, "x-isopool-token": TOKEN}
    reply = client_for(queue).post(requeue_url(queue, entry), headers=headers)
    assert reply.status_code == 200, reply.text
    assert job.status() == "queued"
    assert queue.redis.xlen(f"{queue.prefix}:dead") == 0


@pytest.mark.redis
def test_delete_with_token_removes_the_letter_and_its_job(dead, client_for):
    """Delete removes the dead letter and the dead job's hash."""
    queue, job, entry = dead
    headers = {**ORIGIN, "x-isopool-token": TOKEN}
    url = f"/api/queues/{queue.name}/dead/{entry}/delete"
    assert client_for(queue).post(url, headers=headers).status_code == 200
    assert job.status() == "missing"
    assert queue.redis.xlen(f"{queue.prefix}:dead") == 0


@pytest.mark.redis
def test_cancel_with_token_cancels_a_waiting_job(queues, client_for):
    """Cancel of a scheduled job with the token ends it at once."""
    queue = queues()
    job = queue.enqueue_in(3600, "tests._tasks:echo", 1)
    headers = {**ORIGIN, "x-isopool-token": TOKEN}
    url = f"/api/queues/{queue.name}/jobs/{job.id}/cancel"
    assert client_for(queue).post(url, headers=headers).status_code == 200
    assert job.status() == "cancelled"


@pytest.mark.redis
def test_read_only_dashboard_refuses_every_action(queues, client_for):
    """Started without a token, the dashboard says read-only and refuses actions with 403."""
    queue = queues()
    job = queue.enqueue_in(3600, "tests._tasks:echo", 1)
    client = client_for(queue, token=None)
    assert client.get("/api/snapshot").json()["read_only"] is True
    url = f"/api/queues/{queue.name}/jobs/{job.id}/cancel"
    reply = client.post(url, headers={**ORIGIN, "x-isopool-token": ""})
    assert reply.status_code == 403
    assert "read-only" in reply.json()["error"]
    assert job.status() == "scheduled"


@pytest.mark.redis
def test_unknown_host_header_is_refused(queues, client_for):
    """A Host the dashboard was not told it is (DNS rebinding) gets 400, even for reads."""
    queue = queues()
    client = client_for(queue)
    rebound = {"host": f"evil.example:{client.base_url.port}"}
    assert client.get("/api/snapshot", headers=rebound).status_code == 400
    assert client.get("/api/snapshot").status_code == 200


@pytest.mark.redis
def test_bad_ids_and_unknown_queues_are_refused(queues, client_for):
    """An id that is not a stream entry or job id is 400; a queue that does not exist is 404."""
    queue = queues()
    client = client_for(queue)
    headers = {**ORIGIN, "x-isopool-token": TOKEN}
    assert client.post(requeue_url(queue, "1-0;DEL"), headers=headers).status_code == 400
    missing = f"/api/queues/nope/jobs/{'a' * 32}/cancel"
    assert client.post(missing, headers=headers).status_code == 404


@pytest.mark.redis
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/snapshot"])
def test_responses_carry_security_headers(queues, client_for, path):
    """Page, script and API: CSP without inline script, no framing, no sniffing, no cache."""
    queue = queues()
    reply = client_for(queue).get(path)
    assert reply.status_code == 200
    csp = reply.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in reply.headers


def test_page_has_no_inline_script_and_no_inner_html():
    """The page's HTML has no inline script, and its script never assigns innerHTML."""
    from importlib import resources

    static = resources.files("isopool") / "_static"
    html = (static / "index.html").read_text()
    script = (static / "app.js").read_text()
    assert "<script>" not in html
    assert "onclick=" not in html
    assert "innerHTML" not in script.replace("never innerHTML", "")
    assert "insertAdjacentHTML" not in script


@pytest.mark.redis
def test_snapshot_says_503_when_redis_is_down(redis_server, queues, client_for):
    """With Redis gone, the API answers 503 with a message, and the server keeps serving."""
    queue = queues()
    client = client_for(queue)
    assert client.get("/api/snapshot").status_code == 200
    redis_server.kill()
    reply = client.get("/api/snapshot")
    assert reply.status_code == 503
    assert "cannot reach Redis" in reply.json()["error"]
    assert client.get("/").status_code == 200
