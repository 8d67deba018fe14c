"""The ramp history in the store (SQLite and a real Redis), and the consumers that write it.

``SendingDays`` gets real ``Delivery`` objects, as the watcher hands them over,
and writes into a real store; ``PausedDays`` marks the days a pause spans.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from pathlib import Path

import pytest

from sendguard.streams import MatchRule, Stream
from sendguard_policyd.effective_day import SENDING, nth_ramp_date
from sendguard_policyd.sending_days import RETRY_SECONDS, PausedDays, SendingDays
from sendguard_policyd.settings import StreamPolicy
from sendguard_policyd.store import DAY, RampHistory, StepBack, StoreError
from sendguard_policyd.store.redis import RedisCounterStore
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.store.sqlite_reader import SQLiteReader
from sendguard_policyd.warmup import Warmup, refresh_histories
from sendguard_policyd.watch import Delivery

START = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.timezone.utc).timestamp()
D0, D1, D2 = (nth_ramp_date(START, n) for n in range(3))
RAMP = ((0, 2), (2, 4), (5, 8))


def stream(name: str = "trucking", start: float | None = START, ramp=RAMP) -> Stream:
    return Stream(name=name, rule=MatchRule(server_port=frozenset({25})), ramp=ramp if start else (),
                  start_epoch=start)  # fmt: skip


def delivery(at: float, status: str = "sent", stream: str = "trucking", recipient: str = "a@example.com") -> Delivery:
    domain = recipient.rpartition("@")[2]
    return Delivery(
        at=at, queue_id="4B7C21A0F3", recipient=recipient, domain=domain, relay="mx.example.com",
        relay_ip="192.0.2.25", status=status, dsn="2.0.0" if status == "sent" else "4.7.0",
        reply="250 2.0.0 OK" if status == "sent" else "421 4.7.0 [TSS04] Messages from 203.0.113.94 temporarily deferred",
        stream=stream, operator="other", reason="" if status == "sent" else "reputation",
    )  # fmt: skip


class FakeClock:
    """The consumers' retry pacing (a monotonic clock), moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path: Path):
    """Open (and reopen) a store of each kind: a SQLite file, or a real redis-server."""
    opened = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def make():
        store = SQLiteCounterStore(str(tmp_path / "policyd.sqlite")) if not url else RedisCounterStore(url)
        opened.append(store)
        return store

    make.kind = request.param
    yield make
    for store in opened:
        store.close()


def wait_until_answering(store: RedisCounterStore) -> None:
    """After a failure the store refuses calls for a second (redis_conn.DOWN_SECONDS): wait that out."""
    deadline = time.monotonic() + 10
    while True:
        try:
            store.ramp_history("probe")
            return
        except StoreError:
            assert time.monotonic() < deadline, "Redis does not answer again"
            time.sleep(0.1)


# -- the store --------------------------------------------------------------------------------------


def test_the_ramp_history_is_kept_per_stream_and_survives_a_reopen(open_store):
    store = open_store()
    assert store.ramp_history("trucking") == RampHistory()
    store.add_sent("trucking", D0, 3)
    store.add_sent("trucking", D0, 2)
    store.add_sent("trucking", D1, 7)
    store.add_sent("trucking", D2, 0)  # nothing to add: no entry
    store.add_sent("healthcare", D0, 1)
    assert store.mark_paused_day("trucking", D1) is True
    assert store.mark_paused_day("trucking", D1) is False  # marked once
    store.step_back("trucking", 2, "yahoo_tss04", START + 1.5 * DAY)
    store.step_back("trucking", 1, "manual", START + 0.5 * DAY)
    with pytest.raises(ValueError):
        store.step_back("trucking", 0, "manual", START)
    again = open_store()
    history = again.ramp_history("trucking")
    assert history.sent == {D0: 5, D1: 7}
    assert history.paused == frozenset({D1})
    assert history.step_backs == (StepBack(START + 0.5 * DAY, 1, "manual"), StepBack(START + 1.5 * DAY, 2, "yahoo_tss04"))
    assert again.ramp_history("healthcare") == RampHistory(sent={D0: 1})  # streams never share a history


