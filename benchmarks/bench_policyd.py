"""Benchmark of the policy daemon: decisions per second and latency, one and 20 connections, SQLite.

Runs the real daemon (``sendguard policyd --config``) as a separate process
with INFO logging to a file, and drives it over TCP with requests that carry
Postfix 3.7's full attribute set.

The mix (per message, as smtpd sends it): one RCPT request per recipient, then
one END-OF-MESSAGE request. Messages have 1 to 4 recipients (mean 2.5), so
about 71% of requests are RCPT and 29% END-OF-MESSAGE. Messages alternate
between two streams (ports 25 and 2526). About 2% of recipients are in the
Yahoo family (HOLD at RCPT, recorded in SQLite, not counted). The caps are set
high so that every other END-OF-MESSAGE is an atomic check-and-add
transaction in SQLite: the expensive path, every time.

Scenarios:
  1. one connection, closed loop (send, wait for the reply, send the next);
  2. the same over the daemon's unix socket (check_policy_service unix:...);
  3. 20 connections, closed loop (maximum throughput, latency includes queueing);
  4. 20 connections paced at a fixed total of 5,000 requests/s (the target load).

Each runs against a fresh store and against a *busy* one: before the daemon
gets its first request, the store is filled with a day of earlier traffic
(every second of the last hour and every minute of the last day hold counts,
up to the caps), as after a day of sending. A store's cost can grow with what
it holds; the fresh store alone would hide that.

The 20-connection clients are plain asyncio protocols (one request in flight per
connection, as smtpd) on uvloop when it is installed (``--client-loop``): about
a quarter less client CPU per request than asyncio's loop, so that the client
on this same small box disturbs the daemon as little as it can. Paced
connections are staggered evenly over the interval, and each row records the
CPU the hypervisor stole meanwhile (a VM's vCPU taken away shows as latency).

Usage: python3 benchmarks/bench_policyd.py [--requests N] [--out benchmarks/RESULTS-policyd.md]
(run it with the package installed; it imports ``sendguard_policyd`` and the
test client from ``tests/support``, which it puts on ``sys.path`` itself.)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# The policy client is a test helper, not part of the installed package: it lives in tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from sendguard_policyd.protocol import format_request  # noqa: E402
from sendguard_testing.policy_client import postfix_request  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_requests(n: int, seed: int, prefix: str) -> list[bytes]:
    """At least ``n`` requests in the documented mix, as bytes on the wire."""
    rng = random.Random(seed)
    out: list[bytes] = []
    msg = 0
    while len(out) < n:
        msg += 1
        port, client = ("25", "172.18.0.5") if msg % 2 else ("2526", "172.18.0.25")
        instance = f"{prefix}.{msg:x}.{rng.getrandbits(32):x}.0"
        count = rng.randint(1, 4)
        rcpts = [
            f"user{rng.getrandbits(24)}@yahoo.com" if rng.random() < 0.02 else f"user{rng.getrandbits(24)}@carrier.example"
            for _ in range(count)
        ]
        common = dict(server_port=port, client_address=client, instance=instance)
        for r in rcpts:
            out.append(format_request(postfix_request(protocol_state="RCPT", recipient=r, **common)))
        out.append(
            format_request(
                postfix_request(
                    protocol_state="END-OF-MESSAGE",
                    queue_id=f"{msg:010X}",
                    recipient=rcpts[0] if count == 1 else "",
                    recipient_count=str(count),
                    **common,
                )
            )
        )
    return out


CONFIG = """
[general]
state_dir = "{dir}"
log_level = "info"

[policyd]
listen = "127.0.0.1:{port}"
socket = "{dir}/policy.sock"
metrics_listen = "127.0.0.1:{mport}"
{busy_poll}

[streams.trucking]
ramp = {trucking_ramp}
daily_cap = {trucking_daily}
start_date = 2026-01-01
[streams.trucking.match]
server_port = [25]

