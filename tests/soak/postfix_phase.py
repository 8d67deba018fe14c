"""The campaign's run through the real Postfix: Listmonk-shaped mail, SMTP in, smtp-sink out.

A private Postfix instance on loopback (``sendguard_testing.postfix_instance``), configured
from ``postfix-snippets/``, with a real ``sendguard milter`` and ``sendguard policyd`` behind
it, relays everything to an smtp-sink that stores each message. ``messages`` campaign
messages (one recipient each) are sent over ``sessions`` concurrent SMTP sessions of
up to ``PER_SESSION`` messages each, from 127.0.0.1 to the bulk stream's port; the stream's caps are
far above ``messages``, so every message must be accepted, signed and delivered.

Counted: what Postfix accepted, what its log says was delivered (``status=sent``), deferred
or bounced, what is left in the queue; milter and policy daemon crashes (the process died),
hangs (Postfix's milter timeouts, SMTP answers that never came); what the policy daemon
counted against the stream and the milter signed, against what Postfix accepted; and on a
sample (every ``sample_every``-th message) the copy the sink stored: signed, the signature
verifies (dkimpy), the body unchanged unless a link in it could need a repair. The milter's
and the policy daemon's RSS is sampled every second.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import random
import re
import smtplib
import socket
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ports import free_port
from prometheus_client.parser import text_string_to_metric_families
from sendguard_testing.milter_client import MilterProcess
from sendguard_testing.mime_fuzz import Fuzzed, could_need_repair, listmonk_message, signing_key, unverifiable_signatures
from sendguard_testing.policy_fuzz import policyd_process, stopped_on_sigterm
from sendguard_testing.postfix_instance import PostfixInstance, split_sink_file
from sendguard_testing.rss import RssSampler

#: Messages per SMTP session: Listmonk keeps a pool of connections and sends many on each.
PER_SESSION = 200
SENDER = "bounce@send.example.net"
#: The stream's config: caps far above what the phase sends, so a refusal is a fault.
CONFIG = """[general]
state_dir = "{dir}"

[policyd]
listen = "127.0.0.1:{policy_port}"
metrics_listen = "127.0.0.1:{policy_metrics}"
database = "{dir}/policyd.sqlite"

[milter]
listen = "inet:127.0.0.1:{milter_port}"
metrics_listen = "127.0.0.1:{milter_metrics}"
trusted_hosts = ["127.0.0.0/8"]

[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{key}"

[signing.table]
"send.example.net" = "send"

[streams.trucking]
ramp = [[0, {cap}]]
start_date = 2026-01-01
hourly_ceiling = {cap}
daily_cap = {cap}
bulk = true
over_cap = "defer"
[streams.trucking.match]
server_port = [{smtpd_port}]
client_address = ["127.0.0.1/32"]
"""


@dataclass
class Sent:
    """What the SMTP clients saw, shared by the sending threads (under ``lock``)."""

    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # "STAGE CODE" of each refusal
    timeouts: int = 0  # an answer Postfix never gave within the client's timeout
    broken_sessions: int = 0  # connection lost or refused
    sessions: int = 0
    sample: dict[int, Fuzzed] = field(default_factory=dict)  # seq -> message, for the accepted sampled ones
    lock: threading.Lock = field(default_factory=threading.Lock)


def metric(url: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` (with these labels) at a Prometheus endpoint;
    None when the endpoint does not answer (its process died, say)."""
    try:
        body = urllib.request.urlopen(url, timeout=30).read().decode()
    except OSError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _sender(port: int, seqs: Iterator[int], per_session: int, sent: Sent, seed: int, sample_every: int, deadline: float,
            stop: threading.Event) -> None:  # fmt: skip
    """One Listmonk connection after another, ``per_session`` messages each, until ``seqs`` runs out."""
    lock = sent.lock
    while not stop.is_set() and time.monotonic() < deadline:
        with lock:
            batch = list(itertools.islice(seqs, per_session))
        if not batch:
            return
        try:
            # 400 s: longer than Postfix's milter_content_timeout (300 s), so a hung milter shows
            # as Postfix's own answer (and its log line), not as the client giving up first.
            smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="listmonk.example.net", timeout=400)
        except OSError:
            with lock:
                sent.broken_sessions += 1
            continue
        with lock:
            sent.sessions += 1
        try:
            for seq in batch:
                msg = listmonk_message(random.Random(seed * 1_000_003 + seq), seq)
                raw = b"".join(k.encode() + b": " + v + b"\r\n" for k, v in msg.headers) + b"\r\n" + msg.body
                rcpt = re.search(rb"<([^>]+)>", dict(msg.headers)["To"]).group(1).decode()
                try:
                    smtp.sendmail(SENDER, [rcpt], raw)
                except smtplib.SMTPRecipientsRefused as exc:
                    with lock:
                        sent.refused[f"RCPT {exc.recipients[rcpt][0]}"] += 1
                    continue
                except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
                    with lock:
                        sent.refused[f"{'DATA' if isinstance(exc, smtplib.SMTPDataError) else 'MAIL'} {exc.smtp_code}"] += 1
                    continue
                with lock:
                    sent.accepted += 1
                    if seq % sample_every == 0:
                        sent.sample[seq] = msg
            smtp.quit()
        except (socket.timeout, TimeoutError):
            with lock:
                sent.timeouts += 1
        except (OSError, smtplib.SMTPException):
            with lock:
                sent.broken_sessions += 1
        finally:
            smtp.close()


