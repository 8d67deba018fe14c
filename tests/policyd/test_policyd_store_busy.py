"""Another process holds the store's writers' lock: the event loop serves everything else meanwhile."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import threading
import time

import pytest

from sendguard_policyd import server
from sendguard_testing.policy_client import PolicyClient, postfix_message, postfix_request


def trucking(over_cap: str) -> dict:
    return {
        "match": {"server_port": [25]},
        "ramp": [[0, 100]],
        "start_date": dt.date(2026, 1, 1),
        "over_cap": over_cap,
    }


@pytest.fixture
def busy_daemon(start_daemon, monkeypatch):
    monkeypatch.setattr(server, "PARK_TIMEOUT", 1.5)
    return lambda over_cap="defer": start_daemon({"trucking": trucking(over_cap)})


def hold_lock(path: str, seconds: float) -> subprocess.Popen[bytes]:
    """``flock PATH.lock -c 'sleep N'`` (a backup, the sqlite3 shell, a stuck peer), once it holds the lock."""
    proc = subprocess.Popen(
        ["flock", path + ".lock", "-c", f"echo locked; sleep {seconds}"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


def release(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the shell's sleep holds the lock too
    proc.wait()


def end_of_message(instance: str) -> list[tuple[str, str]]:
    return postfix_message(instance, f"Q{instance.upper()}", ["carrier@example.com"])[-1]


@pytest.mark.parametrize(("over_cap", "answer"), [
    ("defer", "DEFER_IF_PERMIT 4.3.0 sendguard: counter store unavailable, try again later"),
    ("hold", "HOLD sendguard: stream trucking: the counter store is unavailable; held, released as the stream's window frees"),
])  # fmt: skip
def test_a_held_writers_lock_stalls_only_the_requests_that_write(busy_daemon, over_cap, answer, policyd_log):
    config, handle = busy_daemon(over_cap)
    holder = hold_lock(config.policyd.database, 4)
    try:
        answers: dict[str, tuple[str, float]] = {}

        def ask(name: str, request: list[tuple[str, str]]) -> None:
            with PolicyClient((handle.host, handle.port)) as client:
                start = time.monotonic()
                answers[name] = (client.ask(request), time.monotonic() - start)

        eoms = [threading.Thread(target=ask, args=(f"eom{i}", end_of_message(f"m{i}"))) for i in range(2)]
        for t in eoms:
            t.start()
        time.sleep(0.2)  # both END-OF-MESSAGEs are parked now
        ask("rcpt", postfix_request(protocol_state="RCPT", recipient="someone@gmail.com"))
        for t in eoms:
            t.join(10)
    finally:
        release(holder)
    rcpt, rcpt_seconds = answers["rcpt"]
    assert rcpt == "DUNNO" and rcpt_seconds < 0.1
    for name in ("eom0", "eom1"):
        text, seconds = answers[name]
        assert text == answer
        assert 1.2 < seconds < 2.5  # the bounded wait, for both at once: not one after the other
    assert policyd_log.matching("counter store busy")
    assert len(policyd_log.matching("still busy after 1.5 s")) == 2
    # Nothing was counted, and the store takes writes again at once.
    with PolicyClient((handle.host, handle.port)) as client:
        assert client.ask(end_of_message("after")) == "DUNNO"
    assert handle.store.windows("trucking", time.time()).hour == 1


def test_a_lock_released_within_the_wait_lets_the_parked_messages_through_in_order(busy_daemon):
    config, handle = busy_daemon()
    holder = hold_lock(config.policyd.database, 0.5)
    try:
        with PolicyClient((handle.host, handle.port)) as client:
            # Pipelined, as a client may: the second waits behind the first, the replies keep their order.
            start = time.monotonic()
            client.send_raw(b"".join(format(end_of_message(i)) for i in ("p1", "p2")))
            replies = [client.read_reply(), client.read_reply()]
            seconds = time.monotonic() - start
        with PolicyClient((handle.host, handle.port)) as client:
            assert client.ask(end_of_message("p1")) == "DUNNO"  # a retry: not counted again
    finally:
        holder.wait()
    assert replies == [b"action=DUNNO\n\n", b"action=DUNNO\n\n"]
    assert 0.3 < seconds < 1.4
    assert handle.store.windows("trucking", time.time()).hour == 2


def format(request: list[tuple[str, str]]) -> bytes:
    from sendguard_policyd.protocol import format_request

    return format_request(request)