[streams.healthcare]
ramp = {healthcare_ramp}
daily_cap = {healthcare_daily}
start_date = 2026-01-01
[streams.healthcare.match]
server_port = [2526]
"""

#: Every END-OF-MESSAGE is counted: the write path, every time.
WORST_CASE = dict(
    trucking_ramp="[[0, 100000000]]", trucking_daily=1000000000,
    healthcare_ramp="[[0, 100000000]]", healthcare_daily=1000000000,
    caps={"trucking": (100000000, 1000000000), "healthcare": (100000000, 1000000000)},
)  # fmt: skip
#: The brief's ramps on a late warmup day (300/h and 1,000/h): after the first few hundred messages
#: most END-OF-MESSAGE requests are over the cap and deferred, as when Listmonk pushes a campaign.
BRIEF_CAPS = dict(
    trucking_ramp="[[0, 50], [2, 150], [4, 250], [7, 300]]", trucking_daily=4000,
    healthcare_ramp="[[0, 100], [2, 300], [5, 600], [10, 1000]]", healthcare_daily=10000,
    caps={"trucking": (300, 4000), "healthcare": (1000, 10000)},  # in force on the warmup day of the run
)  # fmt: skip


def prefill_rows(caps: dict[str, tuple[int, int]], now: float) -> list[tuple[str, str, int, float]]:
    """A day of earlier traffic as (instance, stream, recipients, at) rows, oldest first.

    Per stream: the last hour holds min(hourly cap, 3,600) one-recipient messages spread
    evenly (the hour at its cap when the cap is lower), and every minute of the 23 hours
    before holds a few more, keeping the day under three quarters of its cap. Separate from
    :func:`prefill` so that another daemon's store (the anchor benchmark's) can be given the
    very same day.
    """
    rows = []
    for stream, (hourly, daily) in caps.items():
        in_hour = min(hourly, 3600)
        rows += [(f"prefill-{stream}-h{i}", stream, 1, now - 3600 + (i + 0.5) * 3600 / in_hour) for i in range(in_hour)]
        per_minute = max(1, min(5, int((0.75 * daily - in_hour) / 1380)))
        rows += [(f"prefill-{stream}-d{m}", stream, per_minute, now - m * 60) for m in range(61, 1441)]
    rows.sort(key=lambda r: r[3])
    return rows


def prefill(database: Path, caps: dict[str, tuple[int, int]], now: float) -> int:
    """Fill the store with a day of earlier traffic, as after a day of sending; return the messages added.

    The rows are :func:`prefill_rows`'. They go into the messages table, so the store's own
    trigger fills its buckets whatever its schema.
    """
    rows = prefill_rows(caps, now)
    conn = sqlite3.connect(database, timeout=10, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO messages (instance, stream, state, recipients, at) VALUES (?, ?, 'counted', ?, ?)", rows
    )
    conn.execute("COMMIT")
    conn.close()
    return len(rows)


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def line(name: str, res: dict[str, float]) -> None:
    print(
        f"{name:62s} {res['rate']:7.0f} req/s  p50 {res['p50_ms']:.3f} ms  "
        f"p99 {res['p99_ms']:.3f} ms  max {res['max_ms']:.1f} ms  CPU {res['cpu_us']:.0f} us/decision"
        f" (polling {res['poll_us']:.0f})"
        f"  client CPU {res['client_cpu_us']:.0f} us/request, send lag p99 {res['lag_p99_ms']:.2f} ms, steal {res['steal_pct']:.0f}%"
    )


def run_daemon(
    caps: dict[str, object],
    label: str,
    plan: list[tuple[str, int, float | None, str]],
    args: argparse.Namespace,
    busy: bool = False,
) -> list[tuple[str, dict[str, float]]]:
    """Start ``sendguard policyd`` with ``caps``, run the scenarios of ``plan`` against it, stop it.

    ``busy``: fill the store with a day of earlier traffic before the first request.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-policyd-"))
    port, mport = free_port(), free_port()
    busy_poll = "" if args.busy_poll_usec is None else f"busy_poll_usec = {args.busy_poll_usec}"
    (workdir / "bench.toml").write_text(
        CONFIG.format(dir=workdir, port=port, mport=mport, busy_poll=busy_poll, **caps)  # type: ignore[arg-type]
    )
    exe = shutil.which("sendguard") or os.path.join(os.path.dirname(sys.executable), "sendguard")
    results = []
    with open(workdir / "policyd.log", "wb") as log:
        daemon = subprocess.Popen([exe, "policyd", "--config", str(workdir / "bench.toml")], stderr=log)
        try:
            wait_port(port)
            if busy:
                prefill(workdir / "policyd.sqlite", caps["caps"], time.time())  # type: ignore[arg-type]
            single_connection(port, build_requests(2000, 0, f"warm-{label}"))
            for i, (name, conns, rate, transport) in enumerate(plan, 1):
                reqs = build_requests(args.requests, i, f"{label}{i}")[: args.requests]
                address = str(workdir / "policy.sock") if transport == "unix" else port
                res = scenario(address, reqs, conns, rate, args, daemon.pid, mport)
                results.append((f"{label}: {name}", res))
                line(f"{label}: {name}", res)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
    shutil.rmtree(workdir, ignore_errors=True)
    return results





