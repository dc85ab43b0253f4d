"""Run every benchmark scenario against every peer, in one run, and print the tables.

    python benchmarks/run.py                  # the full run: 5 repeats, 10-15 minutes
    python benchmarks/run.py --quick          # a smoke run: small sizes, 1 repeat
    python benchmarks/run.py --scenario map --peer isopool --peer loky
    python benchmarks/run.py --json /tmp/results.json --repeats 5

Each (scenario, peer) measurement runs in its own subprocess,
``run.py --one SCENARIO PEER``, which prints one JSON line. That subprocess leads its
own session and has a hard time limit: a peer that hangs is killed (its whole
session, process by process) and reported as "timeout", never waited for. Peers are
interleaved: each repeat measures every peer once, in an order rotated by one each
repeat, so a slow phase of the machine hits them all alike. Each figure is the
median of the repeats, printed with its min and max, and compared with isopool's
median in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict

import peers
import scenarios

HERE = os.path.dirname(os.path.abspath(__file__))
NO_PEER = "-"  # the peer column of scenarios measured without a pool (the floors)
DEFAULT_REPEATS = 5
LEFTOVER_GRACE = 2.0  # seconds a measurement's helpers get to exit after it did
PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>


# -- the child: one measurement ------------------------------------------------------


def run_one(scenario_name, peer_name, quick):
    """Measure one scenario on one peer and print the record as one JSON line."""
    # The crash scenarios segfault on purpose: no core files, here or in any worker.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    scenario = scenarios.SCENARIOS[scenario_name]
    peer = peers.ALL_PEERS[peer_name]() if scenario.per_peer else None
    sizes = scenarios.QUICK if quick else scenarios.FULL
    if peer is not None:
        peer.load()  # before any clock: import time is no scenario's figure
    try:
        record = {"status": "ok", "values": scenario.run(peer, sizes)}
    except peers.Unsupported as exc:
        record = {"status": "n/a", "reason": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        record = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(record), flush=True)
    return 0


# -- the parent: subprocesses with a hard limit ----------------------------------------


def session_members(session):
    """Pids of the live processes in ``session``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry))
    return members


