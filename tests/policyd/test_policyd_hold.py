"""Over-cap mail with ``over_cap = "hold"`` (the default): accepted, held, recorded, never counted at hold time."""

from __future__ import annotations

import datetime as dt
import fcntl
import os

import pytest

from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError
from sendguard_policyd import metrics
from sendguard_policyd.decide import Decider
from sendguard_policyd.store import STATE_HELD
from sendguard_policyd.store import sqlite_lock
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_testing.policy_client import postfix_request

NOW = dt.datetime(2026, 3, 2, 10, 59, 0, tzinfo=dt.timezone.utc).timestamp()


def trucking(cap: int = 2, **extra: object) -> dict:
    return {
        "match": {"server_port": [25]},
        "ramp": [[0, cap]],
        "daily_cap": 4000,
        "start_date": dt.date(2026, 1, 1),
        **extra,
    }


def eom(instance: str, count: int = 1) -> dict[str, str]:
    return dict(
        postfix_request(
            protocol_state="END-OF-MESSAGE", instance=instance, queue_id=f"Q{instance.upper()}",
            recipient_count=str(count), recipient="carrier@example.com" if count == 1 else "",
        )
    )  # fmt: skip


@pytest.fixture
def decider(make_config, tmp_path):
    made = []

    def build(**stream: object) -> Decider:
        # A store file of its own each: two deciders in one test must not share one lock.
        db = tmp_path / f"store-{len(made)}" / "policyd.sqlite"
        config = make_config({"trucking": trucking(**stream)}, database=str(db))
        d = Decider(config.policyd, config.streams, SQLiteCounterStore(config.policyd.database))
        made.append(d)
        return d

    yield build
    for d in made:
        d.store.close()


def test_hold_is_the_default_and_the_message_is_recorded_uncounted(decider, policyd_log):
    d = decider()
    before = metrics.HOLDS.labels("over_cap")._value.get()
    assert [d.decide(eom(i), NOW).action for i in ("a", "b")] == ["DUNNO", "DUNNO"]
    answer = d.decide(eom("c"), NOW + 1)
    assert answer.action.startswith("HOLD sendguard: stream trucking: it is at its hourly cap of 2 recipients")
    assert answer.label == "hold"
    # Recorded for the releaser, with the queue id Postfix gave it; the window is not spent.
    [held] = d.store.held_messages("trucking")
    assert (held.queue_id, held.recipients, held.state) == ("QC", 1, STATE_HELD)
    assert d.store.windows("trucking", NOW + 1).hour == 2
    assert d.store.held_backlog()["trucking"].messages == 1
    assert metrics.HOLDS.labels("over_cap")._value.get() == before + 1
    assert policyd_log.matching("QC: hold: stream trucking: 2 used of the hourly cap of 2")


def test_postfix_asking_again_for_a_held_message_gets_hold_again(decider):
    d = decider()
    for i in ("a", "b", "c"):
        d.decide(eom(i), NOW)
    # The answer to the first request was lost and smtpd asks again: the message must stay held.
    assert d.decide(eom("c"), NOW + 2).action.startswith("HOLD sendguard: stream trucking:")
    assert len(d.store.held_messages("trucking")) == 1


def test_defer_mode_still_defers(decider):
    d = decider(over_cap="defer")
    d.decide(eom("a"), NOW)
    d.decide(eom("b"), NOW)
    assert d.decide(eom("c"), NOW).action.startswith("DEFER_IF_PERMIT 4.7.1 sendguard: stream trucking is at its")
    assert d.store.held_messages("trucking") == []


def test_a_message_larger_than_the_cap_is_deferred_not_held(decider):
    # Holding it would keep it forever: it can never fit.
    d = decider()
    assert d.decide(eom("big", count=3), NOW).action.startswith("DEFER_IF_PERMIT 4.7.1 sendguard: stream trucking:")
    assert d.store.held_messages("trucking") == []


def _lock_out(store: SQLiteCounterStore) -> int:
    fd = os.open(store.path + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_store_down_holds_closed_and_records_the_hold_once_it_answers(decider, policyd_log, monkeypatch):
    monkeypatch.setattr(sqlite_lock, "LOCK_TIMEOUT", 0.1)
    d = decider()
    other = _lock_out(d.store)
    try:
        answer = d.decide(eom("x"), NOW)
        d.tick(NOW + 1)  # still down: nothing recorded, nothing lost
    finally:
        os.close(other)
    assert answer.action == (
        "HOLD sendguard: stream trucking: the counter store is unavailable; held, released as the stream's window frees"
    )
    assert d.store.held_messages("trucking") == []
    d.tick(NOW + 2)
    [held] = d.store.held_messages("trucking")
    assert held.queue_id == "QX" and held.recipients == 1
    assert policyd_log.matching("QX: hold recorded now that the counter store answers again")


def test_store_down_with_defer_defers_and_with_open_passes_uncounted(decider, policyd_log, monkeypatch):
    monkeypatch.setattr(sqlite_lock, "LOCK_TIMEOUT", 0.1)
    closed = decider(over_cap="defer")
    opened = decider(on_store_error="open")
    locks = [_lock_out(closed.store), _lock_out(opened.store)]
    try:
        deferred = closed.decide(eom("x"), NOW).action
        passed = opened.decide(eom("y"), NOW).action
    finally:
        for fd in locks:
            os.close(fd)
    assert deferred == "DEFER_IF_PERMIT 4.3.0 sendguard: counter store unavailable, try again later"
    assert passed == "DUNNO"
    assert policyd_log.matching("QY: pass uncounted: stream trucking: counter store failed")
    assert opened.store.windows("trucking", NOW).hour == 0


@pytest.mark.parametrize(
    "stream, release, key, reason",
    [
        ({"over_cap": "bounce"}, {}, "streams.trucking.over_cap", "is not one of hold, defer"),
        ({"on_store_error": "maybe"}, {}, "streams.trucking.on_store_error", "is not one of closed, open"),
        ({}, {"enabled": "yes"}, "release.enabled", 'must be true, false or "auto"'),
        ({}, {"interval": 0}, "release.interval", "between 0.2 and 3600"),
        ({}, {"lifetime_warn_share": 1.5}, "release.lifetime_warn_share", "between 0 and 1"),
        ({}, {"postqueue": "/usr/sbin/postqueue"}, "release.postqueue", "unknown key"),
    ],
)
def test_bad_hold_and_release_keys_stop_start_up(stream, release, key, reason):
    with pytest.raises(ConfigError) as err:
        parse({"streams": {"trucking": trucking(**stream)}, "release": release}, "/etc/sendguard.toml")
    assert err.value.key == key and reason in err.value.reason
