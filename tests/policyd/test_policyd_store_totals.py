"""The store's running totals: window counts from two look-ups must equal a plain sum, always.

The daemon (and ``sendguard status``) counts a window as "newest bucket's total
minus the total before the window's first bucket". These tests check that against
``SUM(recipients)`` over the same buckets through clock skew between processes,
pruning, and the upgrade of files written by earlier schemas (before running
totals; with a second table of minute buckets for the day).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard_policyd.counter_store import ALREADY_COUNTED, COUNTED, OVER_DAILY, OVER_HOURLY, WindowCounts
from sendguard_policyd.sqlite_store import SCHEMA_VERSION, SQLiteCounterStore, read_windows

T0 = dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.timezone.utc).timestamp()


def plain_sum(conn: sqlite3.Connection, stream: str, now: float) -> tuple[int, int]:
    """The windows as plain sums over one-second buckets (a bucket counts while any instant of it is inside)."""
    return tuple(
        conn.execute(
            "SELECT COALESCE(SUM(recipients), 0) FROM buckets WHERE stream = ? AND second + 1 > ?", (stream, now - span)
        ).fetchone()[0]
        for span in (3600, 86400)
    )


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        # (seconds forward, a skew of up to two minutes either way as another process's clock, recipients, stream)
        st.tuples(st.floats(0, 1800), st.floats(-120, 120), st.integers(1, 5), st.sampled_from(["a", "b"])),
        min_size=1,
        max_size=50,
    ),
)
def test_window_counts_from_totals_equal_the_plain_sum(steps):
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteCounterStore(f"{tmp}/t.sqlite")
        reader = sqlite3.connect(f"{tmp}/t.sqlite")
        t = T0
        for i, (gap, skew, n, stream) in enumerate(steps):
            t += gap
            now = t + skew
            adm = store.admit(stream, f"m{i}", n, now, None, None)
            assert adm.outcome == COUNTED
            assert (adm.hour_count, adm.day_count) == plain_sum(reader, stream, now)
            status = read_windows(reader, stream, now)
            assert (status.hour, status.day) == plain_sum(reader, stream, now)
            # And at later instants, as the windows slide past old buckets.
            for later in (now + 3000, now + 86000):
                check = store.admit(stream, f"probe{i}", 1, later, 0, 0)  # a cap of 0 never counts
                assert (check.hour_count, check.day_count) == plain_sum(reader, stream, later)
        reader.close()
        store.close()


def test_totals_stay_right_after_pruning(tmp_path: Path):
    store = SQLiteCounterStore(str(tmp_path / "p.sqlite"))
    for i in range(30):
        store.admit("s", f"old{i}", 2, T0 + i * 60, None, None)
    later = T0 + 2 * 86400
    assert store.admit("s", "new1", 3, later, None, None).hour_count == 3
    assert store.prune(later) >= 60  # the old buckets and records
    adm = store.admit("s", "new2", 4, later + 10, None, None)
    assert (adm.hour_count, adm.day_count) == (7, 7)
    reader = sqlite3.connect(store.path)
    assert reader.execute("SELECT COUNT(*) FROM buckets").fetchone()[0] == 2
    store.close()


# The schema a release before running totals wrote (schema_version 1), verbatim in its effect.
_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    instance TEXT PRIMARY KEY, stream TEXT NOT NULL, state TEXT NOT NULL, recipients INTEGER NOT NULL,
    at REAL NOT NULL, queue_id TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    hour_after INTEGER NOT NULL DEFAULT 0, day_after INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX messages_held ON messages (stream) WHERE state = 'held';
CREATE INDEX messages_family ON messages (at) WHERE state = 'family_hold';
CREATE TABLE hour_buckets (stream TEXT NOT NULL, second INTEGER NOT NULL, recipients INTEGER NOT NULL,
    PRIMARY KEY (stream, second)) WITHOUT ROWID;
CREATE TABLE day_buckets (stream TEXT NOT NULL, minute INTEGER NOT NULL, recipients INTEGER NOT NULL,
    PRIMARY KEY (stream, minute)) WITHOUT ROWID;
CREATE TRIGGER count_message AFTER INSERT ON messages WHEN NEW.state = 'counted'
BEGIN
    INSERT INTO hour_buckets (stream, second, recipients) VALUES (NEW.stream, CAST(NEW.at AS INTEGER), NEW.recipients)
        ON CONFLICT (stream, second) DO UPDATE SET recipients = recipients + excluded.recipients;
    INSERT INTO day_buckets (stream, minute, recipients) VALUES (NEW.stream, CAST(NEW.at / 60 AS INTEGER), NEW.recipients)
        ON CONFLICT (stream, minute) DO UPDATE SET recipients = recipients + excluded.recipients;
END;
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_a_file_from_before_running_totals_keeps_its_counts_and_caps(tmp_path: Path):
    path = tmp_path / "v1.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    old.executescript(_SCHEMA_V1)
    for i in range(8):  # 8 messages of 2 recipients in the last 40 minutes, one stream; 3 in another
        old.execute(
            "INSERT INTO messages (instance, stream, state, recipients, at) VALUES (?, 'trucking', 'counted', 2, ?)",
            (f"old{i}", T0 - 2400 + i * 300),
        )
    old.execute("INSERT INTO messages (instance, stream, state, recipients, at) VALUES ('h', 'health', 'counted', 3, ?)",
                (T0 - 100,))  # fmt: skip
    old.close()

    store = SQLiteCounterStore(str(path))
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    # The rolling hour holds 16 trucking recipients: a cap of 17 lets one more through, not two.
    assert store.admit("trucking", "new1", 1, T0, 17, None).outcome == COUNTED
    refused = store.admit("trucking", "new2", 1, T0 + 1, 17, None)
    assert refused.outcome == OVER_HOURLY and refused.hour_count == 17
    assert store.admit("health", "new3", 1, T0, None, None).hour_count == 4
    assert read_windows(reader, "trucking", T0 + 1).hour == 17
    store.close()
    # Opening it again (already upgraded) changes nothing.
    store = SQLiteCounterStore(str(path))
    assert store.admit("trucking", "new4", 1, T0 + 2, 17, None).outcome == OVER_HOURLY
    store.close()


# The schema of the release before one-second buckets for the day (schema_version 2), verbatim in
# its effect: seconds for the hour, minutes for the day, both with running totals, and its prune.
_SCHEMA_V2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    instance TEXT PRIMARY KEY, stream TEXT NOT NULL, state TEXT NOT NULL, recipients INTEGER NOT NULL,
    at REAL NOT NULL, queue_id TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    hour_after INTEGER NOT NULL DEFAULT 0, day_after INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX messages_held ON messages (stream) WHERE state = 'held';
CREATE INDEX messages_family ON messages (at) WHERE state = 'family_hold';
CREATE TABLE hour_buckets (stream TEXT NOT NULL, second INTEGER NOT NULL, recipients INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (stream, second)) WITHOUT ROWID;
CREATE TABLE day_buckets (stream TEXT NOT NULL, minute INTEGER NOT NULL, recipients INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (stream, minute)) WITHOUT ROWID;
CREATE TRIGGER count_message AFTER INSERT ON messages WHEN NEW.state = 'counted'
BEGIN
    INSERT INTO hour_buckets (stream, second, recipients, total)
        VALUES (NEW.stream,
                MAX(CAST(NEW.at AS INTEGER), COALESCE((SELECT MAX(second) FROM hour_buckets WHERE stream = NEW.stream), 0)),
                NEW.recipients,
                NEW.recipients + COALESCE((SELECT total FROM hour_buckets WHERE stream = NEW.stream
                                           ORDER BY second DESC LIMIT 1), 0))
        ON CONFLICT (stream, second) DO UPDATE
            SET recipients = recipients + excluded.recipients, total = total + excluded.recipients;
    INSERT INTO day_buckets (stream, minute, recipients, total)
        VALUES (NEW.stream,
                MAX(CAST(NEW.at / 60 AS INTEGER), COALESCE((SELECT MAX(minute) FROM day_buckets WHERE stream = NEW.stream), 0)),
                NEW.recipients,
                NEW.recipients + COALESCE((SELECT total FROM day_buckets WHERE stream = NEW.stream
                                           ORDER BY minute DESC LIMIT 1), 0))
        ON CONFLICT (stream, minute) DO UPDATE
            SET recipients = recipients + excluded.recipients, total = total + excluded.recipients;
END;
INSERT INTO meta VALUES ('schema_version', '2');
"""