def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """An event loop for a client process: uvloop's when installed (``auto``) or asked for, else asyncio's."""
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class _PacedConnection(asyncio.Protocol):
    """One client connection as one smtpd process uses it: one request in flight, the next when its reply is in.

    Paced: request k is sent at ``start + k * pace`` (or at once, if its reply came in later than that).
    Each connection gets its own ``start``, so the connections' requests interleave evenly instead of all
    arriving at the same instant (smtpd processes are not synchronised; bursts of 20 would measure the client).
    """

    def __init__(
        self, requests: list[bytes], latencies: list[float], lags: list[float], pace: float | None, start: float
    ) -> None:
        self.requests = requests
        self.latencies = latencies
        self.lags = lags
        self.pace = pace
        self.next_at = start
        self.index = 0
        self.buf = b""
        self.t0 = 0.0
        self.finished = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        if self.pace is None:  # closed loop: every connection starts at the common start
            self.loop.call_at(self.next_at, self._send, None)
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self.index == len(self.requests):
            self.finished = time.monotonic()
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        if self.pace is not None:
            if self.next_at > self.loop.time():
                self.loop.call_at(self.next_at, self._send, self.next_at)
                self.next_at += self.pace
                return
            self.next_at += self.pace
        self._send()

    def _send(self, planned: float | None = None) -> None:
        if planned is not None:
            # How late the client itself sends a request that was due at ``planned``: its own jitter.
            self.lags.append(max(0.0, time.monotonic() - planned))
        self.t0 = time.perf_counter()
        self.transport.write(self.requests[self.index])  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.buf.endswith(b"\n\n"):
            return
        self.latencies.append(time.perf_counter() - self.t0)
        if not self.buf.startswith(b"action="):
            self.done.set_exception(RuntimeError(f"bad reply {self.buf!r}"))
            self.transport.close()
            return
        self.buf = b""
        self.index += 1
        self._schedule()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"daemon closed the connection: {exc}"))


async def _share(
    address: int | str, requests: list[bytes], conns: int, pace: float | None, start: float, stagger: float
) -> tuple[list[float], list[float], float]:
    per = [requests[i::conns] for i in range(conns)]
    lat: list[float] = []
    lags: list[float] = []
    loop = asyncio.get_running_loop()
    protos = []
    for i, p in enumerate(per):
        factory = lambda p=p, i=i: _PacedConnection(p, lat, lags, pace, start + i * stagger)  # noqa: E731
        if isinstance(address, str):
            _, proto = await loop.create_unix_connection(factory, address)
        else:
            _, proto = await loop.create_connection(factory, "127.0.0.1", address)
        protos.append(proto)
    await asyncio.gather(*(proto.done for proto in protos))
    return lat, lags, max(proto.finished for proto in protos)


def run_share(args: tuple) -> tuple[list[float], list[float], float, float]:
    """One client process (a pool worker): its connections on one event loop.

    Returns the latencies, how late each paced request was sent, the process's CPU seconds and when
    (monotonic) its last reply came in.
    """
    loop_name, *rest = args
    cpu0 = time.process_time()
    loop = new_loop(loop_name)
    try:
        lat, lags, finished = loop.run_until_complete(_share(*rest))
    finally:
        loop.close()
    return lat, lags, time.process_time() - cpu0, finished


