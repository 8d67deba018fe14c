"""The fault-and-fuzz campaign, full version (not run by CI): prints the figures that must stay zero.

    .venv/bin/python tests/soak/run_campaign.py                       # the full campaign
    .venv/bin/python tests/soak/run_campaign.py --policy-requests 100000 --messages 1000 --large 5 --postfix-messages 1000

1. Policy protocol: ``--policy-requests`` fuzzed requests (valid and broken, pipelined over
   ``--connections`` connections, the stream cut at random boundaries) against a real
   ``sendguard policyd`` process with cap 100 (``over_cap = "defer"``); counts crashes, hangs
   (requests unanswered within 60 s), wrong or out-of-order replies and cap overshoots.
2. MIME: ``--messages`` fuzzed campaign messages through a real ``sendguard milter`` process
   over the milter protocol; counts crashes, hangs, bodies changed although no link could need
   a repair, and signatures dkimpy cannot verify.
3. Memory: ``--large`` messages of 10 MB through the same milter, one at a time, with its RSS
   sampled throughout (start, peak, end).
4. Stopping: ``--stop-cycles`` times, a policy daemon is started, sent 100 fuzzed requests and
   SIGTERMed; a daemon still running 10 s later has ignored SIGTERM (it is then killed).
5. Postfix: ``--postfix-messages`` Listmonk-shaped messages over ``--postfix-sessions`` SMTP
   sessions through a private Postfix instance on loopback (postfix-snippets/, a real milter
   and policy daemon, smtp-sink behind it; tests/soak/postfix_phase.py), RSS sampled; counts
   refusals, deliveries, crashes, hangs, the policy count against what Postfix accepted, and on
   a sample of what the sink stored, unverifiable signatures and bodies changed without cause.
   Needs root; installs Debian's postfix if it is missing (the system instance stays off).

Every loop is bounded in count and in time (``--time-limit`` seconds per phase); all traffic
goes to 127.0.0.1. The generators are the fast tests' (tests/fuzz).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SUPPORT = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(SUPPORT))

from ports import free_port  # noqa: E402
from sendguard_testing.milter_client import MilterClient, MilterProcess, final_message  # noqa: E402
from sendguard_testing.mime_fuzz import could_need_repair, message, unverifiable_signatures, write_milter_config  # noqa: E402
from sendguard_testing.rss import rss_mb  # noqa: E402
from sendguard_testing.policy_fuzz import (  # noqa: E402
    BAD_ACTION,
    Figures,
    check,
    drive,
    plan_connection,
    policyd_process,
    stopped_on_sigterm,
)
from postfix_phase import postfix_phase, report  # noqa: E402

CAP = 100
POLICY_CONFIG = """[general]
state_dir = "{dir}"

[policyd]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics}"
database = "{dir}/policyd.sqlite"
bad_request_action = "{bad}"

[streams.trucking]
hourly_ceiling = {cap}
daily_cap = 100000
over_cap = "defer"
[streams.trucking.match]
server_port = [25]
"""
def start_policyd(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A ``sendguard policyd`` process with the campaign's config in ``work``, and its port."""
    port = free_port()
    config = work / "policyd.toml"
    config.write_text(POLICY_CONFIG.format(dir=work, port=port, metrics=free_port(), bad=BAD_ACTION, cap=CAP))
    return policyd_process(config, port, work / "policyd.log"), port


def stop_phase(work: Path, cycles: int, seed: int, limit: float) -> dict[str, int]:
    """Start, fuzz briefly and SIGTERM the policy daemon ``cycles`` times: how often it ignored SIGTERM."""
    rng = random.Random(seed)
    out = {"cycles": 0, "ignored": 0, "faults": 0}
    started = time.monotonic()
    for n in range(cycles):
        if time.monotonic() - started > limit:
            break
        folder = work / f"stop{n}"
        folder.mkdir()
        proc, port = start_policyd(folder)
        plans = [plan_connection(rng, c, 5, 0.3, f"stop{n}") for c in range(20)]
        out["faults"] += check(plans, drive(port, plans, rng, 300, timeout=30), CAP).faults
        out["ignored"] += not stopped_on_sigterm(proc, 10)
        out["cycles"] += 1
    return out