def v2_windows(conn: sqlite3.Connection, stream: str, now: float) -> tuple[int, int]:
    """The windows as a schema-2 release read them (a bucket counts while any instant of it is inside)."""
    hour = conn.execute(
        "SELECT COALESCE(SUM(recipients), 0) FROM hour_buckets WHERE stream = ? AND second + 1 > ?", (stream, now - 3600)
    ).fetchone()[0]
    day = conn.execute(
        "SELECT COALESCE(SUM(recipients), 0) FROM day_buckets WHERE stream = ? AND minute * 60 + 60 > ?",
        (stream, now - 86400),
    ).fetchone()[0]
    return hour, day


def test_a_file_with_minute_buckets_for_the_day_keeps_every_count(tmp_path: Path):
    path = tmp_path / "v2.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    old.executescript(_SCHEMA_V2)
    now = T0 + 17.25  # the schema-2 prune below cuts its second buckets in the middle of a minute
    sends = [("trucking", now - 86400 + 30 + 397 * i, 1 + i % 3) for i in range(218)]  # the day, every ~7 min
    sends += [("trucking", now - 3661 - 40 + 7 * i, 2) for i in range(20)]  # around the hour buckets' prune edge
    sends += [("trucking", now - 3500 + 61 * i, 1 + i % 2) for i in range(57)]  # the hour
    sends += [("health", now - 50000, 4), ("health", now - 600, 1)]
    sends.sort(key=lambda s: s[1])
    for i, (stream, t, n) in enumerate(sends):
        old.execute(
            "INSERT INTO messages (instance, stream, state, recipients, at) VALUES (?, ?, 'counted', ?, ?)",
            (f"old{i}", stream, n, t),
        )
    # The schema-2 daemon's prune at `now`: second buckets kept a minute past the hour, minutes past the day.
    old.execute("DELETE FROM hour_buckets WHERE second <= ?", (now - 3600 - 1 - 60,))
    old.execute("DELETE FROM day_buckets WHERE minute <= ?", ((now - 86400) / 60.0 - 1 - 60,))
    pruned_minute = int((now - 3661) // 60)
    kept = old.execute(
        "SELECT COUNT(*), SUM(recipients) FROM hour_buckets WHERE second BETWEEN ? AND ?",
        (pruned_minute * 60, pruned_minute * 60 + 59),
    ).fetchone()
    in_minute = old.execute("SELECT recipients FROM day_buckets WHERE minute = ?", (pruned_minute,)).fetchone()[0]
    assert kept[0] > 0 and in_minute > kept[1]  # the edge minute has lost some of its seconds, and kept some
    instants = [now, now + 1, now + 120, now + 1800, now + 3000, now + 3700, now + 7200, now + 40000]
    before = {(s, t): v2_windows(old, s, t) for s in ("trucking", "health") for t in instants}
    assert before[("trucking", now)][0] > 0 and before[("trucking", now)][1] > before[("trucking", now)][0]
    # `sendguard status` on the file before any upgraded daemon opened it reads the old tables.
    status = read_windows(old, "trucking", now)
    assert (status.hour, status.day) == before[("trucking", now)]
    old.close()

    store = SQLiteCounterStore(str(path))
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    after = {(s, t): plain_sum(reader, s, t) for s in ("trucking", "health") for t in instants}
    assert after == before  # both windows, at the upgrade and as they slide for hours after it
    for (stream, t), counts in before.items():
        status = read_windows(reader, stream, t)
        assert (status.hour, status.day) == counts
    # The caps hold across the upgrade: exactly the room left, and not one recipient more.
    hour, day = before[("trucking", now)]
    assert store.admit("trucking", "new1", 2, now, hour + 2, day + 10).outcome == COUNTED
    refused = store.admit("trucking", "new2", 1, now + 1, hour + 2, day + 10)
    assert refused.outcome == OVER_HOURLY and (refused.hour_count, refused.day_count) == (hour + 2, day + 2)
    assert store.admit("trucking", "old3", 1, now + 2, None, None).outcome == ALREADY_COUNTED  # records kept
    store.close()
    store = SQLiteCounterStore(str(path))  # opening it again (already upgraded) changes nothing
    assert store.windows("trucking", now + 1) == WindowCounts(hour + 2, day + 2)
    store.close()


def test_room_frees_at_the_right_second_when_most_of_a_busy_day_must_leave(tmp_path: Path):
    store = SQLiteCounterStore(str(tmp_path / "d.sqlite"))
    sends = [T0 + 37 * i for i in range(2000)]  # 2,000 one-recipient messages over about 20 hours
    for i, t in enumerate(sends):
        store.admit("s", f"m{i}", 1, t, None, None)
    now = sends[-1] + 5
    for cap, n in ((1999, 1), (1990, 1), (500, 1), (10, 3), (0, 1)):  # room near the window's start, and far
        adm = store.admit("s", f"x{cap}", n, now, None, cap)
        assert adm.outcome == OVER_DAILY and adm.day_count == 2000
        if cap == 0:
            assert adm.room_at is None  # a paused step: no time is promised
            continue
        # Room for n once 2000 + n - cap of the oldest have left: the last of them is send number 2000 + n - cap.
        assert adm.room_at == int(sends[2000 + n - cap - 1]) + 1 + 86400
        assert store.admit("s", f"x{cap}", n, adm.room_at - 1, None, cap).outcome == OVER_DAILY
        assert store.admit("s", f"x{cap}", n, adm.room_at, None, cap).outcome == COUNTED
        store.close()
        store = SQLiteCounterStore(str(tmp_path / f"d{cap}.sqlite"))
        for i, t in enumerate(sends):
            store.admit("s", f"m{i}", 1, t, None, None)
    store.close()


def test_room_frees_when_enough_of_the_oldest_recipients_have_left_the_window(tmp_path: Path):
    store = SQLiteCounterStore(str(tmp_path / "r.sqlite"))
    for name, offset, n in (("a", 0, 2), ("b", 10, 3), ("c", 20, 1)):
        assert store.admit("s", name, n, T0 + offset, None, None).outcome == COUNTED
    # 6 in the hour, cap 6: a 4-recipient message needs a and b gone (b's second ends at T0 + 11).
    adm = store.admit("s", "d", 4, T0 + 30, 6, None)
    assert adm.outcome == OVER_HOURLY and adm.room_at == T0 + 11 + 3600
    # A 1-recipient message needs only a gone.
    assert store.admit("s", "e", 1, T0 + 30, 6, None).room_at == T0 + 1 + 3600
    # The cap lowered under the count (a restarted warmup): 5 must leave, a and b again.
    assert store.admit("s", "f", 1, T0 + 30, 2, None).room_at == T0 + 11 + 3600
    # A cap of 0 (a paused step): even an empty window has no room, so no time is promised.
    assert store.admit("s", "g", 1, T0 + 30, 0, None).room_at is None
    store.close()


def test_a_message_from_a_clock_behind_is_counted_late_never_early(tmp_path: Path):
    store = SQLiteCounterStore(str(tmp_path / "k.sqlite"))
    store.admit("s", "ahead", 1, T0 + 100, None, None)
    store.admit("s", "behind", 1, T0 + 50, None, None)  # another daemon's clock, 50 s behind
    reader = sqlite3.connect(store.path)
    # Just after the "behind" message's own hour: it still counts (it sits in the newest bucket).
    assert read_windows(reader, "s", T0 + 50 + 3600 + 1.5).hour == 2
    # Once the newest bucket has left the hour, both have.
    assert read_windows(reader, "s", T0 + 100 + 3600 + 1.5).hour == 0
    store.close()
