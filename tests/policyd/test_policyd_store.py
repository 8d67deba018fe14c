"""The SQLite counter store: rolling windows, atomic check-and-add, idempotency, persistence."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendguard_policyd.store import (
    ALREADY_COUNTED,
    ALREADY_HELD,
    COUNTED,
    OVER_DAILY,
    OVER_HOURLY,
    TOO_LARGE,
)
from sendguard_policyd.store.sqlite import SQLiteCounterStore

T0 = dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.timezone.utc).timestamp()


def at(hh: int, mm: int, ss: int = 0) -> float:
    return T0 + (hh - 10) * 3600 + mm * 60 + ss


def store_in(tmp_path: Path) -> SQLiteCounterStore:
    return SQLiteCounterStore(str(tmp_path / "sub" / "dir" / "policyd.sqlite"))


def assert_no_window_over(accepted: list[tuple[float, int]], span: float, cap: int) -> None:
    """At every instant, the recipients sent in the preceding ``span`` seconds are at most ``cap``."""
    for t, _ in accepted:  # the window count peaks right at a send
        in_window = sum(n for u, n in accepted if t - span < u <= t)
        assert in_window <= cap, f"{in_window} recipients in the {span:.0f} s before {t}"


def test_store_creates_its_directory_and_uses_wal(tmp_path: Path):
    store = store_in(tmp_path)
    assert (tmp_path / "sub" / "dir" / "policyd.sqlite").exists()
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_rolling_hour_across_an_hour_boundary_is_not_a_clock_hour(tmp_path: Path):
    store = store_in(tmp_path)
    cap = 3
    sends = [at(10, 50), at(10, 55), at(10, 59, 59)]
    for i, t in enumerate(sends):
        assert store.admit("trucking", f"i{i}", 1, t, cap, None).outcome == COUNTED
    # A clock-hour counter would reset at 11:00 and let three more through: a rolling one does not.
    adm = store.admit("trucking", "i3", 1, at(11, 0, 1), cap, None)
    assert adm.outcome == OVER_HOURLY and adm.hour_count == 3
    # Room frees when the 10:50 send leaves the window (one-second buckets: at most 1 s late).
    assert at(11, 50) < adm.room_at <= at(11, 50, 1)
    assert store.admit("trucking", "i3", 1, at(11, 49, 59), cap, None).outcome == OVER_HOURLY
    assert store.admit("trucking", "i3", 1, at(11, 50, 1), cap, None).outcome == COUNTED
    assert store.admit("trucking", "i4", 1, at(11, 50, 2), cap, None).outcome == OVER_HOURLY
    store.close()


def test_steady_sending_across_hour_boundaries_never_exceeds_the_cap(tmp_path: Path):
    store = store_in(tmp_path)
    rng = random.Random(7)
    cap, accepted, t, i = 20, [], at(9, 30), 0
    while t < at(13, 30):
        n = rng.choice([1, 1, 1, 2, 5])
        adm = store.admit("trucking", f"m{i}", n, t, cap, None)
        if adm.outcome == COUNTED:
            accepted.append((t, n))
        else:
            assert adm.outcome == OVER_HOURLY and adm.room_at > t
        t += rng.uniform(1, 240)
        i += 1
    assert_no_window_over(accepted, 3600, cap)
    # And the cap is used, not just respected: every rolling hour after the first is nearly full.
    assert sum(n for _, n in accepted) >= 3 * cap
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.tuples(st.floats(0, 900), st.integers(1, 4)), min_size=1, max_size=60),
    hourly=st.integers(1, 12),
    daily=st.integers(1, 40),
)
def test_property_no_rolling_window_ever_exceeds_its_cap(steps, hourly, daily):
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteCounterStore(f"{tmp}/p.sqlite")
        t, accepted = at(10, 59), []
        for i, (gap, n) in enumerate(steps):
            t += gap
            if store.admit("s", f"x{i}", n, t, hourly, daily).outcome == COUNTED:
                accepted.append((t, n))
        store.close()
    assert_no_window_over(accepted, 3600, hourly)
    assert_no_window_over(accepted, 86400, daily)


def test_daily_cap_over_rolling_24_hours(tmp_path: Path):
    store = store_in(tmp_path)
    for i in range(4):
        assert store.admit("s", f"d{i}", 1, at(10, 0) + i * 7200, 100, 4).outcome == COUNTED
    adm = store.admit("s", "d4", 1, at(20, 0), 100, 4)
    assert adm.outcome == OVER_DAILY and adm.day_count == 4
    # The first send (10:00) leaves the 24-hour window the next day at 10:00 (one-second buckets: at most 1 s late).
    assert at(10, 0) + 86400 < adm.room_at <= at(10, 0, 1) + 86400
    assert store.admit("s", "d4", 1, at(10, 0) + 86400 - 60, 100, 4).outcome == OVER_DAILY
    assert store.admit("s", "d4", 1, at(10, 1) + 86400, 100, 4).outcome == COUNTED
    store.close()


def test_a_message_counts_its_recipients_and_all_or_nothing(tmp_path: Path):
    store = store_in(tmp_path)
    assert store.admit("s", "a", 5, at(10, 0), 7, None).outcome == COUNTED
    adm = store.admit("s", "b", 3, at(10, 1), 7, None)
    assert adm.outcome == OVER_HOURLY and adm.hour_count == 5  # 5 + 3 > 7: nothing of b is counted
    assert store.admit("s", "c", 2, at(10, 2), 7, None).outcome == COUNTED
    assert store.windows("s", at(10, 3)).hour == 7
    assert store.admit("s", "big", 8, at(12, 0), 7, None).outcome == TOO_LARGE
    store.close()


def test_same_instance_never_counts_twice(tmp_path: Path):
    store = store_in(tmp_path)
    assert store.admit("s", "retry-me", 2, at(10, 0), 3, None).outcome == COUNTED
    again = store.admit("s", "retry-me", 2, at(10, 0, 30), 3, None)
    assert again.outcome == ALREADY_COUNTED and again.passes and again.hour_count == 2
    assert store.windows("s", at(10, 1)).hour == 2


def test_deferred_attempts_consume_nothing(tmp_path: Path):
    store = store_in(tmp_path)
    store.admit("s", "a", 1, at(10, 0), 1, None)
    for i in range(10):
        assert store.admit("s", f"d{i}", 1, at(10, 1, i), 1, None).outcome == OVER_HOURLY
    assert store.windows("s", at(10, 2)).hour == 1
    store.close()


def test_family_hold_marks_the_instance_so_it_is_never_counted(tmp_path: Path):
    store = store_in(tmp_path)
    store.mark_family_hold("held-1", "trucking", at(10, 0), "", "yahoo.*")
    store.mark_family_hold("held-1", "trucking", at(10, 0), "", "yahoo.*")  # a second family recipient
    adm = store.admit("trucking", "held-1", 2, at(10, 0, 5), 3, None)
    assert adm.outcome == ALREADY_HELD and not adm.passes
    assert store.windows("trucking", at(10, 1)).hour == 0
    assert store.message_state("held-1") == "family_hold"


def test_streams_never_share_a_budget(tmp_path: Path):
    store = store_in(tmp_path)
    for i in range(3):
        assert store.admit("trucking", f"t{i}", 1, at(10, 0), 3, None).outcome == COUNTED
    assert store.admit("trucking", "t3", 1, at(10, 0), 3, None).outcome == OVER_HOURLY
    assert store.admit("healthcare", "h0", 1, at(10, 0), 3, None).outcome == COUNTED
    assert store.windows("healthcare", at(10, 1)).hour == 1


def test_counts_survive_reopening_the_file(tmp_path: Path):
    store = store_in(tmp_path)
    for i in range(3):
        store.admit("s", f"r{i}", 1, at(10, 0, i), 3, None)
    store.close()
    reopened = store_in(tmp_path)
    assert reopened.windows("s", at(10, 30)).hour == 3
    assert reopened.admit("s", "r3", 1, at(10, 30), 3, None).outcome == OVER_HOURLY
    assert reopened.admit("s", "r0", 1, at(10, 30), 3, None).outcome == ALREADY_COUNTED
    reopened.close()


def test_expired_rows_are_pruned_but_windows_stay_right(tmp_path: Path):
    store = store_in(tmp_path)
    for i in range(50):
        store.admit("s", f"old{i}", 1, at(10, 0) + i, None, None)
    later = at(10, 0) + 3 * 86400
    store.admit("s", "new", 1, later, None, None)
    store.prune(later)
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT COUNT(*) FROM buckets").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    assert store.windows("s", later).hour == 1 and store.windows("s", later).day == 1
    assert store.admit("s", "old3", 1, later + 1, None, None).outcome == COUNTED  # its record is gone
    store.close()


def test_the_background_thread_prunes_by_the_newest_time_written(tmp_path: Path, monkeypatch):
    # Pruning runs beside the requests, not inside one: a write three days later is enough for
    # the background thread to remove what expired, and the windows stay right meanwhile.
    from sendguard_policyd.store import sqlite_maintenance

    monkeypatch.setattr(sqlite_maintenance, "CHECKPOINT_INTERVAL", 0.05)
    store = store_in(tmp_path)
    try:
        for i in range(50):
            store.admit("s", f"old{i}", 1, at(10, 0) + i, None, None)
        store.mark_family_hold("held-old", "s", at(10, 1), "Q1", "yahoo.com")
        later = at(10, 0) + 3 * 86400
        store.admit("s", "new", 2, later, None, None)
        conn = sqlite3.connect(store.path)
        deadline = time.monotonic() + 10
        while conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conn.execute("SELECT instance FROM messages").fetchall() == [("new",)]
        assert conn.execute("SELECT COUNT(*) FROM buckets").fetchone()[0] == 1
        assert store.windows("s", later).hour == 2 and store.windows("s", later).day == 2
    finally:
        store.close()


def test_a_writer_stuck_in_another_process_times_out_instead_of_hanging(tmp_path: Path, monkeypatch):
    import fcntl
    import os

    import pytest

    from sendguard_policyd.store import StoreError, sqlite_lock

    store = store_in(tmp_path)
    monkeypatch.setattr(sqlite_lock, "LOCK_TIMEOUT", 0.2)
    other = os.open(store.path + ".lock", os.O_RDWR)  # another open file: conflicts like another process
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        with pytest.raises(StoreError, match="locked by another process"):
            store.admit("s", "a", 1, at(10, 0), 3, None)
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    assert store.admit("s", "a", 1, at(10, 0), 3, None).outcome == COUNTED  # and it recovers
    store.close()


def test_the_wal_stays_bounded_under_a_steady_stream_of_counted_messages(tmp_path: Path, monkeypatch):
    # A checkpoint beside busy writers never copies the last frames, so SQLite would never start
    # the WAL over: about 3 KB per counted message, without end. The store catches up with the
    # writers held off once the WAL is long, and the next write starts it over.
    from sendguard_policyd.store import sqlite_maintenance

    monkeypatch.setattr(sqlite_maintenance, "CHECKPOINT_INTERVAL", 0.05)
    store = SQLiteCounterStore(str(tmp_path / "p.sqlite"))
    store.maintenance.wal_restart_frames = 2000  # about 2 MB
    wal = tmp_path / "p.sqlite-wal"
    try:
        biggest = 0
        now = 1_800_000_000.0
        for i in range(20000):  # about 60 MB of WAL frames in all
            assert store.admit("trucking", f"m{i}", 1, now + i * 0.001, None, None).outcome == COUNTED
            if i % 500 == 0:
                biggest = max(biggest, wal.stat().st_size)
        assert store.windows("trucking", now + 20).hour == 20000
    finally:
        store.close()
    assert biggest < 16 * 1024 * 1024, f"WAL grew to {biggest / 1e6:.0f} MB"


def test_a_file_of_another_schema_version_is_refused_naming_file_and_versions(tmp_path: Path):
    import pytest

    from sendguard_policyd.backend import open_reader
    from sendguard_policyd.settings import PolicydSettings
    from sendguard_policyd.store import StoreError
    from sendguard_policyd.store.sqlite_schema import SCHEMA_VERSION

    path = tmp_path / "old.sqlite"
    store = SQLiteCounterStore(str(path))
    store.admit("s", "a", 1, at(10, 0), 3, None)
    store.close()
    # A file written by some other release: same tables, another version.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()
    for opener in (lambda: SQLiteCounterStore(str(path)), lambda: open_reader(PolicydSettings(database=str(path)))):
        with pytest.raises(StoreError) as info:
            opener()
        message = str(info.value)
        assert str(path) in message
        assert "schema version 2 found" in message and f"version {SCHEMA_VERSION} expected" in message
    # Nothing was changed: the file still says 2, and its count is still there.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    assert conn.execute("SELECT SUM(recipients) FROM buckets").fetchone() == (1,)
    conn.close()


def test_a_sqlite_file_that_is_not_a_store_is_refused(tmp_path: Path):
    import pytest

    from sendguard_policyd.store import StoreError

    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"other\.sqlite: schema version none found, version 3 expected"):
        SQLiteCounterStore(str(path))


def test_daemons_starting_together_on_a_new_file_all_open_it(tmp_path):
    # Several daemons started at once by one unit file (or reuse_port) on a store that does not
    # exist yet: each must open it, none may stop with "database is locked".
    path = tmp_path / "new" / "policyd.sqlite"
    start = time.time() + 1.0
    code = (
        "import sys, time\n"
        "from sendguard_policyd.store.sqlite import SQLiteCounterStore\n"
        f"while time.time() < {start}: pass\n"
        f"SQLiteCounterStore({str(path)!r}).close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, cwd=tmp_path) for _ in range(6)
    ]
    errors = [p.stderr.read().decode() for p in procs if p.wait(timeout=60) != 0]
    assert errors == []
    store = SQLiteCounterStore(str(path))
    try:
        assert store.admit("t", "one", 1, time.time(), 10, 100).outcome == "counted"
    finally:
        store.close()
