"""The policy daemon side by side with policyd-rate-limit: the anchor every speed goal is a ratio against.

These VMs lose 0-28% of their CPU to the hypervisor, so an absolute decisions/s
figure moves with the host from one hour to the next. A ratio against another
daemon measured in the same minutes on the same request stream moves far less,
so the project states its speed goals as ratios against policyd-rate-limit
(https://pypi.org/project/policyd-rate-limit/, version pinned below), a
Python rate-limit policy server with a SQLite backend.

What one run does, ``--rounds`` times, rotating which daemon goes first:

* start a fresh daemon (``sendguard policyd``, policyd-rate-limit, and with
  ``--prl-journal delete wal`` policyd-rate-limit on a WAL database too) with
  its own new SQLite store, listening on 127.0.0.1; with ``--redis``, also
  ``sendguard policyd`` with ``store = "redis"``, on a redis-server this script
  starts on 127.0.0.1 for that daemon alone (AOF with ``appendfsync everysec``,
  as docs/policyd.md recommends for production);
* give its store the same day of earlier traffic (bench_policyd.py's busy
  store: per stream 3,600 messages in the last hour and 1,380 five-recipient
  messages over the 23 hours before: 9,960 messages, 21,000 recipients);
* warm it up, then drive it with the same requests over 1 connection and over
  20 connections (bench_policyd.py's clients), and stop it.

The requests are bench_policyd.py's mix (RCPT per recipient, then one
END-OF-MESSAGE per message, two streams told apart by server_port and client
address). policyd-rate-limit counts at the DATA state (``count_mode: 1``, its
default and the one its docs recommend), so its copy of the stream says
``protocol_state=DATA`` where sendguard's says ``END-OF-MESSAGE``; every other
byte is the same. Both count per stream with a cap so high that every counted
request is a real check-and-add against the full hour and day in the store.

policyd-rate-limit is installed from PyPI into its own venv (``--prl-venv``)
when it is missing there, and runs as shipped: only its YAML configuration is
written here, no code of it is used or copied. It commits every counted request
with SQLite's defaults (rollback journal, synchronous=FULL: an fsync each),
where sendguard runs WAL with synchronous=NORMAL; the WAL variant shows how
much of the gap is that choice rather than the work per decision.

Every loop is bounded: a fixed list of requests per scenario, ``--scenario-timeout``
per scenario and ``--budget`` for the run (no round starts past it).

Usage (from the repository root, with the project's venv; RESULTS-policyd-anchor.md
has the exact command of the recorded runs):
  .venv/bin/python benchmarks/bench_policyd_anchor.py --prl-journal delete wal \\
      --out benchmarks/RESULTS-policyd-anchor.md --label before
"""

from __future__ import annotations

import argparse
import grp
import json
import multiprocessing
import os
import platform
import pwd
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

# bench_policyd.py sits beside this file; running the script puts this folder first on sys.path.
import redis

from sendguard_policyd.store.redis import StreamKeys

from bench_policyd import (
    CONFIG,
    WORST_CASE,
    box_ticks,
    build_requests,
    free_port,
    prefill,
    prefill_rows,
    scenario,
    single_connection,
    wait_port,
)

#: Pinned so that a rerun months later measures the same anchor.
PRL_VERSION = "1.2.0"
REPO = Path(__file__).resolve().parent.parent
#: The two streams of bench_policyd.py's requests, by the client address its build_requests gives each.
STREAM_CLIENTS = {"trucking": "172.18.0.5", "healthcare": "172.18.0.25"}
#: (label, connections) of the scenarios every daemon runs, in this order.
PLAN = (("1 connection", 1), ("20 connections", 20))
#: policyd-rate-limit's daemons by ``--prl-journal`` value: the name each has in the results.
PRL_JOURNALS = {"delete": "policyd-rate-limit", "wal": "policyd-rate-limit, WAL"}


@dataclass
class Round:
    """One round: the order the daemons ran in and, per daemon and scenario, bench_policyd.scenario()'s figures."""

    order: list[str]
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


class Timeout(Exception):
    """A scenario ran past ``--scenario-timeout``: a daemon hung or is far slower than planned."""


def ensure_prl(venv: Path) -> Path:
    """The policyd-rate-limit script in ``venv``, installing it there from PyPI first if it is missing."""
    script = venv / "bin" / "policyd-rate-limit"
    if script.exists():
        return script
    # policyd-rate-limit 1.2.0 imports ``imp``, which Python 3.12 removed: fail here, not as a daemon that never listens.
    if sys.version_info >= (3, 12):
        raise SystemExit(f"policyd-rate-limit {PRL_VERSION} needs Python < 3.12 (it imports imp); this is {platform.python_version()}")
    print(f"installing policyd-rate-limit {PRL_VERSION} into {venv}", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", f"policyd-rate-limit=={PRL_VERSION}"], check=True, timeout=600
    )
    return script


