"""Reading the SQLite store: a window's count from the running totals, and the family holds.

A bucket is in a window while *any* instant of it is: each window at ``now``
therefore holds every message of its last 60 minutes (24 hours) plus at most
one second more. The windows can over-count by that sliver, never
under-count: the cap is never exceeded, and room frees at most a second late.

A window also counts buckets *after* ``now``. Two processes whose clocks or
``now`` readings differ slightly then still see each other's messages, so the
invariant holds at every instant, not just at each process's own ``now``.

:class:`SQLiteReader` is the read-only :class:`~sendguard_policyd.store.StoreReader`
of ``sendguard status``; the daemon's store reads the same way on per-thread
connections.
"""

from __future__ import annotations

import sqlite3
from typing import Collection

from sendguard_policyd.store import (
    HOLD_PAUSE,
    STATE_HELD,
    STATE_RELEASING,
    Backlog,
    RampHistory,
    Pause,
    StoreError,
    WindowCounts,
    Windows,
)
from sendguard_policyd.store.sqlite_ramp import read_ramp_history
from sendguard_policyd.store.sqlite_pauses import read_history, read_pauses
from sendguard_policyd.store.sqlite_schema import connect
from sendguard_policyd.store.sqlite_text import from_sql, to_sql

# A window's count, on any connection: the stream's total (the newest bucket's) and the totals
# before the first bucket of each window (NULL when the window holds no bucket).
# Positional parameters: 1 stream, 2 hour floor, 3 day floor.
WINDOWS = """SELECT
    (SELECT total FROM buckets WHERE stream = ?1 ORDER BY second DESC LIMIT 1),
    (SELECT total - recipients FROM buckets WHERE stream = ?1 AND second > ?2 ORDER BY second LIMIT 1),
    (SELECT total - recipients FROM buckets WHERE stream = ?1 AND second > ?3 ORDER BY second LIMIT 1)
"""

_FAMILY_HOLDS = "SELECT stream, COUNT(*) FROM messages WHERE state = 'family_hold' AND at >= ? GROUP BY stream"


#: The windows of every store that is not told otherwise: an hour and a day.
STANDARD = Windows()

_BACKLOG = f"""SELECT stream, COUNT(*), SUM(recipients), MIN(at), SUM(reason = '{HOLD_PAUSE}') FROM messages
WHERE state IN ('{STATE_HELD}', '{STATE_RELEASING}') GROUP BY stream"""


def hour_floor(now: float, windows: Windows = STANDARD) -> float:
    """The second above which a bucket is in the rolling hour at ``now``."""
    # Bucket s covers [s, s+1): it is in the window while s + 1 > now - HOUR.
    return now - windows.hour - 1


def day_floor(now: float, windows: Windows = STANDARD) -> float:
    """The second above which a bucket is in the rolling day at ``now``."""
    return now - windows.day - 1


def counts(total: int | None, before_hour: int | None, before_day: int | None) -> tuple[int, int]:
    """The windows' counts from the stream's total and the totals before each window's first bucket."""
    if total is None:
        return 0, 0
    # No bucket in a window: it is empty (buckets only grow at the end, so the newest is in it if any is).
    return (0 if before_hour is None else total - before_hour), (0 if before_day is None else total - before_day)


def read_windows(conn: sqlite3.Connection, stream: str, now: float, windows: Windows = STANDARD) -> WindowCounts:
    """The rolling counts of ``stream`` at ``now`` on any connection to the store."""
    floors = (stream, hour_floor(now, windows), day_floor(now, windows))
    hour, day = counts(*conn.execute(WINDOWS, floors).fetchone())
    return WindowCounts(hour=hour, day=day)


def read_held_backlog(conn: sqlite3.Connection) -> dict[str, Backlog]:
    """Held messages waiting for release, per stream that has any."""
    return {
        stream: Backlog(messages=int(n), recipients=int(r or 0), oldest_at=oldest, paused=int(p or 0))
        for stream, n, r, oldest, p in conn.execute(_BACKLOG)
    }


#: Queue ids per look-up (SQLite's limit on bound parameters is 32,766; a batch of log lines has fewer).
_QUEUE_IDS_PER_READ = 500


def read_streams_of(conn: sqlite3.Connection, queue_ids: Collection[str]) -> dict[str, str]:
    """The streams of the messages recorded under ``queue_ids`` (those that have a record).

    The message table has no index on the queue id (it would cost every counted message one
    more b-tree to write): each look-up scans it, so the watcher asks once per batch of lines."""
    wanted = [to_sql(q) for q in dict.fromkeys(queue_ids) if q]
    out: dict[str, str] = {}
    for start in range(0, len(wanted), _QUEUE_IDS_PER_READ):
        chunk = wanted[start : start + _QUEUE_IDS_PER_READ]
        marks = ",".join("?" * len(chunk))
        for queue_id, stream in conn.execute(f"SELECT queue_id, stream FROM messages WHERE queue_id IN ({marks})", chunk):
            out[from_sql(queue_id)] = stream
    return out


def read_family_holds(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Messages held for the family since ``since``, per stream."""
    return {stream: int(n) for stream, n in conn.execute(_FAMILY_HOLDS, (since,))}


class SQLiteReader:
    """A read-only connection to a store file that exists (``sendguard status``)."""

    def __init__(self, path: str, windows: Windows = STANDARD) -> None:
        self.path = path
        self.windows_length = windows
        self._conn = connect(path, create=False)

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The rolling counts of ``stream`` at ``now``."""
        try:
            return read_windows(self._conn, stream, now, self.windows_length)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def held_backlog(self) -> dict[str, Backlog]:
        """Over-cap messages waiting for release, per stream."""
        try:
            return read_held_backlog(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def family_holds(self, since: float) -> dict[str, int]:
        """Messages held for the family since ``since``, per stream."""
        try:
            return read_family_holds(self._conn, since)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def ramp_history(self, stream: str) -> RampHistory:
        """The stream's sent deliveries per ramp day, paused days and step-backs."""
        try:
            return read_ramp_history(self._conn, stream, self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def pauses(self, now: float) -> list[Pause]:
        """The pauses in force at ``now``."""
        try:
            return read_pauses(self._conn, now)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def pause_history(self, since: float) -> list[Pause]:
        """The pauses kept that lasted past ``since``, oldest first."""
        try:
            return read_history(self._conn, since)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def stream_of(self, queue_id: str) -> str | None:
        """The stream of the message queued as ``queue_id``, or None."""
        return self.streams_of((queue_id,)).get(queue_id)

    def streams_of(self, queue_ids: Collection[str]) -> dict[str, str]:
        """The streams of the messages recorded under ``queue_ids``."""
        try:
            return read_streams_of(self._conn, queue_ids)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