def single_connection(address: int | str, requests: list[bytes]) -> list[float]:
    """One blocking connection, as one smtpd process uses it: send, wait for the reply, repeat.

    ``address``: a TCP port on 127.0.0.1, or the path of a unix socket.
    """
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
    else:
        sock = socket.create_connection(("127.0.0.1", address))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat = []
    for req in requests:
        t0 = time.perf_counter()
        sock.sendall(req)
        buf = b""
        while not buf.endswith(b"\n\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("daemon closed the connection")
            buf += chunk
        lat.append(time.perf_counter() - t0)
    sock.close()
    return lat


def echo_server(port: int, path: str, busy_poll_usec: int | None) -> None:
    """Run the do-nothing baseline (in a child process): the daemon's own socket loop, answering DUNNO unread."""
    from sendguard_policyd.server import PolicyServer
    from sendguard_policyd.settings import PolicydSettings

    class DoNothing(PolicyServer):
        def _answer(self, conn, block):  # type: ignore[no-untyped-def]
            self._send(conn, b"action=DUNNO\n\n")

        def _tick(self) -> None:
            pass  # no decider, no periodic work

    usec = PolicydSettings.busy_poll_usec if busy_poll_usec is None else busy_poll_usec
    server = DoNothing(None, 330.0, "DUNNO", usec / 1e6)  # type: ignore[arg-type]
    server.listen_tcp("127.0.0.1", port)
    server.listen_unix(path, 0o600)
    server.serve_forever()


def box_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the whole machine so far (Linux /proc/stat).

    Steal is time the hypervisor ran something else while a vCPU of this VM had work: during it
    nothing here runs, client or daemon, so it shows up as latency no code here can remove.
    """
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return fields[7], sum(fields)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_polled(mport: int | None) -> float:
    """The daemon's sendguard_policyd_busy_poll_seconds_total, scraped from its metrics endpoint (0 without one)."""
    if mport is None:
        return 0.0
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    for text in body.splitlines():
        if text.startswith("sendguard_policyd_busy_poll_seconds_total "):
            return float(text.split()[1])
    return 0.0


def scenario(
    address: int | str,
    requests: list[bytes],
    conns: int,
    total_rate: float | None,
    args: argparse.Namespace,
    pid: int,
    mport: int | None = None,
) -> dict[str, float]:
    """Run one scenario; with several connections the client is ``args.client_procs`` processes.

    ``address``: a TCP port on 127.0.0.1 or a unix socket path.
    Also measures the client's own CPU per request, to show whether the client could be the bottleneck,
    and the part of the daemon's CPU it spent busy polling (from its metrics endpoint ``mport``).
    """
    procs = args.client_procs
    port = address
    polled0 = busy_polled(mport)
    steal0, total0 = box_ticks()
    cpu0 = cpu_seconds(pid)
    if conns == 1:
        started = time.monotonic()
        c0 = time.process_time()
        lat = single_connection(address, requests)
        client_cpu = time.process_time() - c0
        elapsed = time.monotonic() - started
        lags = []
    else:
        shares = [requests[i::procs] for i in range(procs)]
        per_proc = conns // procs
        pace = per_proc * procs / total_rate if total_rate else None
        # A common start a moment ahead (monotonic time is shared by the processes); connection i of
        # process p starts (i * procs + p) / total_rate later, so the offered load is even, not bursts.
        begin = time.monotonic() + 0.5
        step = 1 / total_rate if total_rate else 0.0
        jobs = [(args.client_loop, port, sh, per_proc, pace, begin + p * step, procs * step) for p, sh in enumerate(shares)]
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(run_share, jobs)
        lat = [x for part, _, _, _ in parts for x in part]
        lags = sorted(x for _, part, _, _ in parts for x in part)
        client_cpu = sum(c for _, _, c, _ in parts)
        # From the common start to the last reply: process start-up and connecting are not counted.
        elapsed = max(f for _, _, _, f in parts) - begin
    cpu = cpu_seconds(pid) - cpu0
    steal1, total1 = box_ticks()
    polled = busy_polled(mport) - polled0
    lat.sort()
    return {
        "cpu_us": cpu / len(lat) * 1e6,
        "poll_us": polled / len(lat) * 1e6 if mport is not None else float("nan"),
        "client_cpu_us": client_cpu / len(lat) * 1e6,
        "requests": len(lat),
        "seconds": elapsed,
        "rate": len(lat) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
        "max_ms": lat[-1] * 1000,
        # Paced runs only: the 99th percentile of how late the client sent a request (its own jitter).
        # Share of the machine's CPU time (both vCPUs, busy or idle) stolen by the hypervisor meanwhile.
        "steal_pct": 100 * (steal1 - steal0) / max(1, total1 - total0),
        "lag_p99_ms": lags[int(len(lags) * 0.99) - 1] * 1000 if lags else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30000, help="requests per scenario")
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes for the 20-connection runs")
    parser.add_argument(
        "--client-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the 20-connection clients' event loop (auto = uvloop if installed: the cheaper client)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run everything this many times (a new daemon each time) and report, per scenario, the run with"
        " the median daemon CPU per decision, with the range over all runs (default 3)",
    )
    parser.add_argument(
        "--store",
        nargs="+",
        choices=("fresh", "busy"),
        default=["fresh", "busy"],
        help="run against a fresh store, a busy one (a day of earlier traffic), or both (default)",
    )
    parser.add_argument(
        "--busy-poll-usec",
        type=int,
        help="the daemon's policyd.busy_poll_usec (default: the daemon's own default); 0 turns busy polling off",
    )
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="run only the scenarios whose name contains TEXT (e.g. 'paced'), baseline included",
    )
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    steal0, total0 = box_ticks()
    plan = [
        ("1 connection, closed loop", 1, None, "tcp"),
        ("1 connection on the unix socket, closed loop", 1, None, "unix"),
        ("20 connections, closed loop", 20, None, "tcp"),
        ("20 connections, paced at 5,000 req/s", 20, 5000.0, "tcp"),
    ]
    if args.only:
        plan = [step for step in plan if args.only in step[0]]
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.repeat):
        for store in args.store:
            busy = store == "busy"
            suffix = ", busy store" if busy else ""
            for caps, label in ((WORST_CASE, "every message counted"), (BRIEF_CAPS, "brief caps")):
                for name, res in run_daemon(caps, f"{label}{suffix}", plan, args, busy):
                    runs.setdefault(name, []).append(res)

        # The same client against a server that does nothing: how much of the above is this box.
        bport = free_port()
        bpath = os.path.join(tempfile.mkdtemp(prefix="bench-policyd-"), "baseline.sock")
        baseline = multiprocessing.get_context("fork").Process(
            target=echo_server, args=(bport, bpath, args.busy_poll_usec), daemon=True
        )
        baseline.start()
        wait_port(bport)
        for name, conns, rate, transport in plan:
            reqs = build_requests(args.requests, 9, "b")[: args.requests]
            res = scenario(bpath if transport == "unix" else bport, reqs, conns, rate, args, baseline.pid)
            runs.setdefault(f"baseline, do-nothing server: {name}", []).append(res)
            line(f"baseline, do-nothing server: {name}", res)
        baseline.kill()
    results = [(name, median_run(rs)) for name, rs in runs.items()]
    load_after = os.getloadavg()[0]
    steal1, total1 = box_ticks()
    steal_pct = 100 * (steal1 - steal0) / max(1, total1 - total0)
    print(f"load average before {load_before:.2f}, after {load_after:.2f}; CPU steal {steal_pct:.1f}%")
    if args.out:
        write_results(args, results, load_before, load_after, steal_pct, runs)
    for name, res in results:
        print(f"{verdict(name, res):>16}  {name}")
    return 0


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median daemon CPU per decision, with the CPU range of all runs added."""
    ordered = sorted(runs, key=lambda r: r["cpu_us"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["cpu_min"], chosen["cpu_max"], chosen["runs"] = ordered[0]["cpu_us"], ordered[-1]["cpu_us"], len(runs)
    return chosen


#: Everything after this line in the results file is hand-written and kept when the file is rewritten.
NOTES_MARKER = "<!-- Notes below are written by hand and kept when the benchmark rewrites this file. -->"
#: The target (issue 2): decisions per second and the p99 latency bound.
TARGET_RATE = 5000.0
TARGET_P99_MS = 2.0


def verdict(name: str, res: dict[str, float]) -> str:
    """Whether one row meets the target, judged as that kind of run can show it."""
    if name.startswith("baseline"):
        return "(floor)"
    # Paced runs offer exactly 5,000/s; the client's own pacing falls short by up to a few percent when the
    # hypervisor steals its CPU (99.4-100% achieved at low steal, down to 97.5% at 29%): 95% counts as keeping up.
    rate_ok = res["rate"] >= TARGET_RATE * (0.95 if "paced" in name else 1.0)
    if "20 connections, closed loop" in name:
        # 20 requests always in flight: latency is queueing (20 / throughput), only the ceiling counts here.
        return f"ceiling {'met' if rate_ok else 'NOT met'}"
    p99_ok = res["p99_ms"] < TARGET_P99_MS
    return "met" if rate_ok and p99_ok else "NOT met" + ("" if rate_ok else " (rate)") + ("" if p99_ok else " (p99)")


def paced_runs_table(runs: dict[str, list[dict[str, float]]]) -> str:
    """Every paced run (not only the median), by the CPU the hypervisor stole meanwhile.

    The paced p99 is the figure steal moves most: the median row alone cannot show whether a miss
    came with steal or without it.
    """
    paced = [(name, res) for name, rs in runs.items() if "paced" in name for res in rs]
    if not paced:
        return ""
    lines = [
        "\n## Every paced run, by steal\n\n"
        "| steal | scenario | p99 | p50 | decisions/s | daemon CPU per decision | target |\n"
        "|---:|---|---:|---:|---:|---:|---|\n"
    ]
    for name, res in sorted(paced, key=lambda item: (item[1]["steal_pct"], item[0])):
        lines.append(
            f"| {res['steal_pct']:.1f}% | {name} | {res['p99_ms']:.2f} ms | {res['p50_ms']:.2f} ms | "
            f"{res['rate']:,.0f} | {res['cpu_us']:.0f} µs | {verdict(name, res)} |\n"
        )
    daemon = [(name, res) for name, res in paced if not name.startswith("baseline")]
    quiet = [(name, res) for name, res in daemon if res["steal_pct"] < 0.5]
    stolen = [(name, res) for name, res in daemon if res["steal_pct"] >= 0.5]

    def share(group: list[tuple[str, dict[str, float]]]) -> str:
        return f"{sum(1 for name, res in group if verdict(name, res) == 'met')} of {len(group)}"

    lines.append(
        f"\nThe daemon's paced runs met the target in {share(daemon)}: {share(quiet)} while the hypervisor stole "
        f"under 0.5% of the CPU, {share(stolen)} with more.\n"
    )
    return "".join(lines)


def busy_poll_setting(args: argparse.Namespace) -> str:
    """The daemon's busy_poll_usec in this run, for the results text."""
    from sendguard_policyd.settings import PolicydSettings

    if args.busy_poll_usec is None:
        return f"{PolicydSettings.busy_poll_usec} (the default)"
    return str(args.busy_poll_usec)