def test_a_store_file_made_before_the_ramp_history_gains_its_tables(tmp_path: Path):
    path = str(tmp_path / "policyd.sqlite")
    SQLiteCounterStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE ramp_days")
    conn.execute("DROP TABLE step_backs")
    conn.close()
    reader = SQLiteReader(path)
    assert reader.ramp_history("trucking") == RampHistory()  # status on such a file: an empty history
    reader.close()
    store = SQLiteCounterStore(path)  # the daemon's writable open adds the tables, schema version unchanged
    store.add_sent("trucking", D0, 4)
    store.close()
    reader = SQLiteReader(path)
    assert reader.ramp_history("trucking").sent == {D0: 4}
    reader.close()
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)


# -- SendingDays: sent deliveries per stream per ramp day ---------------------------------------


def test_sent_deliveries_are_counted_per_stream_on_the_ramp_day_of_their_log_time(open_store):
    store = open_store()
    warmups = {"trucking": Warmup(stream()), "healthcare": Warmup(stream("healthcare"))}
    days = SendingDays(warmups, store)
    for d in (
        delivery(START + 60),
        delivery(START + DAY - 1),  # Tuesday 09:29:59: still ramp day 0
        delivery(START + DAY),  # Tuesday 09:30:00: ramp day 1
        delivery(START + DAY + 5, status="deferred"),
        delivery(START + DAY + 6, status="bounced"),
        delivery(START + DAY + 7, status="expired"),
        delivery(START + DAY + 8, stream="none"),  # mail in no stream
        delivery(START + DAY + 9, stream="billing"),  # a stream this config does not have
        delivery(START + DAY + 10, stream="healthcare"),
    ):
        days.delivered(d)
    assert store.ramp_history("trucking").sent == {D0: 2, D1: 1}
    assert store.ramp_history("healthcare").sent == {D1: 1}
    assert not days.waiting


def test_a_stream_without_a_start_is_not_counted(open_store):
    store = open_store()
    days = SendingDays({"cron": Warmup(stream("cron", start=None))}, store)
    days.delivered(delivery(START, stream="cron"))
    assert store.ramp_history("cron") == RampHistory()


def test_the_ramp_day_follows_a_rewritten_stamp_file(open_store, tmp_path: Path):
    stamp = tmp_path / "trucking.start"
    stamp.write_text(f"{START:.0f}\n")
    s = Stream(name="trucking", rule=MatchRule(server_port=frozenset({25})), ramp=RAMP, start_file=stamp)
    store = open_store()
    clock = FakeClock()
    days = SendingDays({"trucking": Warmup(s)}, store, clock=clock)
    days.delivered(delivery(START + 3 * 3600))  # 12:30 on day 0
    later = START + 12 * 3600  # the operator restarts the warmup at 21:30
    stamp.write_text(f"{later:.0f}\n")
    os.utime(stamp, (later, later))
    clock.t += 2  # the stamp is looked at again after a second, as in the daemon
    days.delivered(delivery(later + 60))  # ramp day 0 of the new warmup: named by the date it began
    days.delivered(delivery(later + DAY - 60))  # Tuesday 21:29, still that day
    assert store.ramp_history("trucking").sent == {D0: 3}


def test_counts_wait_in_memory_while_redis_is_down_and_none_is_lost(redis_server, redis_url):
    store = RedisCounterStore(redis_url, timeout=0.5)
    clock = FakeClock()
    days = SendingDays({"trucking": Warmup(stream())}, store, clock=clock)
    try:
        days.delivered(delivery(START + 10))
        redis_server.stop()
        for i in range(5):
            days.delivered(delivery(START + 20 + i))  # the first fails; the others wait for the retry time
        assert sum(days.waiting.values()) == 5
        redis_server.start()
        wait_until_answering(store)
        clock.t += RETRY_SECONDS / 2
        days.delivered(delivery(START + DAY + 1))  # not retried yet: kept
        assert sum(days.waiting.values()) == 6
        clock.t += RETRY_SECONDS
        days.delivered(delivery(START + DAY + 2))  # retried: everything goes in
        assert not days.waiting
        # Redis restarted empty (no persistence in the test server): what it holds is all since the restart.
        assert store.ramp_history("trucking").sent == {D0: 5, D1: 2}
    finally:
        store.close()


def test_a_failing_sqlite_store_keeps_the_counts_and_logs_one_line(tmp_path: Path, policyd_log):
    path = tmp_path / "policyd.sqlite"
    store = SQLiteCounterStore(str(path))
    clock = FakeClock()
    days = SendingDays({"trucking": Warmup(stream())}, store, clock=clock)
    days.delivered(delivery(START + 10))
    path.unlink()  # the file is lost under the daemon: every write is refused (sqlite_identity.py)
    assert store.check_file() is False
    for i in range(3):
        days.delivered(delivery(START + 20 + i))
        clock.t += RETRY_SECONDS
    assert sum(days.waiting.values()) == 3
    assert len(policyd_log.matching("cannot record sent deliveries in the counter store")) == 1
    store.close()


