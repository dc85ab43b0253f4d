"""``isopool status`` and ``isopool dashboard``: the snapshot in a terminal, or served.

``status`` prints ``_inspect.snapshot``: rich tables when stdout is a terminal and
rich is installed, plain aligned text otherwise (a pipe, a log, a CI run), and JSON
with ``--json``. ``dashboard`` starts uvicorn on ``_dashboard.create_app``. Both
only read Redis (the dashboard's actions aside) and never unpickle anything.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["render_plain", "run_dashboard", "run_status"]

TOKEN_ENV = "ISOPOOL_DASHBOARD_TOKEN"


def _connect(url: str) -> Any:  # noqa: ANN401 - a redis.Redis
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=10.0)


def run_status(url: str, queue: str | None, as_json: bool, out: TextIO) -> int:
    """Print the snapshot of ``queue`` (or every queue); return the exit code."""
    from ._dist import inspect as _inspect

    client = _connect(url)
    try:
        data = _inspect.snapshot(client, None if queue is None else [queue])
    finally:
        client.close()
    if queue is not None and not data["queues"][0]["exists"]:
        print(f"isopool status: no queue named {queue!r} in this Redis", file=sys.stderr)
        return 1
    if as_json:
        json.dump(data, out, indent=2)
        out.write("\n")
    elif out.isatty() and _has_rich():
        _render_rich(data, out)
    else:
        out.write("\n".join(render_plain(data)) + "\n")
    return 0


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}min"


def _when(unix: float | None) -> str:
    if unix is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def _sections(q: dict[str, Any]) -> Iterator[tuple[str, list[str], list[list[str]]]]:
    """Each table of a queue: title, headers, rows (all text)."""
    yield (
        "bands",
        ["band", "queued", "running"],
        [
            [str(b["band"]), str(b["queued"]), str(b["running"])]
            for b in q["bands"]
            if any((b["queued"], b["running"]))
        ],
    )
    yield (
        "running",
        ["job", "function", "worker", "age", "lease idle", "tries"],
        [
            [
                j["id"],
                j["function"],
                j["worker"],
                _ago(j["age"]),
                _ago(j["lease_idle"]),
                str(j["attempts"]),
            ]
            for j in q["running"]
        ],
    )
    yield (
        "dead letters",
        ["job", "function", "reason", "at", "now"],
        [[d["id"], d["function"], d["reason"], _when(d["at"]), d["status"]] for d in q["dead"]],
    )
    yield (
        "schedules",
        ["name", "cron", "function", "next run"],
        [
            [
                s["name"],
                f"{s['cron']} {s['zone']}",
                s["function"],
                _when(s["next_run"]) + (" (due)" if s["due"] else ""),
            ]
            for s in q["schedules"]
        ],
    )
    yield (
        "workers",
        ["worker", "host", "pid", "held", "processes", "heartbeat"],
        [
            [
                w["name"],
                w["host"],
                str(w["pid"]),
                f"{w['held']}/{w['capacity']}",
                str(w["processes"]),
                ("alive, " if w["alive"] else "DEAD, ") + _ago(w["last_beat"]) + " ago",
            ]
            for w in q["workers"]
        ],
    )


def _summary(q: dict[str, Any]) -> str:
    t = q["totals"]
    done = sum(r["done"] for r in q["throughput"])
    failed = sum(r["failed"] + r["dead"] for r in q["throughput"])
    last = q["throughput"][-2]["done"] if len(q["throughput"]) > 1 else 0
    return (
        f"queued {t['queued']}  running {t['running']}  scheduled {t['scheduled']}  "
        f"retry-wait {t['delayed']}  dead {t['dead']}  |  last 15 min: done {done}, "
        f"failed {failed}; last full minute: {last}/min"
    )


def _node_rows(nodes: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            n["name"],
            n["host"],
            str(n["pid"]),
            ", ".join(n["supervisors"]),
            "alive" if n["alive"] else "DOWN",
        ]
        for n in nodes
    ]


_NODE_HEADERS = ["node", "host", "pid", "supervisors", "heartbeat"]


def render_plain(data: dict[str, Any]) -> list[str]:
    """The snapshot as plain text lines (no colour, columns aligned)."""
    lines: list[str] = []
    if not data["queues"]:
        lines.append("no queue in this Redis")
    for q in data["queues"]:
        lines += [f"queue {_printable(q['name'])}", "  " + _summary(q)]
        for title, headers, rows in _sections(q):
            if rows:
                lines.append(f"  {title}:")
                lines += ["    " + line for line in _align([headers, *rows])]
    lines.append("nodes:" if data["nodes"] else "no nodes")
    lines += (
        ["  " + line for line in _align([_NODE_HEADERS, *_node_rows(data["nodes"])])]
        if (data["nodes"])
        else []
    )
    return lines


def _align(rows: list[list[str]]) -> list[str]:
    # Control characters from Redis would move a terminal's cursor: show them escaped.
    rows = [[_printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _render_rich(data: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, highlight=False)
    for q in data["queues"]:
        console.rule(Text(f"queue {_printable(q['name'])}", style="bold"))
        console.print(Text(_summary(q)))  # Text, not markup: names from Redis stay text
        for title, headers, rows in _sections(q):
            if not rows:
                continue
            table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
            for header in headers:
                table.add_column(header)
            for row in rows:
                table.add_row(*(Text(_printable(cell)) for cell in row))
            console.print(table)
    if not data["queues"]:
        console.print("no queue in this Redis")
    table = Table(title="nodes", title_justify="left", show_edge=False)
    for header in _NODE_HEADERS:
        table.add_column(header)
    for row in _node_rows(data["nodes"]):
        table.add_row(*(Text(_printable(cell)) for cell in row))
    console.print(table if data["nodes"] else "no nodes")


def run_dashboard(
    url: str, host: str, port: int, token: str | None, allowed_hosts: list[str]
) -> int:
    """Serve the dashboard until Ctrl-C or SIGTERM; return the exit code."""
    try:
        import uvicorn

        from ._dist.dashboard import LOOPBACK_HOSTS, create_app
    except ImportError as exc:
        print(
            f"isopool dashboard needs starlette and uvicorn: pip install 'isopool[dashboard]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 2
    token = token or os.environ.get(TOKEN_ENV) or None
    client = _connect(url)
    client.ping()
    loopback = host in LOOPBACK_HOSTS
    hosts = [*allowed_hosts, *LOOPBACK_HOSTS, *([] if host in ("0.0.0.0", "::") else [host])]
    if host in ("0.0.0.0", "::") and not allowed_hosts:
        hosts = ["*"]
    app = create_app(client, url=url, token=token, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    where = "loopback only" if loopback else "REACHABLE FROM OTHER MACHINES"
    if hosts == ["*"]:
        where += "; any Host header accepted: --allow-host NAME refuses DNS rebinding"
    mode = "actions need the token" if token else "read-only (no --token)"
    print(f"isopool dashboard: http://{shown}:{port}/  ({where}; {mode})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
    return 0