def policy_phase(work: Path, total: int, connections: int, seed: int, limit: float) -> dict[str, object]:
    proc, port = start_policyd(work)
    rng = random.Random(seed)
    figures, rounds, rss = Figures(), 0, [rss_mb(proc.pid)]
    crashes = 0
    ignored_sigterm = 0
    started = time.monotonic()
    try:
        while figures.requests < total and time.monotonic() - started < limit:
            per = min(500, max(1, (total - figures.requests) // connections))
            plans = [plan_connection(rng, n, per, rng.choice([0.1, 0.3, 0.6]), f"r{rounds}") for n in range(connections)]
            try:
                replies = drive(port, plans, rng, rng.choice([16, 300, 1500, 65536]), timeout=60)
            except OSError:
                replies = [[] for _ in plans]
                figures.connection_errors += 1
            figures.add(check(plans, replies, CAP, already_counted=figures.capped_passed))
            rounds += 1
            rss.append(rss_mb(proc.pid))
            if proc.poll() is not None:
                break
            if rounds % 20 == 0:
                print(f"  policy: {figures.requests:,} requests, {time.monotonic() - started:.0f} s", flush=True)
    finally:
        elapsed = time.monotonic() - started
        if proc.poll() is not None:
            crashes = 1
        ignored_sigterm = not stopped_on_sigterm(proc, 30)
    return {"figures": figures, "rounds": rounds, "seconds": elapsed, "crashes": crashes, "rss": rss, "ignored_sigterm": ignored_sigterm}


def milter_phase(work: Path, messages: int, large: int, seed: int, limit: float) -> dict[str, object]:
    port, metrics = free_port(), free_port()
    config, dns = write_milter_config(work, f'listen = "inet:127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics}"\n')
    proc = MilterProcess(config, work / "milter.log", port, metrics)
    pid = proc.proc.pid
    out = {"messages": 0, "signed": 0, "changed": 0, "changed_without_cause": 0, "unverifiable": 0, "hangs": 0,
           "crashes": 0, "results": {}, "rss": [rss_mb(pid)], "large": 0, "large_rss": []}  # fmt: skip
    rng = random.Random(seed)
    client: MilterClient | None = None
    started = time.monotonic()

    def connect() -> MilterClient:
        c = MilterClient(port, timeout=60)
        # Postfix's milter client writes each command whole; without this a macro packet
        # followed by its command waits out the delayed ACK (40 ms) on every step.
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.connect("172.18.0.5", 40000, hostname="listmonk")
        return c

    try:
        for n in range(messages):
            if time.monotonic() - started > limit:
                break
            if client is None or n % 50 == 0:  # smtpd sends a few messages per connection
                if client is not None:
                    client.close()
                client = connect()
            msg = message(rng, rng.choice([0.0, 0.5, 1.0]))
            body = re.sub(rb"(?<!\r)\n", b"\r\n", msg.body)
            raw = b"".join(k.encode() + b": " + v + b"\r\n" for k, v in msg.headers) + b"\r\n" + body
            try:
                result = client.message(raw, "bounce@send.example.net", queue_id=f"F{n:09X}")
            except (OSError, AssertionError) as exc:
                if proc.proc.poll() is not None:
                    out["crashes"] += 1
                    break
                out["hangs" if isinstance(exc, socket.timeout) else "crashes"] += 1
                client = None
                continue
            out["messages"] += 1
            kind = result["result"][:1].decode()
            out["results"][kind] = out["results"].get(kind, 0) + 1
            if result["body"] is not None and result["body"] != result["raw_body"]:
                out["changed"] += 1
                out["changed_without_cause"] += not could_need_repair(msg)
            sigs = sum(1 for name, _, _ in result["added"] if name == "DKIM-Signature")
            out["signed"] += bool(sigs)
            if sigs:
                out["unverifiable"] += unverifiable_signatures(final_message(result), sigs, dns)
            if n % 500 == 0:
                out["rss"].append(rss_mb(pid))
                print(f"  milter: {n:,} messages, {time.monotonic() - started:.0f} s", flush=True)
        out["rss"].append(rss_mb(pid))
        line = ("Lane rates: Dallas to Atlanta, dry van, 42,000 lb; https://example.net/order?id=5 " * 2)[:150] + "\r\n"
        big = line.encode() * (10 * 1024 * 1024 // len(line))
        headers = b"From: <noreply@send.example.net>\r\nTo: <d@carrier.example.org>\r\nSubject: big\r\nList-Unsubscribe: <mailto:u@send.example.net>\r\nContent-Type: text/plain\r\n\r\n"
        for n in range(large):
            if time.monotonic() - started > 2 * limit:
                break
            if client is None:
                client = connect()
            try:
                client.message(headers + big, "bounce@send.example.net", queue_id=f"L{n:09X}")
            except (OSError, AssertionError):
                out["crashes" if proc.proc.poll() is not None else "hangs"] += 1
                client = None
                continue
            out["large"] += 1
            out["large_rss"].append(rss_mb(pid))
    finally:
        if client is not None:
            try:
                client.close()
            except OSError:
                pass
        out["seconds"] = time.monotonic() - started
        if proc.proc.poll() is not None:
            out["crashes"] += 1
        proc.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; exit 1 when any figure that must be zero is not."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy-requests", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=100, help="10 MB messages through the milter, RSS sampled")
    ap.add_argument("--stop-cycles", type=int, default=30, help="start, fuzz briefly, SIGTERM the policy daemon")
    ap.add_argument("--postfix-messages", type=int, default=100_000,
                    help="Listmonk-shaped messages through a private Postfix instance (0: skip)")  # fmt: skip
    ap.add_argument("--postfix-sessions", type=int, default=10,
                    help="concurrent SMTP sessions into that Postfix (Listmonk's default: 10 connections)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--time-limit", type=float, default=1800.0, help="seconds per phase at most")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sendguard-campaign-"))
    began = datetime.now(timezone.utc)
    print(f"sendguard campaign {began:%Y-%m-%d %H:%M} UTC on {platform.node()}: {platform.platform()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)  # fmt: skip
    try:
        (work / "policy").mkdir()
        (work / "milter").mkdir()
        (work / "stop").mkdir()
        (work / "postfix").mkdir()
        pol = policy_phase(work / "policy", args.policy_requests, args.connections, args.seed, args.time_limit)
        mil = milter_phase(work / "milter", args.messages, args.large, args.seed, args.time_limit)
        stops = stop_phase(work / "stop", args.stop_cycles, args.seed, args.time_limit)
        post = None
        if args.postfix_messages:
            work.chmod(0o755)  # the private Postfix's daemons run as the postfix user, inside it
            post = postfix_phase(work / "postfix", args.postfix_messages, args.postfix_sessions, args.seed, args.time_limit)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    f: Figures = pol["figures"]  # type: ignore[assignment]
    prss, mrss, lrss = pol["rss"], mil["rss"], mil["large_rss"] or [0.0]
    zero = {
        "policy daemon crashes": pol["crashes"],
        "policy requests unanswered (hangs)": f.missing,
        "wrong or out-of-order replies": f.wrong + f.extra,
        "cap overshoots": f.overshoot,
        "capped deferrals with room left": f.undershoot,
        "policy connection errors": f.connection_errors,
        "milter crashes": mil["crashes"],
        "milter hangs": mil["hangs"],
        "bodies changed with no link to repair": mil["changed_without_cause"],
        "unverifiable signatures": mil["unverifiable"],
        "policyd stops with SIGTERM ignored": int(pol["ignored_sigterm"]) + stops["ignored"],
        "wrong replies in the stop cycles": stops["faults"],
    }
    print()
    print(f"policy protocol: {f.requests:,} requests over {args.connections} pipelined connections in {pol['rounds']} rounds, "
          f"{pol['seconds']:.0f} s ({f.requests / max(pol['seconds'], 1e-9):,.0f}/s); {f.replies:,} replies; "
          f"capped END-OF-MESSAGE offered {f.capped_offered:,}, passed {f.capped_passed} (cap {CAP})")  # fmt: skip
    print(f"  policyd RSS: start {prss[0]:.0f} MB, peak {max(prss):.0f} MB, end {prss[-1]:.0f} MB")
    print(f"milter MIME: {mil['messages']:,} fuzzed messages in {mil['seconds']:.0f} s; answers {mil['results']}; "
          f"signed {mil['signed']:,}; bodies changed {mil['changed']:,} (all with a link that could need a repair)")  # fmt: skip
    print(f"  milter RSS over the fuzzed messages: start {mrss[0]:.0f} MB, peak {max(mrss):.0f} MB, end {mrss[-1]:.0f} MB")
    print(f"  {mil['large']} x 10 MB messages one at a time: RSS after the first {lrss[0]:.0f} MB, peak {max(lrss):.0f} MB, after the last {lrss[-1]:.0f} MB")
    print(f"stop cycles: {stops['cycles']} x (start policyd, 100 fuzzed requests, SIGTERM, wait 10 s): "
          f"SIGTERM ignored {stops['ignored']} times (plus {int(pol['ignored_sigterm'])} of 1 after the policy phase, waited 30 s)")  # fmt: skip
    if post is not None:
        zero.update(report(post))
    print()
    for name, value in zero.items():
        print(f"  {name:<42} {value}")
    if f.examples:
        print("  first wrong replies:", *f.examples, sep="\n    ")
    failed = any(zero.values())
    print(f"\n{'FAIL' if failed else 'PASS'}: every figure above must be 0")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