def prl_config(workdir: Path, port: int) -> dict[str, object]:
    """policyd-rate-limit's configuration: the equivalent of sendguard's two streams with caps never reached.

    The id is the client address (``limit_by_ip``), which is what tells the two streams apart in these
    requests (they share one sender and carry no SASL login). The limits mirror sendguard's rolling hour
    and rolling day with caps the run never reaches, so every DATA request sums that id's rows of the
    last hour and of the last day and then inserts one row: the same check-and-add sendguard does.
    ``debug: false``: otherwise it writes every request to stderr, more than sendguard's INFO log of
    counted messages, and the anchor should not be slowed by anything we chose.
    """
    # It drops privileges to user/group when started as root: the current ones leave it as it is.
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return {
        "debug": False,
        "user": user,
        "group": group,
        "pidfile": str(workdir / "policyd-rate-limit.pid"),
        "backend": 0,
        "sqlite_config": {"database": str(workdir / "policyd-rate-limit.sqlite3")},
        "SOCKET": ["127.0.0.1", port],
        "limits": [[WORST_CASE["caps"]["trucking"][0], 3600], [WORST_CASE["caps"]["trucking"][1], 86400]],  # type: ignore[index]
        "limits_by_id": {},
        # 1.2.0 has no default for it and fails every request without it (its sample YAML sets it so).
        "sql_limits_by_id": "",
        "limit_by_sasl": False,
        "limit_by_sender": False,
        "limit_by_ip": True,
        "limited_networks": ["0.0.0.0/0"],
        "count_mode": 1,
        "report": False,
    }


def prl_prefill(database: Path, now: float, wal: bool) -> int:
    """Give policyd-rate-limit's store the same day of earlier traffic as sendguard's busy store.

    Rows go into its mail_count table (id, date, recipient_count, instance, protocol_state), which it
    creates before it listens. ``wal``: switch the database file to WAL first (SQLite keeps the mode in
    the file, so the daemon's own connection then commits to a WAL too).
    """
    rows = prefill_rows(WORST_CASE["caps"], now)  # type: ignore[arg-type]
    conn = sqlite3.connect(database, timeout=10, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO mail_count (id, date, recipient_count, instance, protocol_state) VALUES (?, ?, ?, ?, 'DATA')",
        [(STREAM_CLIENTS[stream], int(at), recipients, instance) for instance, stream, recipients, at in rows],
    )
    conn.execute("COMMIT")
    conn.close()
    return len(rows)