def _fmt_poll(res: dict[str, float]) -> str:
    return "-" if res["poll_us"] != res["poll_us"] else f"{res['poll_us']:.0f} µs"


def client_loop_name(choice: str) -> str:
    """The event loop the 20-connection clients actually run on for ``--client-loop choice``."""
    loop = new_loop(choice)
    loop.close()
    return type(loop).__module__.split(".")[0]


def write_results(
    args: argparse.Namespace,
    results: list[tuple[str, dict[str, float]]],
    load_before: float,
    load_after: float,
    steal_pct: float,
    runs: dict[str, list[dict[str, float]]],
) -> None:
    """Write the Markdown results file (keeping its hand-written notes, if any)."""
    notes = ""
    if args.out.exists():
        old = args.out.read_text()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER) :]
    with open(args.out, "w") as out:
        out.write("# Policy daemon benchmark\n\n")
        out.write(
            f"`python3 benchmarks/bench_policyd.py {' '.join(sys.argv[1:])}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Each row is the median of {args.repeat} runs (a new "
            "daemon each time) by daemon CPU per decision; the CPU range over all runs is in brackets.\n\n"
        )
        out.write(
            f"Machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL). Load average {load_before:.2f} before and "
            f"{load_after:.2f} after the run: the box is shared with other work, so the figures move a lot between "
            "runs. Daemon and clients are separate processes on the same host (the clients: one blocking socket "
            f"for 1 connection, {args.client_procs} processes on {client_loop_name(args.client_loop)} for 20), over TCP on "
            "127.0.0.1 (one row over the daemon's unix socket); the daemon runs its own epoll loop with "
            f"busy_poll_usec = {busy_poll_setting(args)} and "
            "logs deferred and held messages at INFO (counted ones at DEBUG, not written) to a file. "
            "CPU stolen by the hypervisor over "
            f"the whole run: {steal_pct:.1f}% of the machine's CPU time.\n\n"
        )
        out.write(
            "Mix: per message one RCPT request per recipient and one END-OF-MESSAGE request; 1-4 recipients per "
            "message (about 71% RCPT, 29% END-OF-MESSAGE); two streams alternating; about 2% of recipients in the "
            "Yahoo family (HOLD, recorded in SQLite). Full Postfix 3.7 attribute set. *Every message counted*: caps "
            "set so high that every END-OF-MESSAGE is a counted check-and-add (the write path every time). "
            "*Brief caps*: trucking 300/h and healthcare 1,000/h, so after the first ~1,300 messages END-OF-MESSAGE "
            "requests are over the cap and deferred (check only), as during a campaign push.\n\n"
        )
        out.write(
            "| scenario | requests | decisions/s | p50 | p99 | max | daemon CPU per decision | of it polling | steal | target |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        )
        for name, res in results:
            out.write(
                f"| {name} | {res['requests']} | {res['rate']:,.0f} | {res['p50_ms']:.2f} ms | "
                f"{res['p99_ms']:.2f} ms | {res['max_ms']:.1f} ms | {res['cpu_us']:.0f} µs "
                f"({res['cpu_min']:.0f}-{res['cpu_max']:.0f}) | {_fmt_poll(res)} | {res['steal_pct']:.0f}% | "
                f"{verdict(name, res)} |\n"
            )
        out.write(
            "\n*Closed loop* sends the next request as soon as the reply arrives: it measures the ceiling, and "
            "with 20 connections each request waits behind the others in flight, so latency there is queueing "
            "(20 / throughput). *Paced* offers 5,000 requests/s in total (250/s per connection), the target load; "
            "when the daemon cannot keep up, the achieved rate is lower than offered. *Daemon CPU per decision* "
            "is the daemon process's user+system CPU time divided by the requests, the figure least disturbed by "
            "the other load: one core at 100% serves about 1,000,000 / that many decisions per second. *Of it "
            "polling*: the part of that CPU the daemon spent busy polling for the next request with nothing to do "
            "(its sendguard_policyd_busy_poll_seconds_total): CPU spent to save wake-ups, not work. The "
            "baseline rows are the daemon's own socket loop (same busy polling) answering DUNNO without parsing "
            "anything: the floor set by Python and the loopback sockets on this box at that moment. *Target*: at least 5,000 decisions/s with p99 under "
            "2 ms (paced: at least 95% of the offered 5,000/s achieved, as the client's own pacing falls a little "
            "short when its CPU is stolen); for 20 connections in a closed loop only the "
            "throughput ceiling is judged, since its latency is queueing by construction. *Busy store*: the store "
            "holds a day of earlier traffic before the run (see the script's docstring). *Steal*: the share of the "
            "machine's CPU time the hypervisor gave to other guests during that run; while a vCPU is stolen nothing "
            "here runs, so a few percent already shows as milliseconds at p99.\n"
        )
        out.write(paced_runs_table(runs))
        if notes:
            out.write("\n" + notes)


if __name__ == "__main__":
    sys.exit(main())