def _stored(pf: PostfixInstance) -> tuple[int, dict[int, bytes]]:
    """How many messages the sink stored, and each one's bytes by its sequence number."""
    files = pf.sink_files()
    by_seq: dict[int, bytes] = {}
    for path in files:
        raw = path.read_bytes()
        m = re.search(rb"^Message-Id: <seq\.(\d+)@", raw[:8192], re.M | re.I)
        if m:
            by_seq[int(m.group(1))] = raw
    return len(files), by_seq


def _check_sample(sent: Sent, by_seq: dict[int, bytes], dns) -> dict[str, int]:
    out = {"checked": 0, "missing": 0, "unsigned": 0, "unverifiable": 0, "changed": 0, "changed_without_cause": 0}
    for seq, msg in sorted(sent.sample.items()):
        if seq not in by_seq:
            out["missing"] += 1
            continue
        _, message = split_sink_file(by_seq[seq])
        out["checked"] += 1
        head, _, body = message.partition(b"\r\n\r\n")
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head + b"\r\n\r\n")
        sigs = len(parsed.get_all("DKIM-Signature") or [])
        if not sigs:
            out["unsigned"] += 1
        else:
            out["unverifiable"] += unverifiable_signatures(message, sigs, dns)
        if body != msg.body:
            out["changed"] += 1
            out["changed_without_cause"] += not could_need_repair(msg)
    return out


