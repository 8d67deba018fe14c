"""``stream_of``: which stream a queue id belongs to, as the watcher asks it, on a real SQLite file and a real Redis.

The watcher maps each delivery line to the stream the policy daemon counted
(or held) the message in at END-OF-MESSAGE; counted, family-held, over-cap held
and released messages must all be found, unknown queue ids not.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sendguard_policyd.store import STATE_RELEASED, CounterStore
from sendguard_policyd.store.redis import RedisCounterStore
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.store.sqlite_reader import SQLiteReader


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        opened: CounterStore = SQLiteCounterStore(str(tmp_path / "policyd.sqlite"))
    else:
        opened = RedisCounterStore(request.getfixturevalue("redis_url"), host="mx1")
    yield opened
    opened.close()


def test_every_recorded_message_is_found_by_its_queue_id(store: CounterStore):
    now = time.time()
    assert store.admit("trucking", "i1", 1, now, 100, 1000, "4F1A22C3B1").passes
    assert store.mark_family_hold("i2", "healthcare", now, "5B2C33D4C2", "family")
    assert store.record_hold("i3", "trucking", 2, now, "6C3D44E5D3")
    assert store.admit("healthcare", "i4", 1, now, 100, 1000, "").passes  # no queue id: nothing to find
    assert store.stream_of("4F1A22C3B1") == "trucking"
    assert store.stream_of("5B2C33D4C2") == "healthcare"
    assert store.stream_of("6C3D44E5D3") == "trucking"  # still held
    assert store.stream_of("7D4E55F6E4") is None
    assert store.stream_of("") is None
    found = store.streams_of(["4F1A22C3B1", "5B2C33D4C2", "7D4E55F6E4", "6C3D44E5D3"])
    assert found == {"4F1A22C3B1": "trucking", "5B2C33D4C2": "healthcare", "6C3D44E5D3": "trucking"}


def test_a_released_message_keeps_its_stream_for_its_deliveries(store: CounterStore):
    now = time.time()
    store.record_hold("i5", "healthcare", 1, now, "8E5F66A7F5")
    assert store.claim_release("8E5F66A7F5", now, 100, 1000).passes
    store.finish_release("8E5F66A7F5", STATE_RELEASED, now)
    assert store.stream_of("8E5F66A7F5") == "healthcare"


def test_many_queue_ids_in_one_call(store: CounterStore):
    now = time.time()
    for i in range(700):  # more than one SQLite read's worth
        store.admit("trucking" if i % 2 else "healthcare", f"m{i}", 1, now, None, None, f"Q{i:06d}")
    asked = [f"Q{i:06d}" for i in range(0, 700, 3)] + ["QNONE"]
    found = store.streams_of(asked)
    assert found == {f"Q{i:06d}": "trucking" if i % 2 else "healthcare" for i in range(0, 700, 3)}


def test_the_read_only_reader_of_status_answers_too(tmp_path: Path):
    path = str(tmp_path / "policyd.sqlite")
    writer = SQLiteCounterStore(path)
    try:
        writer.admit("trucking", "i1", 1, time.time(), 10, 100, "9F6A77B8A6")
        reader = SQLiteReader(path)
        assert reader.stream_of("9F6A77B8A6") == "trucking"
        assert reader.streams_of(["9F6A77B8A6", "X"]) == {"9F6A77B8A6": "trucking"}
        reader.close()
    finally:
        writer.close()


def test_redis_queue_ids_are_this_hosts_own(redis_url: str):
    """Queue ids are unique on one Postfix host only: another host's watcher does not take this one's."""
    here = RedisCounterStore(redis_url, host="mx1")
    there = RedisCounterStore(redis_url, host="mx2")
    try:
        here.admit("trucking", "i1", 1, time.time(), 10, 100, "AB12CD34EF")
        assert here.stream_of("AB12CD34EF") == "trucking"
        assert there.stream_of("AB12CD34EF") is None
    finally:
        here.close()
        there.close()
