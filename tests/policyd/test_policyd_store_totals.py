"""The store's running totals: window counts from two look-ups must equal a plain sum, always.

The daemon (and ``sendguard status``) counts a window as "newest bucket's total
minus the total before the window's first bucket". These tests check that against
``SUM(recipients)`` over the same buckets through clock skew between processes
and pruning.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard_policyd.store import COUNTED, OVER_DAILY, OVER_HOURLY
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.store.sqlite_reader import read_windows

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
