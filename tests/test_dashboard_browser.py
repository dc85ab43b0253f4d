"""The dashboard in a real browser (issue 10, section 4): headless Chromium via Selenium.

One redis-server, one ``isopool dashboard`` process (token from the environment, no
signing secret) and one browser serve the whole module; each test uses a queue of its
own and real ``isopool worker`` processes. Waits poll the page's DOM with a deadline
(WebDriverWait), never sleep. Without Debian's chromium and chromium-driver these tests
skip, unless ``ISOPOOL_REQUIRE_BROWSER`` is set (CI sets it): then they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time

import pytest

from tests._redis import SECRET, Processes, RedisServer, free_port, unique
from tests.conftest import descendants, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "browser-test-token-4242"
FAIL = "tests._tasks:raise_value_error"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
WAIT = 30.0  # seconds any one wait on the page may take (it polls every 1.5 s)

pytestmark = [pytest.mark.redis, pytest.mark.slow]
SHARED: list[int] = []  # pids of the module's own processes (redis, dashboard, chromedriver)


@pytest.fixture(autouse=True)
def no_orphans():
    """As conftest's no_orphans, except for the module's shared processes and their children.

    Chromium starts and ends renderer processes as it pleases, below chromedriver.
    """

    def ours():
        shared = set(SHARED).union(*(descendants(pid) for pid in SHARED))
        return descendants() - shared

    before = ours()
    yield
    if wait_for(lambda: not (ours() - before), timeout=10.0):
        return
    leaked = ours() - before
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pytest.fail(f"processes left behind by the test: {sorted(leaked)}")


def _missing(what: str) -> None:
    if os.environ.get("ISOPOOL_REQUIRE_BROWSER"):
        pytest.fail(f"ISOPOOL_REQUIRE_BROWSER is set but {what}")
    pytest.skip(what)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    SHARED.append(server.proc.pid)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    started = Processes(tmp_path_factory.mktemp("procs"))
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def board(redis_url, procs):
    """The URL of an ``isopool dashboard`` process, started with a token and no secret."""
    pytest.importorskip("uvicorn")
    import httpx

    port = free_port()
    proc = procs.spawn(
        ["dashboard", "--redis", redis_url, "--port", str(port)],
        env={"ISOPOOL_DASHBOARD_TOKEN": TOKEN},
        secret=None,
    )
    SHARED.append(proc.pid)
    url = f"http://127.0.0.1:{port}/"

    def answers():
        try:
            return httpx.get(url + "api/snapshot", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(answers, timeout=30), proc.log()
    assert "127.0.0.1" in proc.log()
    assert "loopback only" in proc.log()
    return url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module, with a fresh profile."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        _missing(
            "chromium and chromedriver are not installed (apt install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install 'isopool[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    SHARED.append(driver.service.process.pid)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def queue(redis_url):
    import isopool

    made = isopool.RedisQueue(redis_url, unique("board"), secret=SECRET)
    try:
        yield made
    finally:
        made.close()


def open_page(browser, board, queue=None):
    """Load the page (of one queue only) with no token remembered from an earlier test."""
    browser.get(board)
    browser.execute_script("sessionStorage.clear()")
    browser.get(board if queue is None else f"{board}?queue={queue.name}")


def text(browser, selector):
    """The text of the first element matching ``selector`` now (None if there is none).

    Read in one script call: the page redraws every poll, so a found element may be
    replaced before a second call reads it.
    """
    return browser.execute_script(
        "const n = document.querySelector(arguments[0]); return n ? n.textContent : null;",
        selector,
    )


def until(browser, predicate, message=""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda _driver: predicate(), message
    )


def count(browser, queue, kind):
    return text(browser, f'[data-queue="{queue.name}"] [data-count="{kind}"]')


def click(browser, selector):
    """Click the element now matching ``selector`` (found and clicked in one step)."""
    assert browser.execute_script(
        "const n = document.querySelector(arguments[0]); if (!n) return false; n.click(); "
        "return true;",
        selector,
    ), selector


def make_dead(queue, processes):
    """A dead letter in ``queue`` (a job failing with max_retries=0); its worker stopped."""
    job = queue.options(restart="transient", max_retries=0).enqueue(FAIL, "boom")
    worker = processes.worker(queue.url, queue.name)
    assert wait_for(lambda: job.status() == "dead", timeout=30), worker.log()
    worker.stop()
    return job


def test_page_shows_the_queue_counts(browser, board, queue):
    """Queued and scheduled jobs appear in the queue's counts."""
    for _ in range(2):
        queue.options(priority=0).enqueue("tests._tasks:echo", 1)
    queue.enqueue_in(3600, "tests._tasks:echo", 2)
    open_page(browser, board)
    until(browser, lambda: count(browser, queue, "queued") == "2", "queued count")
    assert count(browser, queue, "scheduled") == "1"
    assert count(browser, queue, "dead") == "0"
    assert "actions need the token" in text(browser, "#mode")