# -- PausedDays: the days a whole-stream pause spans ------------------------------------------------


def test_every_ramp_day_a_pause_spans_is_marked_once(open_store, policyd_log):
    store = open_store()
    paused = PausedDays({"trucking": Warmup(stream())}, store)
    # Paused on Tuesday 20:00 (day 1), looked at again on Thursday 08:00 (day 2, before 09:30).
    paused.paused("trucking", START + 1.44 * DAY, START + 2.94 * DAY)
    paused.paused("trucking", START + 1.44 * DAY, START + 2.95 * DAY)
    assert store.ramp_history("trucking").paused == frozenset({D1, D2})
    assert len(policyd_log.matching("marked paused")) == 2  # each day once
    paused.paused("trucking", START - 5 * DAY, START + 0.1 * DAY)  # a pause from before the warmup began
    assert store.ramp_history("trucking").paused == frozenset({D0, D1, D2})
    paused.paused("none", START, START + DAY)  # no such stream: nothing
    paused.paused("trucking", START - 2 * DAY, START - DAY)  # before the start: no ramp day
    assert store.ramp_history("trucking").paused == frozenset({D0, D1, D2})


# -- the warmup follows the history read from the store ---------------------------------------------


def test_the_warmup_caps_follow_the_history_read_from_the_store(open_store):
    store = open_store()
    warmup = Warmup(stream(), StreamPolicy(warmup_days=SENDING, sending_day_minimum=3))
    now = START + 5.5 * DAY  # calendar day 5 (cap 8)
    assert warmup.caps(now).warmup_day == 0  # nothing read yet: day 0, the careful cap
    days = SendingDays({"trucking": warmup}, store)
    for n in range(5):
        for i in range(3 if n in (0, 1, 3) else 1):  # days 0, 1 and 3 deliver the minimum
            days.delivered(delivery(START + n * DAY + 100 + i))
    PausedDays({"trucking": warmup}, store).paused("trucking", START + 3.2 * DAY, START + 3.3 * DAY)
    refresh_histories({"trucking": warmup}, store)
    caps = warmup.caps(now)
    assert (caps.warmup_day, caps.hourly) == (2, 4)
    assert caps.ramp is not None
    assert caps.ramp.reason() == "sending days: 2 of 5 calendar days counted; 2 below 3 delivered; 1 paused"
    store.step_back("trucking", 1, "gmail_571", START + 5.4 * DAY)
    refresh_histories({"trucking": warmup}, store)
    assert warmup.caps(now).warmup_day == 1 and warmup.caps(now).hourly == 2


def test_a_ramp_history_written_by_something_else_is_refused_and_the_days_stay_as_read(open_store, tmp_path, policyd_log):
    from sendguard_policyd.ramp_refresh import RampRefresher

    store = open_store()
    store.add_sent("trucking", D0, 3)
    warmup = Warmup(stream(), StreamPolicy(warmup_days=SENDING, sending_day_minimum=3))
    refresher = RampRefresher({"trucking": warmup}, store)
    assert refresher.refresh()
    assert warmup.caps(START + 1.5 * DAY).warmup_day == 1
    if open_store.kind == "sqlite":
        conn = sqlite3.connect(str(tmp_path / "policyd.sqlite"), isolation_level=None)
        conn.execute("INSERT INTO ramp_days (stream, day, sent) VALUES ('trucking', 'Monday', 5)")
        conn.close()
        where = str(tmp_path / "policyd.sqlite")
    else:
        import redis

        client = redis.Redis.from_url(store.url)
        client.hset("{sendguard:trucking}:sent", "Monday", 5)
        client.close()
        where = store.url
    with pytest.raises(StoreError, match=f"counter store {where}: stream trucking: unreadable ramp history"):
        store.ramp_history("trucking")
    assert not refresher.refresh() and not refresher.refresh()
    assert len(policyd_log.matching("cannot read the streams' ramp history")) == 1  # one line, not one a minute
    assert warmup.caps(START + 1.5 * DAY).warmup_day == 1  # the day stays as last read