def kill_session(session, grace=0.0):
    """SIGKILL every process still in ``session`` after ``grace`` s; return how many.

    The measurement leads its own session, so this reaches every process it started,
    including workers that moved to process groups of their own. The grace lets
    helpers that exit on their own once the measurement is gone (a forkserver, a
    resource tracker) do so: only those still there after it count as left behind.
    """
    deadline = time.monotonic() + grace
    while (members := session_members(session)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(members)


def last_json_line(text):
    for line in reversed(text.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "status" in record:
            return record
    return None


def become_subreaper():
    """Adopt the orphans of the measurements, so that killed ones can be reaped.

    Without it they would be re-parented to pid 1, which in a container may never
    reap them. Linux only (PR_SET_CHILD_SUBREAPER); elsewhere, a no-op.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans():
    """Reap every exited child; called only when no measurement is running."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def run_child(command, limit):
    """Run ``command`` in its own session for at most ``limit`` s, then clear the session.

    Returns (stdout, stderr, timed out?, processes left behind).
    """
    # A killed measurement cannot clean up its temporary files (nor can its peer's
    # helpers): give it a TMPDIR of its own, removed here whatever happened.
    with tempfile.TemporaryDirectory(prefix="isopool-bench-") as tmp:
        return run_in_session(command, limit, {**os.environ, "TMPDIR": tmp})


def run_in_session(command, limit, env):
    child = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_session(child.pid)
        out, err = child.communicate(timeout=30)
    except BaseException:  # Ctrl-C: the child has a session of its own, so it would live on
        kill_session(child.pid)
        child.wait()
        raise
    leftovers = kill_session(child.pid, grace=LEFTOVER_GRACE)
    reap_orphans()
    return out, err, timed_out, leftovers


def measure(scenario, peer_name, quick):
    """Run ``run.py --one`` in a subprocess with a hard time limit; return its record."""
    limit = scenario.limits[0 if quick else 1]
    command = [sys.executable, os.path.abspath(__file__), "--one", scenario.name, peer_name]
    if quick:
        command.append("--quick")
    started = time.monotonic()
    out, err, timed_out, leftovers = run_child(command, limit)
    record = last_json_line(out)
    if record is None:
        status = "timeout" if timed_out else "error"
        reason = f"killed after {limit:.0f} s" if timed_out else "no result (see stderr)"
        record = {"status": status, "reason": reason}
    elif timed_out:
        record["note"] = f"measured, but the process did not exit within {limit:.0f} s"
    if record["status"] in ("error", "timeout"):
        record["stderr_tail"] = err.strip().splitlines()[-8:]
    if leftovers:
        record["leftover_processes"] = leftovers
    record["seconds"] = round(time.monotonic() - started, 2)
    return record


def describe(record):
    if record["status"] == "ok":
        return "ok"
    return f"{record['status']}: {record.get('reason', '')}"


def rotated(plan, by):
    """``plan`` with the peers of each scenario rotated ``by`` places (scenarios kept in order)."""
    groups = {}
    for scenario, peer_name in plan:
        groups.setdefault(scenario.name, []).append((scenario, peer_name))
    order = []
    for group in groups.values():
        shift = by % len(group)
        order.extend(group[shift:] + group[:shift])
    return order


def run_all(plan, repeats, quick):
    """Measure ``plan`` (scenario, peer) pairs ``repeats`` times, interleaving peers.

    Each repeat measures every peer of a scenario once, in an order rotated by one
    from the repeat before: no peer always runs first (after a pause, on a cold cache)
    or right after the same neighbour.
    """
    results = {}
    total = len(plan) * repeats
    done = 0
    for repeat in range(repeats):
        for scenario, peer_name in rotated(plan, repeat):
            done += 1
            record = measure(scenario, peer_name, quick)
            results.setdefault(scenario.name, {}).setdefault(peer_name, []).append(record)
            print(
                f"[{done}/{total}] repeat {repeat + 1}: {scenario.name} {peer_name}: "
                f"{describe(record)} ({record['seconds']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return results


# -- summaries ---------------------------------------------------------------------------


def is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def summarize(records, key):
    """Median, min and max of one figure over the repeats, and what else came back."""
    numbers, words = [], []
    for record in records:
        if record["status"] == "ok":
            value = record["values"].get(key, "missing")
        else:
            value = record["status"]
        (numbers if is_number(value) else words).append(value)
    summary = {"n": len(records), "others": {w: words.count(w) for w in dict.fromkeys(words)}}
    if numbers:
        summary.update(
            median=statistics.median(numbers),
            min=min(numbers),
            max=max(numbers),
            count=len(numbers),
        )
    return summary


def summarize_all(results):
    return {
        name: {
            peer: {m.key: summarize(records, m.key) for m in scenarios.SCENARIOS[name].metrics}
            for peer, records in by_peer.items()
        }
        for name, by_peer in results.items()
    }


# -- printing ------------------------------------------------------------------------------


def cell(summary, metric):
    """ "median (min-max)", plus any repeats that gave a word instead of a number."""
    parts = []
    if "median" in summary:
        median = metric.fmt.format(summary["median"])
        if summary["count"] > 1:
            low, high = metric.fmt.format(summary["min"]), metric.fmt.format(summary["max"])
            median += f" ({low} - {high})"
        parts.append(median)
    for word, count in summary["others"].items():
        parts.append(word if count == summary["n"] else f"{word} x{count}")
    return "; ".join(parts)


def ratio(metric, ours, theirs):
    """Say how isopool compares, e.g. "isopool is 3.10x faster"."""
    if metric.better is None:
        return ""
    a, b = ours.get("median"), theirs.get("median")
    if a is None and b is None:
        return "-"
    if b is None:
        return "isopool only"
    if a is None:
        return "peer only"
    if a <= 0 or b <= 0:
        return "-"
    factor = a / b if metric.better == "higher" else b / a
    good, bad = metric.words
    if factor >= 1:
        return f"isopool is {factor:.2f}x {good}"
    return f"isopool is {1 / factor:.2f}x {bad}"


def table_rows(metric, by_peer):
    """(peer, "median (min - max)", "isopool is 2.00x faster") for each peer."""
    reference = by_peer.get("isopool")
    rows = []
    for peer, figures in by_peer.items():
        summary = figures[metric.key]
        versus = ""
        if reference is not None and peer != "isopool":
            versus = ratio(metric, reference[metric.key], summary)
        rows.append((peer if peer != NO_PEER else "(no pool)", cell(summary, metric), versus))
    return rows


def print_table(scenario, by_peer, records):
    print(f"\n== {scenario.title} [{scenario.name}] ==")
    for metric in scenario.metrics:
        rows = table_rows(metric, by_peer)
        width = max(len(text) for _, text, _ in rows)
        print(f"  {metric.label}")
        for peer, text, versus in rows:
            print(f"    {peer:<15} {text:<{width}}  {versus}".rstrip())
    for peer, runs in records.items():
        for reason in dict.fromkeys(r["reason"] for r in runs if r["status"] == "n/a"):
            print(f"  n/a for {peer}: {reason}")


def git(root, *args):
    try:
        return subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def isopool_source():
    """Where isopool is imported from, its git commit, and whether isopool/ has edits."""
    spec = importlib.util.find_spec("isopool")
    if spec is None or spec.origin is None:
        return "not installed"
    package = os.path.dirname(spec.origin)
    commit = git(package, "rev-parse", "--short", "HEAD")
    if commit is None:
        return package
    edited = git(package, "status", "--porcelain", "--", ".")
    return f"{package} (git {commit}{', with uncommitted edits' if edited else ''})"


def header(args, repeats):
    peer_lines = {}
    shown = peers.OVERHEAD_PEERS if args.overhead else peers.PEERS
    for name, peer in shown.items():
        missing = peer.missing()
        state = f"SKIPPED: {missing}" if missing else f"{peer.version()}, {peer.start_method}"
        peer_lines[name] = state
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "workers_per_pool": scenarios.worker_count(),
        "mode": "quick" if args.quick else "full",
        "repeats": repeats,
        "isopool": isopool_source(),
        "load_average_at_start": os.getloadavg()[0],
        "peers": peer_lines,
    }


def print_header(info):
    print(f"isopool benchmarks, {info['date']}")
    print(f"  {info['python']} on {info['platform']}")
    print(f"  CPUs: {info['cpu_count']}; workers per pool: {info['workers_per_pool']}")
    print(f"  isopool from {info['isopool']}")
    print(
        f"  load average (1 min): {info['load_average_at_start']:.2f} at the start, "
        f"{info['load_average_at_end']:.2f} at the end (other work skews the figures)"
    )
    print(f"  {info['mode']} run; each figure: median of {info['repeats']} repeat(s) (min - max)")
    print("  ratios compare medians, oriented for isopool: 'isopool is 2.00x faster' is good")
    print("  peers (version, start method):")
    for name, state in info["peers"].items():
        print(f"    {name:<15} {state}")


def problems(record):
    """Lines about what went wrong in one measurement (none if nothing did)."""
    lines = []
    if record["status"] in ("error", "timeout"):
        lines.append(describe(record))
    if record.get("note"):
        lines.append(record["note"])
    if record.get("leftover_processes"):
        lines.append(f"{record['leftover_processes']} process(es) left behind, killed")
    if lines:
        lines.extend(f"| {line}" for line in record.get("stderr_tail", []))
    return lines


def print_problems(results):
    printed = False
    for name, by_peer in results.items():
        for peer, records in by_peer.items():
            for repeat, record in enumerate(records, 1):
                lines = problems(record)
                if lines and not printed:
                    print("\nproblems:")
                    printed = True
                if lines:
                    print(f"  {name} {peer} repeat {repeat}: " + "\n      ".join(lines))


# -- command line ---------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, help=f"default {DEFAULT_REPEATS} (quick: 1)")
    parser.add_argument(
        "--scenario", action="append", choices=list(scenarios.SCENARIOS), help="repeatable"
    )
    parser.add_argument("--peer", action="append", choices=list(peers.ALL_PEERS), help="repeatable")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="only submit and latency, isopool with usage and metrics off / default / on",
    )
    parser.add_argument(
        "--json", default=os.path.join(HERE, "results.json"), help="where to write the results"
    )
    parser.add_argument("--one", nargs=2, metavar=("SCENARIO", "PEER"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_plan(args):
    """The (scenario, peer) pairs to measure, and the peers skipped as not installed."""
    wanted = args.peer or list(peers.OVERHEAD_PEERS if args.overhead else peers.PEERS)
    skipped = {name: peers.ALL_PEERS[name].missing() for name in wanted}
    available = [name for name in wanted if not skipped[name]]
    plan = []
    overhead = ["submit", "latency", "observe-cost"]
    default_scenarios = overhead if args.overhead else list(scenarios.SCENARIOS)
    for name in args.scenario or default_scenarios:
        scenario = scenarios.SCENARIOS[name]
        names = available if scenario.per_peer else [NO_PEER]
        plan.extend((scenario, peer) for peer in names)
    return plan, {name: why for name, why in skipped.items() if why}


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        return run_one(*args.one, args.quick)
    repeats = args.repeats or (1 if args.quick else DEFAULT_REPEATS)
    plan, skipped = make_plan(args)
    become_subreaper()
    info = header(args, repeats)
    started = time.monotonic()
    results = run_all(plan, repeats, args.quick)
    info["seconds"] = round(time.monotonic() - started, 1)
    info["load_average_at_end"] = os.getloadavg()[0]
    summary = summarize_all(results)
    print_header(info)
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    for name, by_peer in summary.items():
        print_table(scenarios.SCENARIOS[name], by_peer, results[name])
    print_problems(results)
    print(f"\ntook {info['seconds']:.0f} s; results in {args.json}")
    sizes = scenarios.QUICK if args.quick else scenarios.FULL
    with open(args.json, "w") as f:
        json.dump(
            {"header": info, "sizes": asdict(sizes), "summary": summary, "results": results},
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the running measurement was stopped", file=sys.stderr)
        sys.exit(130)