def postfix_phase(work: Path, messages: int, sessions: int, seed: int, limit: float, sample_every: int = 100) -> dict[str, object]:
    """Send ``messages`` through Postfix -> milter + policy daemon -> smtp-sink; return the figures."""
    work.chmod(0o755)  # Postfix's daemons and the sink run as the postfix user
    key_file, dns = signing_key(work)
    milter_port, policy_port, milter_metrics, policy_metrics = free_port(), free_port(), free_port(), free_port()
    pf = PostfixInstance(work / "postfix", milter_port, policy_port, concurrency=max(20, sessions))
    config = work / "sendguard.toml"
    config.write_text(CONFIG.format(dir=work, policy_port=policy_port, policy_metrics=policy_metrics, milter_port=milter_port,
                                    milter_metrics=milter_metrics, key=key_file, cap=max(1000, 2 * messages),
                                    smtpd_port=pf.smtpd_port))  # fmt: skip
    out: dict[str, object] = {"messages": messages, "sessions": sessions}
    milter = MilterProcess(config, work / "milter.log", milter_port, milter_metrics)
    policyd = policyd_process(config, policy_port, work / "policyd.log")
    sent = Sent()
    sampler = RssSampler({"milter": milter.proc.pid, "policyd": policyd.pid}, lambda: sent.accepted)
    try:
        with pf:
            sampler.start()
            seqs = iter(range(messages))
            stop = threading.Event()
            started = time.monotonic()
            deadline = started + limit
            per_session = max(1, min(PER_SESSION, messages // (4 * sessions)))  # a small run still uses every session
            threads = [threading.Thread(target=_sender, args=(pf.smtpd_port, seqs, per_session, sent, seed, sample_every, deadline, stop))
                       for _ in range(sessions)]  # fmt: skip
            for t in threads:
                t.start()
            next_report = 10_000
            while any(t.is_alive() for t in threads):
                time.sleep(1)
                if milter.proc.poll() is not None or policyd.poll() is not None:
                    stop.set()  # nothing more will pass: a crash is the finding
                if sent.accepted >= next_report:
                    s = sampler.samples[-1][1]
                    print(f"  postfix: {sent.accepted:,} accepted, {time.monotonic() - started:.0f} s, "
                          f"milter RSS {s['milter']:.0f} MB, policyd RSS {s['policyd']:.0f} MB", flush=True)  # fmt: skip
                    next_report += 10_000
            out["send_seconds"] = time.monotonic() - started
            out["left_in_queue"] = pf.wait_idle(timeout=min(600.0, max(60.0, limit / 4)))
            out["seconds"] = time.monotonic() - started
            sampler.stop()
            out["milter_crashed"] = milter.proc.poll() is not None
            out["policyd_crashed"] = policyd.poll() is not None
            out["policy_counted"] = metric(f"http://127.0.0.1:{policy_metrics}/metrics",
                                           "sendguard_policyd_rolling_day_recipients", stream="trucking")  # fmt: skip
            out["signed"] = metric(f"http://127.0.0.1:{milter_metrics}/metrics", "sendguard_milter_signatures_total")
            out["log"] = pf.log_counts()
            out["stored"], by_seq = _stored(pf)
            out["sample"] = _check_sample(sent, by_seq, dns)
    finally:
        sampler.stop()
        milter.stop()
        stopped_on_sigterm(policyd, 30)
    out["sent"], out["rss"], out["sample_every"] = sent, sampler, sample_every
    return out


def _n(value: float | None) -> str:
    return "unknown (its metrics endpoint is gone)" if value is None else f"{value:,.0f}"


def _off(counted: float | None, accepted: int) -> int:
    # An unknown count is as far off as it can be: none of the accepted messages is vouched for.
    return max(accepted, 1) if counted is None else abs(int(counted) - accepted)


def report(p: dict[str, object]) -> dict[str, int]:
    """Print the phase's summary lines; return its figures that must be zero."""
    sent: Sent = p["sent"]  # type: ignore[assignment]
    rss: RssSampler = p["rss"]  # type: ignore[assignment]
    log = p["log"]
    sample = p["sample"]
    delivered = log.statuses.get("sent", 0)
    at10k = f"at 10k {rss.at('milter', 10_000):.0f} MB, " if sent.accepted >= 10_000 else ""
    at10k_p = f"at 10k {rss.at('policyd', 10_000):.0f} MB, " if sent.accepted >= 10_000 else ""
    print(f"postfix: {sent.accepted:,} of {p['messages']:,} messages accepted over {sent.sessions} SMTP sessions "
          f"({p['sessions']} at a time) in {p['send_seconds']:.0f} s ({sent.accepted / max(p['send_seconds'], 1e-9):,.0f}/s); "
          f"Postfix queued {log.received:,}, delivered {delivered:,} (status=sent), the sink stored {p['stored']:,}; "
          f"statuses {dict(log.statuses)}; policy daemon counted {_n(p['policy_counted'])}, milter signed {_n(p['signed'])}")  # fmt: skip
    print(f"  sample of every {p['sample_every']}th message: {sample['checked']:,} checked in the sink, "
          f"{sample['changed']} bodies changed (all with a link that could need a repair)")  # fmt: skip
    print(f"  milter RSS: start {rss.samples[0][1]['milter']:.0f} MB, {at10k}peak {rss.peak('milter'):.0f} MB, "
          f"end {rss.samples[-1][1]['milter']:.0f} MB")  # fmt: skip
    print(f"  policyd RSS: start {rss.samples[0][1]['policyd']:.0f} MB, {at10k_p}peak {rss.peak('policyd'):.0f} MB, "
          f"end {rss.samples[-1][1]['policyd']:.0f} MB")  # fmt: skip
    for line in (log.milter_timeouts + log.milter_errors + log.policy_errors + log.panics)[:5]:
        print("  postfix log:", line)
    return {
        "postfix: messages refused": sum(sent.refused.values()),
        "postfix: messages unanswered or not sent": p["messages"] - sent.accepted - sum(sent.refused.values()),
        "postfix: accepted but not delivered": sent.accepted - delivered,
        "postfix: deferred or bounced": sum(n for s, n in log.statuses.items() if s != "sent"),
        "postfix: left in the queue": p["left_in_queue"],
        "postfix: delivered but not in the sink": abs(delivered - p["stored"]),
        "postfix: milter crashes": int(p["milter_crashed"]),
        "postfix: policy daemon crashes": int(p["policyd_crashed"]),
        "postfix: milter timeouts (hangs)": len(log.milter_timeouts) + sent.timeouts,
        "postfix: other milter or policy errors": len(log.milter_errors) + len(log.policy_errors) + sent.broken_sessions,
        "postfix: Postfix fatal or panic": len(log.panics),
        "postfix: policy count off what was accepted": _off(p["policy_counted"], sent.accepted),
        "postfix: signatures off what was accepted": _off(p["signed"], sent.accepted),
        "postfix: sample unsigned or not in the sink": sample["unsigned"] + sample["missing"],
        "postfix: sample unverifiable signatures": sample["unverifiable"],
        "postfix: sample bodies changed, no link to repair": sample["changed_without_cause"],
    }