@contextmanager
def sendguard_daemon(workdir: Path) -> Iterator[tuple[int, int]]:
    """Run ``sendguard policyd`` on a busy store (bench_policyd.py's config, every message counted); yield (port, pid)."""
    port, mport = free_port(), free_port()
    (workdir / "bench.toml").write_text(
        # busy_poll is left to the daemon's default: the anchor compares the shipped configuration.
        CONFIG.format(dir=workdir, port=port, mport=mport, busy_poll="", **WORST_CASE)  # type: ignore[arg-type]
    )
    exe = shutil.which("sendguard") or os.path.join(os.path.dirname(sys.executable), "sendguard")
    with open(workdir / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([exe, "policyd", "--config", str(workdir / "bench.toml")], stderr=log)
        try:
            wait_port(port)
            prefill(workdir / "policyd.sqlite", WORST_CASE["caps"], time.time())  # type: ignore[arg-type]
            yield port, daemon.pid
        finally:
            stop(daemon)


def redis_prefill(url: str, now: float) -> int:
    """Give a Redis store the same day of earlier traffic as the SQLite one; return the messages added.

    Written straight into the store's data model (store/redis.py: per second, a running total),
    since the store's own steps count at the server's time and could not date a message back.
    """
    rows = prefill_rows(WORST_CASE["caps"], now)  # type: ignore[arg-type]
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    totals: dict[str, int] = {}
    for _instance, stream, recipients, at in rows:  # oldest first, so the running totals grow with the second
        keys = StreamKeys(stream)
        totals[stream] = totals.get(stream, 0) + recipients
        second = int(at)
        pipe.zadd(keys.window[0], {str(second): second})
        pipe.zadd(keys.window[1], {str(second): totals[stream]})
    pipe.execute()
    client.close()
    return len(rows)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server of the daemon's own on 127.0.0.1 (AOF, ``appendfsync everysec``); yield its URL."""
    port = free_port()
    (workdir / "redis").mkdir()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--dir", str(workdir / "redis"), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(server)


@contextmanager
def sendguard_redis_daemon(workdir: Path) -> Iterator[tuple[int, int]]:
    """Run ``sendguard policyd`` with ``store = "redis"`` on a busy Redis of its own; yield (port, pid)."""
    port, mport = free_port(), free_port()
    with redis_server(workdir) as url:
        store = f'store = "redis"\nredis_url = "{url}"'
        (workdir / "bench.toml").write_text(
            # The {busy_poll} line of CONFIG is its one free line in [policyd]: the store keys go there.
            CONFIG.format(dir=workdir, port=port, mport=mport, busy_poll=store, **WORST_CASE)  # type: ignore[arg-type]
        )
        exe = shutil.which("sendguard") or os.path.join(os.path.dirname(sys.executable), "sendguard")
        with open(workdir / "daemon.log", "wb") as log:
            daemon = subprocess.Popen([exe, "policyd", "--config", str(workdir / "bench.toml")], stderr=log)
            try:
                wait_port(port)
                redis_prefill(url, time.time())
                yield port, daemon.pid
            finally:
                stop(daemon)


@contextmanager
def prl_daemon(workdir: Path, script: Path, wal: bool) -> Iterator[tuple[int, int]]:
    """Run policyd-rate-limit on a busy store, configured by :func:`prl_config`; yield (port, pid)."""
    port = free_port()
    # YAML is a superset of JSON, so the project needs no YAML writer for this.
    (workdir / "policyd-rate-limit.yaml").write_text(json.dumps(prl_config(workdir, port), indent=2))
    with open(workdir / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(
            [str(script.parent / "python"), str(script), "--file", str(workdir / "policyd-rate-limit.yaml")],
            stderr=log,
            stdout=log,
        )
        try:
            try:
                wait_port(port)
            except RuntimeError:
                raise RuntimeError(f"policyd-rate-limit did not listen: {(workdir / 'daemon.log').read_text()[-2000:]}")
            prl_prefill(workdir / "policyd-rate-limit.sqlite3", time.time(), wal)
            yield port, daemon.pid
        finally:
            stop(daemon)


def stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 20 s: the run never leaves a daemon behind."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(5)


def as_data_state(request: bytes) -> bytes:
    """The same request at the DATA state, where policyd-rate-limit counts (``count_mode: 1``)."""
    return request.replace(b"\nprotocol_state=END-OF-MESSAGE\n", b"\nprotocol_state=DATA\n")


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Timeout` in the main thread after ``seconds``, also out of a blocking recv or a pool's wait."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Timeout(f"scenario still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(
    name: str,
    start: Callable[[Path], AbstractContextManager[tuple[int, int]]],
    streams: dict[str, list[bytes]],
    warmup: list[bytes],
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """One daemon, fresh and then prefilled, through the warm-up and every scenario of :data:`PLAN`."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-anchor-"))
    results: dict[str, dict[str, float]] = {}
    try:
        with start(workdir) as (port, pid):
            with time_limit(args.scenario_timeout):
                single_connection(port, warmup)
            for label, conns in PLAN:
                with time_limit(args.scenario_timeout):
                    res = scenario(port, streams[label], conns, None, args, pid)
                results[label] = res
                print(
                    f"  {name:20s} {label:15s} {res['rate']:8.0f} decisions/s  p50 {res['p50_ms']:7.2f} ms  "
                    f"p99 {res['p99_ms']:7.2f} ms  CPU {res['cpu_us']:6.0f} us/decision  steal {res['steal_pct']:4.1f}%",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def git_commit() -> str:
    """The last commit of the code being measured, with ``+changes`` when it has uncommitted edits.

    benchmarks/ is left out: a commit that only adds results or changes a benchmark measures the
    daemon of the commit before it, and that is the one the heading should name.
    """
    code = ["--", ".", ":(exclude)benchmarks"]
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h", *code], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", *code],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def median(values: list[float]) -> float:
    """The median, or NaN for no values (a round skipped for the time budget)."""
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[Round], daemons: list[str]) -> str:
    """The Markdown section of one run: medians per daemon and scenario, then every round's ratios."""
    lines = [
        "| daemon | scenario | decisions/s (median) | range | p50 | p99 | daemon CPU per decision | steal (median) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for daemon in daemons:
        for label, _ in PLAN:
            rs = [r.results[daemon][label] for r in rounds if label in r.results.get(daemon, {})]
            if not rs:
                continue
            rates = [r["rate"] for r in rs]
            lines.append(
                f"| {daemon} | {label} | {median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
                f"{median([r['p50_ms'] for r in rs]):.2f} ms | {median([r['p99_ms'] for r in rs]):.2f} ms | "
                f"{median([r['cpu_us'] for r in rs]):,.0f} µs | {median([r['steal_pct'] for r in rs]):.1f}% |"
            )
    subjects = [d for d in daemons if d.startswith("sendguard")]
    pairs = [(subject, anchor) for subject in subjects for anchor in daemons if anchor not in subjects]
    if len(subjects) > 1:
        pairs.insert(0, (subjects[0], subjects[1]))  # the SQLite store beside the Redis one
    for subject, anchor in pairs:
        lines += [
            "",
            f"Per round, {subject} / {anchor}: the decisions/s ratio; in brackets {anchor}'s daemon CPU per"
            f" decision over {subject}'s, and the steal during {subject}'s run and during {anchor}'s:",
            "",
            "| round | order | " + " | ".join(label for label, _ in PLAN) + " |",
            "|---:|---|" + "---:|" * len(PLAN),
        ]
        ratios: dict[str, list[float]] = {label: [] for label, _ in PLAN}
        cpu_ratios: dict[str, list[float]] = {label: [] for label, _ in PLAN}
        for i, r in enumerate(rounds, 1):
            cells = []
            for label, _ in PLAN:
                try:
                    sg, other = r.results[subject][label], r.results[anchor][label]
                except KeyError:
                    cells.append("-")
                    continue
                ratios[label].append(sg["rate"] / other["rate"])
                cpu_ratios[label].append(other["cpu_us"] / sg["cpu_us"])
                cells.append(
                    f"{ratios[label][-1]:.1f}× (CPU {cpu_ratios[label][-1]:.1f}×; "
                    f"steal {sg['steal_pct']:.1f}% / {other['steal_pct']:.1f}%)"
                )
            lines.append(f"| {i} | {' → '.join(r.order)} | " + " | ".join(cells) + " |")
        lines.append(
            "| **median** | | "
            + " | ".join(f"**{median(ratios[label]):.1f}×** (CPU {median(cpu_ratios[label]):.1f}×)" for label, _ in PLAN)
            + " |"
        )
    return "\n".join(lines) + "\n"


SECTION = re.compile(r"<!-- section: (.*?) -->\n(.*?)<!-- end of section -->\n", re.S)
#: Everything after this line in the results file is hand-written and kept when the file is rewritten.
NOTES_MARKER = "<!-- Notes below are written by hand and kept when the benchmark rewrites this file. -->"


def write_results(out: Path, label: str, section: str, command: str) -> None:
    """Write ``out``: the command and method on top, one section per label (this run's replacing its label's), the notes."""
    sections: dict[str, str] = {}
    notes = ""
    if out.exists():
        old = out.read_text()
        if NOTES_MARKER in old:
            old, notes = old[: old.index(NOTES_MARKER)], old[old.index(NOTES_MARKER) :]
        sections = {m.group(1): m.group(2) for m in SECTION.finditer(old)}
    sections[label] = section
    head = (
        "# Policy daemon beside policyd-rate-limit\n\n"
        f"Command (from the repository root; the *after* figures come from the same command with `--label after`):\n\n"
        f"```\n{command}\n```\n\n"
        "The daemons run in turn on the same host, several rounds, each round a fresh daemon with a fresh "
        "store given the same day of earlier traffic (per stream 3,600 messages in the last hour and 1,380 "
        "five-recipient messages over the 23 hours before: 9,960 messages and 21,000 recipients in the day's "
        "window), the same warm-up and then the same requests (bench_policyd.py's mix: RCPT per recipient, one "
        "END-OF-MESSAGE per message, two streams) over 1 connection and over 20 (two client processes), over TCP "
        "on 127.0.0.1. Closed loop: each connection sends its next request when the reply is in, so the figures "
        "are throughput ceilings. policyd-rate-limit gets the END-OF-MESSAGE requests as DATA, the state it counts "
        "at. The script's docstring and `prl_config()` say how each is configured and why.\n\n"
        "*Decisions/s* counts every request answered (RCPT and END-OF-MESSAGE/DATA alike). *Daemon CPU per "
        "decision*: the daemon process's user+system CPU over the requests. *Steal*: the share of the machine's "
        "CPU time the hypervisor gave to other guests during that run. The box has 2 cores and is shared with "
        "other work, so absolute figures move between runs; the per-round ratios, measured minutes apart on the "
        "same stream, are the figures to compare.\n"
    )
    with open(out, "w") as f:
        f.write(head)
        for name, text in sections.items():
            f.write(f"\n<!-- section: {name} -->\n{text}<!-- end of section -->\n")
        if notes:
            f.write("\n" + notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each running every daemon once (default 5)")
    parser.add_argument("--requests", type=int, default=10000, help="requests per scenario and daemon (default 10,000)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests over one connection before the scenarios")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes for the 20-connection runs")
    parser.add_argument("--client-loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument(
        "--prl-venv", type=Path, default=REPO / "benchmarks" / ".venv-policyd-rate-limit", help="policyd-rate-limit's own venv (made if missing)"
    )
    parser.add_argument(
        "--prl-journal",
        nargs="+",
        choices=tuple(PRL_JOURNALS),
        default=["delete"],
        help="policyd-rate-limit's SQLite journal, one daemon per value: delete (SQLite's default, as it ships)"
        " and/or wal (its database file switched to WAL before the run)",
    )
    parser.add_argument(
        "--redis", action="store_true", help="also run sendguard with the Redis store (a redis-server of its own)"
    )
    parser.add_argument("--scenario-timeout", type=float, default=180.0, help="seconds one scenario may take")
    parser.add_argument(
        "--budget", type=float, default=600.0, help="seconds for the whole run: no new round starts past it"
    )
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    parser.add_argument("--label", default="run", help="the results section's heading, e.g. before or after")
    args = parser.parse_args()

    script = ensure_prl(args.prl_venv)
    started = time.monotonic()
    load_before = os.getloadavg()
    steal0, total0 = box_ticks()
    # Different instances per scenario (a repeated instance is a message seen before, cheaper for sendguard),
    # the same ones for every daemon and every round.
    streams = {label: build_requests(args.requests, i, f"anchor{i}")[: args.requests] for i, (label, _) in enumerate(PLAN, 1)}
    warmup = build_requests(args.warmup, 0, "warm")[: args.warmup]
    prl_streams = {label: [as_data_state(r) for r in reqs] for label, reqs in streams.items()}
    prl_warmup = [as_data_state(r) for r in warmup]
    daemons: dict[str, tuple[Callable[[Path], AbstractContextManager[tuple[int, int]]], dict[str, list[bytes]], list[bytes]]]
    daemons = {"sendguard": (sendguard_daemon, streams, warmup)}
    if args.redis:
        daemons["sendguard (Redis)"] = (sendguard_redis_daemon, streams, warmup)
    for journal in args.prl_journal:
        wal = journal == "wal"
        daemons[PRL_JOURNALS[journal]] = (
            lambda workdir, wal=wal: prl_daemon(workdir, script, wal),
            prl_streams,
            prl_warmup,
        )
    names = list(daemons)
    rounds: list[Round] = []
    for i in range(args.rounds):
        if time.monotonic() - started > args.budget:
            print(f"time budget of {args.budget:.0f} s spent: stopping after {i} rounds", flush=True)
            break
        # Rotate who goes first, so that a drift in the host's load favours none of them.
        order = names[i % len(names) :] + names[: i % len(names)]
        print(f"round {i + 1} of {args.rounds}", flush=True)
        result = Round(order)
        for name in order:
            start, reqs, warm = daemons[name]
            result.results[name] = run_one(name, start, reqs, warm, args)
        rounds.append(result)

    elapsed = time.monotonic() - started
    steal1, total1 = box_ticks()
    steal_pct = 100 * (steal1 - steal0) / max(1, total1 - total0)
    load_after = os.getloadavg()
    journals = " and ".join({"delete": "SQLite's default rollback journal", "wal": "WAL"}[j] for j in args.prl_journal)
    meta = (
        f"\n## {args.label} ({git_commit()})\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(rounds)} rounds of {args.requests:,} requests per "
        f"scenario and daemon, {elapsed:.0f} s. Machine: {os.cpu_count()} cores ({platform.machine()}), Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}; policyd-rate-limit {PRL_VERSION} with its "
        f"database in {journals}. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_before)} before and {'/'.join(f'{x:.2f}' for x in load_after)} after; "
        f"CPU stolen by the hypervisor over the whole run: {steal_pct:.1f}% of the machine's CPU time.\n\n"
    )
    section = meta + summarise(rounds, names)
    print(section)
    if args.out:
        write_results(args.out, args.label, section, " ".join([".venv/bin/python", "benchmarks/bench_policyd_anchor.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    # Daemons are children of this process: make sure a Ctrl-C or a Timeout still stops them (via finally).
    multiprocessing.set_start_method("fork", force=True)
    sys.exit(main())
