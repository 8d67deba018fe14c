"""Another process holds the store's writers' lock, or SQLite's own write lock without ours (the sqlite3
shell in ``BEGIN IMMEDIATE``): the event loop serves everything else meanwhile."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
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


# Another process in SQLite's own write lock, as the sqlite3 shell holds it after ``BEGIN IMMEDIATE``:
# it never touches our flock.
_SQLITE_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def hold_lock(path: str, seconds: float, kind: str = "flock") -> subprocess.Popen[bytes]:
    """Another process holding the store for ``seconds``, once it holds it: our writers' lock
    (``flock PATH.lock -c 'sleep N'``: a backup, a stuck peer) or SQLite's own (``kind="sqlite"``)."""
    if kind == "flock":
        argv = ["flock", path + ".lock", "-c", f"echo locked; sleep {seconds}"]
    else:
        argv = [sys.executable, "-c", _SQLITE_HOLDER, path, str(seconds)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


def release(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the shell's sleep holds the lock too
    proc.wait()


def end_of_message(instance: str) -> list[tuple[str, str]]:
    return postfix_message(instance, f"Q{instance.upper()}", ["carrier@example.com"])[-1]


@pytest.mark.parametrize("kind", ["flock", "sqlite"])
@pytest.mark.parametrize(("over_cap", "answer"), [
    ("defer", "DEFER_IF_PERMIT 4.3.0 sendguard: counter store unavailable, try again later"),
    ("hold", "HOLD sendguard: stream trucking: the counter store is unavailable; held, released as the stream's window frees"),
])  # fmt: skip
def test_a_held_writers_lock_stalls_only_the_requests_that_write(busy_daemon, over_cap, answer, kind, policyd_log):
    config, handle = busy_daemon(over_cap)
    holder = hold_lock(config.policyd.database, 4, kind)
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


@pytest.mark.parametrize("kind", ["flock", "sqlite"])
def test_a_lock_released_within_the_wait_lets_the_parked_messages_through_in_order(busy_daemon, kind):
    config, handle = busy_daemon()
    holder = hold_lock(config.policyd.database, 0.5, kind)
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


def test_sqlite_lock_taken_again_after_the_hand_over_parks_the_request_again(busy_daemon, monkeypatch, policyd_log):
    """The shell's lock is free when the waiting thread looks, and taken again before the loop writes:
    the loop's write is refused at once, and the request waits again instead of failing."""
    from sendguard_policyd.store import sqlite_lock

    real = sqlite_lock.WritersLock._sqlite_free
    looks: list[bool] = []

    def first_look_misses(self, deadline):  # the race, made certain: the first look sees it free
        looks.append(True)
        return True if len(looks) == 1 else real(self, deadline)

    monkeypatch.setattr(sqlite_lock.WritersLock, "_sqlite_free", first_look_misses)
    config, handle = busy_daemon()
    holder = hold_lock(config.policyd.database, 0.8, "sqlite")
    try:
        with PolicyClient((handle.host, handle.port)) as client:
            start = time.monotonic()
            reply = client.ask(end_of_message("raced"))
            seconds = time.monotonic() - start
    finally:
        holder.wait()
    assert reply == "DUNNO"  # counted once the lock was really free, within the 1.5 s wait
    assert 0.6 < seconds < 1.4
    assert len(looks) >= 2  # parked again after the lost race, and waited for the real release
    assert not policyd_log.matching("still busy")
    assert handle.store.windows("trucking", time.time()).hour == 1


def test_the_loops_write_is_refused_at_once_by_sqlites_own_lock(tmp_path):
    """The loop's connection has no busy timeout: a write it cannot make is StoreBusy, never a 10 s wait."""
    from sendguard_policyd.store import StoreBusy
    from sendguard_policyd.store.sqlite import SQLiteCounterStore

    store = SQLiteCounterStore(str(tmp_path / "policyd.sqlite"))
    try:
        store.never_wait_in_this_thread()
        holder = hold_lock(store.path, 3, "sqlite")
        try:
            start = time.monotonic()
            with pytest.raises(StoreBusy, match="SQLite's write lock"):
                store.admit("trucking", "m1", 1, time.time(), 100, None, "QM1")
            assert time.monotonic() - start < 1.0  # not SQLite's 10 s busy timeout
            assert store.message_state("m1") is None  # nothing written
        finally:
            release(holder)
        assert store.admit("trucking", "m1", 1, time.time(), 100, None, "QM1").outcome == "counted"
    finally:
        store.close()


def format(request: list[tuple[str, str]]) -> bytes:
    from sendguard_policyd.protocol import format_request

    return format_request(request)
