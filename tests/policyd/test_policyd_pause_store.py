"""Pauses and held records in the store, on both implementations: SQLite (a file) and Redis (a real server).

Pause times are the callers' in both stores, so these tests pass any ``now``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from sendguard_policyd.store import (
    COUNTED,
    HOLD_OVER_CAP,
    HOLD_PAUSE,
    MANUAL,
    STATE_RELEASING,
    UNKNOWN_OPERATOR,
    Pause,
)
from sendguard_policyd.store.redis import RedisCounterStore
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.store.sqlite_reader import SQLiteReader

T0 = 1_772_000_000.0
H = 3600.0


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        made = SQLiteCounterStore(str(tmp_path / "policyd.sqlite"))
    else:
        made = RedisCounterStore(request.getfixturevalue("redis_url"), timeout=2.0)
    yield made
    made.close()


def rule_pause(until: float | None, since: float = T0, operator: str = "", rule: str = "yahoo_tss04", reason: str = "TSS04") -> Pause:
    return Pause("trucking", operator, since, until, reason, rule)


def test_a_pause_is_in_force_until_it_ends(store):
    store.pause(rule_pause(T0 + 2 * H))
    assert store.pauses(T0 + 1) == [rule_pause(T0 + 2 * H)]
    assert store.pauses(T0 + 2 * H - 1)[0].rule == "yahoo_tss04"
    assert store.pauses(T0 + 2 * H) == []  # ended on time, nobody had to resume it


def test_a_longer_signal_extends_the_pause_and_keeps_its_start(store):
    store.pause(rule_pause(T0 + 2 * H))
    store.pause(rule_pause(T0 + 5 * H, since=T0 + H, rule="gmail_unsolicited", reason="again"))
    [p] = store.pauses(T0 + H)
    assert (p.since, p.until, p.rule, p.reason) == (T0, T0 + 5 * H, "gmail_unsolicited", "again")


def test_a_shorter_signal_never_shortens_it_but_a_hand_does(store):
    store.pause(rule_pause(None))  # until resumed
    store.pause(rule_pause(T0 + H, since=T0 + 10, rule="microsoft_server_busy"))
    [p] = store.pauses(T0 + 2 * H)
    assert (p.until, p.rule) == (None, "yahoo_tss04")
    store.pause(Pause("trucking", "", T0 + 20, T0 + 30 * 60, "checked the logs, send again soon", MANUAL))
    [p] = store.pauses(T0 + 60)
    assert (p.since, p.until, p.rule) == (T0, T0 + 30 * 60, MANUAL)
    assert store.pauses(T0 + 30 * 60) == []


def test_resume_ends_the_pause_and_it_stays_in_the_history(store):
    store.pause(rule_pause(T0 + 72 * H))
    assert store.resume("trucking", "", T0 + H) is True
    assert store.resume("trucking", "", T0 + H + 1) is False  # nothing in force any more
    assert store.pauses(T0 + H) == []
    assert store.pause_history(T0 - 1) == [rule_pause(T0 + H)]
    # A new pause after it: both are in the history, oldest first.
    store.pause(rule_pause(T0 + 3 * H, since=T0 + 2 * H, rule="gmail_low_reputation"))
    assert [(p.since, p.rule) for p in store.pause_history(T0 - 1)] == [(T0, "yahoo_tss04"), (T0 + 2 * H, "gmail_low_reputation")]
    assert [p.rule for p in store.pause_history(T0 + 1.5 * H)] == ["gmail_low_reputation"]  # the first ended before


def test_operator_pauses_are_apart_from_the_stream_pause(store):
    store.pause(rule_pause(T0 + H, operator="google", rule="gmail_unsolicited"))
    store.pause(rule_pause(T0 + 2 * H))
    store.pause(Pause("healthcare", "microsoft", T0, None, "by hand", MANUAL))
    key = lambda p: (p.stream, p.operator)  # noqa: E731
    assert sorted(map(key, store.pauses(T0 + 1))) == [("healthcare", "microsoft"), ("trucking", ""), ("trucking", "google")]
    assert store.resume("trucking", "", T0 + 2) is True  # the whole-stream pause only
    assert sorted(map(key, store.pauses(T0 + 3))) == [("healthcare", "microsoft"), ("trucking", "google")]
    assert store.resume("trucking", "microsoft", T0 + 3) is False


def test_held_records_keep_why_and_the_operators_through_a_claim(store):
    now = time.time()
    assert store.record_hold("p1", "trucking", 1, now, "QP1", HOLD_PAUSE, ("google",))
    assert store.record_hold("p2", "trucking", 2, now, "QP2", HOLD_PAUSE, ("microsoft", UNKNOWN_OPERATOR))
    assert store.record_hold("c1", "trucking", 1, now, "QC1")  # over its cap, operators not given
    assert not store.record_hold("p1", "trucking", 1, now, "QP1", HOLD_PAUSE, ("yahoo",))  # a retry changes nothing
    held = {m.queue_id: m for m in store.held_messages("trucking")}
    assert (held["QP1"].reason, held["QP1"].operators) == (HOLD_PAUSE, ("google",))
    assert (held["QP2"].reason, held["QP2"].operators) == (HOLD_PAUSE, (UNKNOWN_OPERATOR, "microsoft"))
    assert (held["QC1"].reason, held["QC1"].operators) == (HOLD_OVER_CAP, ())
    backlog = store.held_backlog()["trucking"]
    assert (backlog.messages, backlog.recipients, backlog.paused) == (3, 4, 2)
    assert store.claim_release("QP1", now, 10, None).outcome == COUNTED
    claimed = {m.queue_id: m for m in store.held_messages("trucking")}["QP1"]
    assert (claimed.state, claimed.reason, claimed.operators) == (STATE_RELEASING, HOLD_PAUSE, ("google",))


def test_status_reads_pauses_from_the_file_and_a_file_from_before_pauses_has_none(tmp_path: Path):
    path = str(tmp_path / "policyd.sqlite")
    store = SQLiteCounterStore(path)
    store.pause(rule_pause(T0 + H))
    store.close()
    reader = SQLiteReader(path)
    assert reader.pauses(T0) == [rule_pause(T0 + H)]
    reader.close()
    # A store that only an earlier release opened to write has no pause tables at all.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE pauses")
    conn.close()
    reader = SQLiteReader(path)
    assert reader.pauses(T0) == [] and reader.pause_history(0) == []
    reader.close()
    store = SQLiteCounterStore(path)  # opened to write again: the table is back, empty
    assert store.pauses(T0) == []
    store.close()
