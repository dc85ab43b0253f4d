"""Make the README's screenshots from the real thing: ``docs/dashboard.png``, ``docs/progress.png``.

dashboard.png: a private redis-server, real ``isopool worker`` and ``isopool node``
processes, a producer that enqueues jobs at a varying rate for ``--minutes`` minutes
(so the throughput chart has bars), a dead letter, a schedule and running jobs; then
``isopool dashboard`` in headless Chromium, photographed.

progress.png: a real ``isopool.as_completed(..., progress="always")`` bar over tasks of
which two segfault, its last frame as tqdm wrote it, rendered as a terminal by rich
(``Console(record=True).save_svg``) and photographed by Chromium.

Run from the repository root: ``python docs/screenshots.py [--minutes 4]``. Needs
redis-server, chromium, chromedriver, selenium, rich and the dashboard extra.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests._redis import SECRET, Processes, RedisServer, free_port  # noqa: E402

TOKEN = "screenshot-token"


def browser(profile: Path, width: int, height: int, scale: int = 1) -> Any:  # noqa: ANN401
    """A headless Chromium (a selenium WebDriver) with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        f"--force-device-scale-factor={scale}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def dashboard(minutes: float, out: Path, tmp: Path) -> None:
    """Populate queues for ``minutes`` minutes, then photograph the dashboard to ``out``."""
    import isopool

    (tmp / "redis").mkdir()
    server = RedisServer(tmp / "redis").start()
    procs = Processes(tmp)
    try:
        url = server.url
        images = isopool.RedisQueue(url, "images", secret=SECRET)
        emails = isopool.RedisQueue(url, "emails", secret=SECRET)
        for _ in range(2):
            procs.worker(url, "images", workers=2)
        procs.worker(url, "emails", workers=1)
        procs.node(url, "gpu-1", ["Render", "Thumbnails:restart=transient"])
        images.schedule("0 3 * * *", "time:time", name="nightly-cleanup")
        emails.schedule("*/15 * * * *", "time:time", name="digest")
        images.enqueue_in(1800, "time:sleep", 1)
        failing = images.options(restart="transient", max_retries=1, backoff=0.1)
        failing.enqueue("math:sqrt", -1)  # ValueError twice: dead, retries-exhausted
        emails.options(restart="temporary").enqueue("tests._tasks:segfault")
        deadline = time.time() + minutes * 60
        rng = random.Random(7)
        while time.time() < deadline:  # a producer with a varying rate
            phase = (deadline - time.time()) / 60
            for _ in range(rng.randint(1, 4 + int(6 * (phase % 2)))):
                images.enqueue("time:sleep", rng.uniform(0.05, 0.4))
            if rng.random() < 0.3:
                emails.enqueue("time:sleep", 0.1)
            time.sleep(0.5)
        for _ in range(3):
            images.enqueue("time:sleep", 600)  # running when the picture is taken
        for _ in range(40):
            images.enqueue("time:sleep", 0.5)  # and a backlog
        port = free_port()
        procs.spawn(
            ["dashboard", "--redis", url, "--port", str(port)],
            env={"ISOPOOL_DASHBOARD_TOKEN": TOKEN},
            secret=None,
        )
        time.sleep(4)  # let the workers take the long jobs and the page draw
        driver = browser(tmp / "chromium", 1280, 900)
        try:
            driver.get(f"http://127.0.0.1:{port}/?queue=images")
            time.sleep(3)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            metrics = {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            time.sleep(2)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
        images.close()
        emails.close()
    finally:
        procs.stop_all()
        server.stop()


_BAR_SCRIPT = """
import logging, isopool, tests._tasks as t
logging.getLogger("isopool").addHandler(logging.NullHandler())  # the crash reports: elsewhere
logging.getLogger("isopool").propagate = False
with isopool.Pool(2) as pool:
    tasks = [pool.submit(t.sleep_then, 0.05, i) for i in range(58)]
    tasks[17] = pool.submit(t.segfault)
    tasks[40] = pool.submit(t.segfault)
    for _ in isopool.as_completed(tasks, progress=True):
        pass
"""


def _run_in_terminal(argv: list[str], columns: int) -> str:
    """Run ``argv`` with its stderr on a pseudo-terminal ``columns`` wide; what it wrote."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(300)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def progress(out: Path, tmp: Path) -> None:
    """Photograph the last frame of a real progress bar, drawn on a terminal, to ``out``."""
    from rich.console import Console
    from rich.text import Text

    stderr = _run_in_terminal([sys.executable, "-c", _BAR_SCRIPT], columns=72)
    frames = [f for f in stderr.replace("\n", "\r").split("\r") if "|" in f]
    console = Console(
        record=True, width=72, force_terminal=True, color_system="truecolor", file=io.StringIO()
    )
    console.print(Text("$ python crunch.py", style="bold green"))
    console.print(Text(frames[-1].rstrip()))
    svg = tmp / "progress.svg"
    console.save_svg(str(svg), title="isopool.as_completed(tasks, progress=True)")
    driver = browser(tmp / "chromium-bar", 1000, 300, scale=2)
    try:
        driver.get(svg.as_uri())
        driver.find_element("css selector", "svg").screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    """Make both screenshots (or ``--only`` one)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--only", choices=["dashboard", "progress"], default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if args.only in (None, "progress"):
            progress(REPO / "docs" / "progress.png", tmp)
            print("wrote docs/progress.png")
        if args.only in (None, "dashboard"):
            dashboard(args.minutes, REPO / "docs" / "dashboard.png", tmp)
            print("wrote docs/dashboard.png")


if __name__ == "__main__":
    main()