def test_page_updates_when_jobs_finish(browser, board, queue, processes):
    """With the page open, a worker finishes the jobs and the counts follow."""
    jobs = [queue.enqueue("tests._tasks:echo", i) for i in range(3)]
    open_page(browser, board)
    until(browser, lambda: count(browser, queue, "queued") == "3", "3 queued")
    processes.worker(queue.url, queue.name)
    for job in jobs:
        job.result(timeout=30)
    until(browser, lambda: count(browser, queue, "done") == "3", "3 done")
    assert count(browser, queue, "queued") == "0"
    until(browser, lambda: "alive" in (text(browser, f'[data-queue="{queue.name}"] .alive') or ""))


def test_dead_letter_requeue_needs_the_token(browser, board, queue, processes):
    """Requeue is refused on a GET and without the token (the job stays dead); works with it."""
    job = make_dead(queue, processes)
    (entry,) = queue.redis.xrange(f"{queue.prefix}:dead")
    browser.get(f"{board}api/queues/{queue.name}/dead/{entry[0].decode()}/requeue")  # a GET
    assert "Method Not Allowed" in browser.page_source
    assert job.status() == "dead"
    open_page(browser, board)
    row = f'[data-queue="{queue.name}"] tr[data-dead="{job.id}"]'
    until(browser, lambda: text(browser, row + " .reason") == "retries-exhausted", "dead row")
    click(browser, row + ' button[data-action="requeue"]')
    until(browser, lambda: "refused (403)" in (text(browser, "#message") or ""), "refusal")
    assert job.status() == "dead"

    field = browser.find_element("css selector", "#token")
    field.send_keys(TOKEN)
    browser.find_element("css selector", "#use-token").click()
    until(browser, lambda: text(browser, "#mode") == "actions on", "token taken")
    click(browser, row + ' button[data-action="requeue"]')
    until(browser, lambda: "re-queued" in (text(browser, "#message") or ""), "requeue done")
    assert job.status() == "queued"
    until(browser, lambda: text(browser, row) is None, "dead row gone")
    assert browser.execute_script("return document.cookie") == ""


def test_hostile_names_are_shown_as_text(browser, board, queue, redis_url):
    """Markup in a job's name, a dead reason and a worker's name is shown, never run."""
    job = queue.enqueue_in(3600, "tests._tasks:echo", 1)
    queue.redis.hset(job.key, "name", HOSTILE)
    queue.redis.xadd(f"{queue.prefix}:dead", {"id": job.id, "reason": HOSTILE, "at": 0})
    beat = json.dumps({"host": HOSTILE, "pid": 1, "beat": time.time() + 3600, "held": 0})
    queue.redis.hset(f"{queue.prefix}:workers", HOSTILE, beat)
    open_page(browser, board)
    row = f'[data-queue="{queue.name}"] tr[data-dead="{job.id}"]'
    until(browser, lambda: text(browser, row + " .fn") == HOSTILE, "hostile row")
    assert text(browser, row + " .reason") == HOSTILE
    assert browser.execute_script("return window.__pwned") is None
    assert browser.execute_script("return document.querySelectorAll('main img').length") == 0
    assert browser.execute_script("return document.querySelectorAll('main script').length") == 0


def test_screenshot_of_a_populated_queue_is_written(browser, board, queue, processes, tmp_path):
    """A screenshot of the page with running jobs, a dead letter and a schedule is a PNG."""
    make_dead(queue, processes)
    queue.schedule("*/5 * * * *", "tests._tasks:echo", 1, name="every-5-min")
    for i in range(4):
        queue.enqueue("tests._tasks:echo", i).id  # noqa: B018 - ids unused
    queue.enqueue("tests._tasks:hang", 60)
    processes.worker(queue.url, queue.name)
    open_page(browser, board, queue)
    until(browser, lambda: count(browser, queue, "running") == "1", "one running")
    assert browser.execute_script("return document.querySelectorAll('[data-queue]').length") == 1
    until(browser, lambda: count(browser, queue, "done") == "4", "four done")
    path = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"dashboard screenshot: {path}")
