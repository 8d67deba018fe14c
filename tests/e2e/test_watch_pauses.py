"""A receiver's stop signal pauses the stream, through the real Postfix of the stack, and nothing is lost.

The sink answers Yahoo's ``421 4.7.0 [TSS04]`` at RCPT for one test domain
(``SPOOL/defer/DOMAIN``, tests/e2e/images/mailtools/sink.py). Postfix defers the
trucking stream's mail to it and logs the deferrals in its maillog, in the
state folder both containers share; ``sendguard run`` in the sendguard
container follows that log (``[watch]`` in sendguard.test.toml), finds the
queue ids the policy daemon counted for trucking, and the test rule
``e2e_tss04`` (threshold 2, 45 s instead of the built-in three days) pauses the
stream in the counter store. From then on trucking's new mail is held in
Postfix's hold queue with the rule in its reason, while the healthcare stream
goes on; when the pause ends, the releaser in the postfix container lets the
held mail go and it arrives, signed. ``sendguard status`` and the metrics are
read at each step.
"""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import pytest

from e2e_stack import BULK_HEADERS, Counted, Stack, dkim_tags, make_message, metric, queue_id

pytestmark = pytest.mark.container

_CONFIG = tomllib.loads((Path(__file__).parent / "sendguard.test.toml").read_text())
RULE = "e2e_tss04"
#: The test rule's pause, in seconds (its duration is written "45s").
PAUSE = int(_CONFIG["stop_signals"][RULE]["duration"].rstrip("s"))
THRESHOLD = _CONFIG["stop_signals"][RULE]["threshold"]
WINDOW = _CONFIG["policyd"]["test_window_seconds"]
RELEASE_INTERVAL = _CONFIG["release"]["interval"]
#: The domain whose recipients the sink answers with Yahoo's deferral while the switch is on.
BURNING = "burning-carrier.test"
TSS04 = (
    "421 4.7.0 [TSS04] Messages from 172.30.25.4 temporarily deferred due to unexpected volume or user"
    " complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)
SOURCE = {"trucking": ("listmonk", 25), "healthcare": ("listmonk-hc", 2526)}


def _campaign(stack: Stack, stream: str, tag: str, rcpt: str, counted: bool = True):
    injector, port = SOURCE[stream]
    raw = make_message(tag, "Campaign <noreply@send.example.net>", rcpt, headers=BULK_HEADERS)
    before = time.time()
    r = stack.submit(injector, raw, "bounces@send.example.net", [rcpt], port=port)
    assert r.accepted, f"{tag}: {r}"
    if counted:
        stack.ledger.append(Counted(stream, 1, before, time.time()))
    return r


def _status(stack: Stack) -> str:
    return stack.exec("sendguard", "sendguard", "status", "--config", "/etc/sendguard/sendguard.toml", check=False)


def _stream_block(status: str, stream: str) -> str:
    """The lines ``sendguard status`` prints for one stream (from its name to the next stream's)."""
    m = re.search(rf"^stream {stream}\b.*?(?=^stream |\Z)", status, re.M | re.S)
    assert m, f"sendguard status shows no stream {stream}:\n{status}"
    return m[0]


def _wait(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(every)


def _wait_for_empty_window(stack: Stack, stream: str) -> None:
    _wait(f"the {stream} window empties",
          lambda: metric(stack.scrape(), "sendguard_policyd_rolling_hour_recipients", stream=stream) == 0,
          WINDOW + 10)  # fmt: skip


def test_tss04_deferrals_pause_the_stream_hold_its_mail_and_release_it_after_the_pause(stack: Stack, token: str):
    switch = stack.spool / "defer" / BURNING
    burned: list[str] = []
    try:
        _pause_and_release(stack, token, switch, burned)
    finally:
        switch.unlink(missing_ok=True)
        # The deferred ones would be retried for days: nothing of this test stays queued for another.
        for qid in burned:
            stack.exec("postfix", "postsuper", "-d", qid, check=False)


def _pause_and_release(stack: Stack, token: str, switch: Path, burned: list[str]) -> None:
    _wait_for_empty_window(stack, "trucking")
    before = stack.scrape()
    status = _stream_block(_status(stack), "trucking")
    assert "paused          no" in status, status

    # 1. The receiver says stop: Postfix defers trucking's mail to it, and logs the reply.
    switch.parent.mkdir(exist_ok=True)
    switch.write_text(TSS04 + "\n")
    burned.extend(queue_id(_campaign(stack, "trucking", f"{token}-burn-{i}", f"r{i}@{BURNING}"))
                  for i in range(THRESHOLD))  # fmt: skip
    deferred = _wait("Postfix logs the deferrals", lambda: [
        line for line in stack.logs("postfix").splitlines()
        if "status=deferred" in line and "[TSS04]" in line and any(f" {q}: " in line for q in burned)
    ], 60)  # fmt: skip
    signalled = time.time()

    # 2. The watcher in `sendguard run` reads them and the rule pauses the whole stream.
    status = _wait("sendguard status shows the pause", lambda: (
        s if "all of trucking's mail" in (s := _stream_block(_status(stack), "trucking")) else None), 30)  # fmt: skip
    assert f"rule {RULE}" in status and "[TSS04]" in status, status
    assert "stepped back 1 day by e2e_tss04" in status, status
    scraped = _wait("the pause shows in the metrics", lambda: (
        m if metric(m := stack.scrape(), "sendguard_policyd_paused", stream="trucking", operator="all") == 1
        else None), 30)  # fmt: skip

    def delta(name: str, **labels: str) -> float:
        return metric(scraped, name, **labels) - metric(before, name, **labels)

    assert delta("sendguard_watch_deliveries_total", stream="trucking", operator="other", status="deferred") >= THRESHOLD
    assert delta("sendguard_watch_problems_total", stream="trucking", operator="other", status="deferred",
                 reason="reputation") >= THRESHOLD  # fmt: skip
    assert delta("sendguard_policyd_stop_signal_matches_total", stream="trucking", rule=RULE) >= THRESHOLD
    assert delta("sendguard_policyd_pauses_total", stream="trucking", operator="all", rule=RULE) == 1
    assert metric(scraped, "sendguard_policyd_paused", stream="healthcare", operator="all") == 0
    assert len(deferred) >= THRESHOLD

    # 3. Trucking's next messages are held, not sent; healthcare keeps flowing.
    switch.unlink()  # the receiver would take them again: only the pause keeps them back
    held = [queue_id(_campaign(stack, "trucking", f"{token}-paused-{i}", f"p{i}@example.com", counted=False))
            for i in range(2)]  # fmt: skip
    assert time.time() < signalled + PAUSE - 5, "the pause was nearly over before the held mail was sent"
    _campaign(stack, "healthcare", f"{token}-flowing", "h0@example.com")
    [flowing] = stack.wait_for_sink(f"{token}-flowing")
    assert dkim_tags(flowing.raw) and stack.dkim_verify(flowing.raw)
    queued = {m["queue_id"]: m["queue_name"] for m in stack.queue()}
    assert all(queued.get(q) == "hold" for q in held), f"paused mail is not in the hold queue: {queued}"
    holds = {q: line for line in stack.logs("postfix").splitlines() for q in held
             if f" {q}: hold: END-OF-MESSAGE" in line}  # fmt: skip
    assert set(holds) == set(held), f"Postfix logged no hold for {set(held) - set(holds)}"
    for line in holds.values():
        assert "stream trucking is paused" in line and f"rule {RULE}" in line, line
    stack.assert_not_in_sink(f"{token}-paused-", wait=3)
    waiting = stack.scrape()
    assert metric(waiting, "sendguard_policyd_paused_held_messages", stream="trucking") == 2
    status = _stream_block(_status(stack), "trucking")
    assert "2 of them held by a pause" in status and "nothing is released while the stream is paused" in status, status

    # 4. The pause ends by itself: the releaser lets the held mail go, and it arrives signed.
    arrived = stack.wait_for_sink(f"{token}-paused-", count=2, timeout=PAUSE + RELEASE_INTERVAL + 30)
    assert all(m.envelope["received_at"] >= signalled + PAUSE - 3 for m in arrived), "held mail left before the pause ended"
    released_at = time.time()
    stack.ledger.extend(Counted("trucking", 1, signalled + PAUSE - 3, released_at) for _ in held)
    for m in arrived:
        assert dkim_tags(m.raw) and stack.dkim_verify(m.raw)
    after = _wait("the pause ends in the metrics", lambda: (
        m if metric(m := stack.scrape(), "sendguard_policyd_paused", stream="trucking", operator="all") == 0
        else None), 15)  # fmt: skip
    assert metric(after, "sendguard_policyd_paused_held_messages", stream="trucking") == 0
    assert metric(after, "sendguard_policyd_held_backlog_messages", stream="trucking") == 0
    assert "paused          no" in _stream_block(_status(stack), "trucking")
    queued = {m["queue_id"] for m in stack.queue()}
    assert not set(held) & queued, f"held mail still queued after the pause: {queued}"
