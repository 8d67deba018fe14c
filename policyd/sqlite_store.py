"""The SQLite counter store (WAL): rolling windows that survive restarts and are shared by processes.

Counts are kept in one-second buckets, one table for both windows. Each
bucket also carries ``total``, the stream's running total up to and including
it, so a window's count is the newest bucket's total minus the total before
the window's first bucket: an index look-up per window, however many buckets
the window holds (a ``SUM`` over a busy day's 86,400 buckets costs
milliseconds). Buckets are kept a day (and a little more), so the one table
serves the hour and the day: a second table of coarser buckets for the day
would cost every counted message one more b-tree to update and write.
A bucket is in a window while *any* instant of it is: each window at ``now``
therefore holds every message of its last 60 minutes (24 hours) plus at most
one second more. The windows can over-count by that sliver, never
under-count: the cap is never exceeded, and room frees at most a second late.

A window also counts buckets *after* ``now``. Two processes whose clocks or
``now`` readings differ slightly then still see each other's messages, so the
invariant holds at every instant, not just at each process's own ``now``.
Buckets are only added at the end: a message stamped before the stream's
newest bucket (a clock a little behind) is counted in that newest bucket, so it
stays in the windows a little longer than it must (over-counting again), and
the newest bucket's total is always the stream's total.

The check-and-add is one SQLite write transaction (``BEGIN IMMEDIATE``): one
statement reads the message's state and both windows, the caps are compared
here, and the row goes in before the transaction commits, so no other writer
can count in between. Writers also serialise on an ``flock`` of
``DATABASE.lock``: SQLite's own busy handler sleeps in steps of milliseconds
when two processes collide, where a lock polled in tens of microseconds keeps
the latency flat. A writer that skips the flock (the sqlite3 shell) is still
safe: it waits for, or is refused, SQLite's write lock like any other.

WAL checkpoints run in a background thread, not on commit, so that no request
pays for copying the WAL back into the database file. The same thread keeps the
WAL file allocated ahead of its writer (wal_headroom.py).
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from sendguard import logs
from sendguard_policyd.counter_store import (
    ALREADY_COUNTED,
    ALREADY_HELD,
    COUNTED,
    DAY,
    HOUR,
    OVER_DAILY,
    OVER_HOURLY,
    STATE_COUNTED,
    STATE_FAMILY_HOLD,
    TOO_LARGE,
    Admission,
    WindowCounts,
)
from sendguard_policyd.wal_headroom import WalHeadroom

log = logs.get("policyd")

#: 3: one table of one-second buckets for both windows (2 had per-second buckets for the hour
#: and per-minute ones for the day; 1 had no running totals). Older files are converted when opened.
SCHEMA_VERSION = 3

# Counting a message is one INSERT: its bucket follows in the same statement, so no code path
# (this process, another one, a future release job, a benchmark's prefill) can record a message
# without it. Buckets are only ever added at the end: a message whose second is older than the
# stream's newest bucket (another process's clock a little behind) goes into that newest bucket,
# so it leaves the windows a little later than it could: over-counting, never under. The newest
# bucket's total is then always the stream's total, and a new bucket's is that plus its
# recipients: between neighbouring buckets the totals differ by exactly the later one's recipients.
_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS count_message AFTER INSERT ON messages WHEN NEW.state = 'counted'
BEGIN
    INSERT INTO buckets (stream, second, recipients, total)
        VALUES (NEW.stream,
                MAX(CAST(NEW.at AS INTEGER),
                    COALESCE((SELECT MAX(second) FROM buckets WHERE stream = NEW.stream), 0)),
                NEW.recipients,
                NEW.recipients + COALESCE((SELECT total FROM buckets WHERE stream = NEW.stream
                                           ORDER BY second DESC LIMIT 1), 0))
        ON CONFLICT (stream, second) DO UPDATE
            SET recipients = recipients + excluded.recipients, total = total + excluded.recipients;
END
"""

_BUCKETS = """CREATE TABLE IF NOT EXISTS buckets (
    stream TEXT NOT NULL, second INTEGER NOT NULL, recipients INTEGER NOT NULL, total INTEGER NOT NULL,
    PRIMARY KEY (stream, second)
) WITHOUT ROWID"""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS messages (
    instance   TEXT PRIMARY KEY,
    stream     TEXT NOT NULL,
    state      TEXT NOT NULL,
    recipients INTEGER NOT NULL,
    at         REAL NOT NULL,
    queue_id   TEXT NOT NULL DEFAULT '',
    reason     TEXT NOT NULL DEFAULT '',
    -- The stream's rolling counts just after this message was counted (for audit and the log).
    hour_after INTEGER NOT NULL DEFAULT 0,
    day_after  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID""",
    # Partial indexes: the hot path inserts 'counted' rows, which these leave untouched.
    "CREATE INDEX IF NOT EXISTS messages_held ON messages (stream) WHERE state = 'held'",
    "CREATE INDEX IF NOT EXISTS messages_family ON messages (at) WHERE state = 'family_hold'",
    _BUCKETS,
    _TRIGGER,
)

# Versions 1 and 2 kept per-second buckets for the hour (``hour_buckets``, pruned after about an
# hour) and per-minute ones for the day (``day_buckets``). The one-second table takes every
# second bucket as it is, and from each minute bucket what its seconds do not already hold (the
# seconds pruned already), at the minute's last second 60 m + 59: that second leaves the day
# window at the very instant the minute did, and it is past the hour window already (it was
# pruned from it). Running totals are recomputed from the recipients (version 1 had none). One
# transaction, so no message is ever counted against half a conversion.
_MIGRATE_TO_3 = (
    _BUCKETS,
    """INSERT INTO buckets (stream, second, recipients, total)
    WITH merged (stream, second, recipients) AS (
        SELECT stream, second, recipients FROM hour_buckets
        UNION ALL
        SELECT stream, second, recipients FROM (
            SELECT d.stream AS stream, d.minute * 60 + 59 AS second,
                   d.recipients - COALESCE((SELECT SUM(h.recipients) FROM hour_buckets AS h
                                            WHERE h.stream = d.stream
                                              AND h.second BETWEEN d.minute * 60 AND d.minute * 60 + 59), 0)
                       AS recipients
            FROM day_buckets AS d)
        WHERE recipients > 0
    ), summed (stream, second, recipients) AS (
        SELECT stream, second, SUM(recipients) FROM merged GROUP BY stream, second
    )
    SELECT stream, second, recipients, SUM(recipients) OVER (PARTITION BY stream ORDER BY second)
    FROM summed WHERE true""",
    "DROP TRIGGER IF EXISTS count_message",
    "DROP TABLE hour_buckets",
    "DROP TABLE day_buckets",
    _TRIGGER,
    "UPDATE meta SET value = '3' WHERE key = 'schema_version'",
)

# Everything a check-and-add needs in one round trip (each statement run from Python costs
# microseconds of its own): the message's state (a retry?), the stream's total (the newest
# bucket's), and the totals before the first bucket of each window (NULL when the window holds
# no bucket). Positional parameters (they bind faster than named ones): 1 stream, 2 hour floor,
# 3 day floor, 4 instance.
_ADMIT_READ = """SELECT
    (SELECT state FROM messages WHERE instance = ?4),
    (SELECT total FROM buckets WHERE stream = ?1 ORDER BY second DESC LIMIT 1),
    (SELECT total - recipients FROM buckets WHERE stream = ?1 AND second > ?2 ORDER BY second LIMIT 1),
    (SELECT total - recipients FROM buckets WHERE stream = ?1 AND second > ?3 ORDER BY second LIMIT 1)
"""

_ADMIT_INSERT = """INSERT INTO messages (instance, stream, state, recipients, at, queue_id, hour_after, day_after)
VALUES (?, ?, 'counted', ?, ?, ?, ?, ?)"""

# A window's count, on any connection (status, scrapes): as in _ADMIT_READ, for one stream.
_WINDOWS = """SELECT
    (SELECT total FROM buckets WHERE stream = ?1 ORDER BY second DESC LIMIT 1),
    (SELECT total - recipients FROM buckets WHERE stream = ?1 AND second > ?2 ORDER BY second LIMIT 1),
    (SELECT total - recipients FROM buckets WHERE stream = ?1 AND second > ?3 ORDER BY second LIMIT 1)
"""

# The same counts on a file an older release wrote and no daemon has opened (and upgraded) yet.
_WINDOWS_BEFORE_3 = """SELECT
    (SELECT COALESCE(SUM(recipients), 0) FROM hour_buckets WHERE stream = ?1 AND second > ?2),
    (SELECT COALESCE(SUM(recipients), 0) FROM day_buckets WHERE stream = ?1 AND minute > (?3 + 1) / 60.0 - 1)
"""

# When room frees: the first bucket in the window whose total reaches ``target`` ("total before
# the window" plus the recipients that must leave). Totals grow with time, so an index scan stops
# at that bucket, usually the first or second. It scans the first ``_ROOM_SCAN`` seconds from the
# window's first bucket only: past them, :func:`_room_second_far` halves the range instead (a cap
# lowered far below the count would otherwise scan most of a day's buckets at every refused attempt).
_ROOM_SCAN = 64
_ROOM_NEAR = f"""SELECT second FROM buckets WHERE stream = ?1 AND second > ?2 AND total >= ?3 AND second <= {_ROOM_SCAN} + (
    SELECT second FROM buckets WHERE stream = ?1 AND second > ?2 ORDER BY second LIMIT 1)
ORDER BY second LIMIT 1"""
_TOTAL_AT = "SELECT total FROM buckets WHERE stream = ? AND second <= ? ORDER BY second DESC LIMIT 1"
_NEWEST = "SELECT second, total FROM buckets WHERE stream = ? ORDER BY second DESC LIMIT 1"

#: How often (seconds of ``now``) expired rows are deleted, by the background thread (see prune).
#: The message table has no index on time (it would slow every count), so a prune scans it.
PRUNE_INTERVAL = 300.0
#: Message records deleted per transaction by a prune (each one holds the writers' lock).
PRUNE_BATCH = 500
#: Seconds between WAL checkpoints by the background thread.
CHECKPOINT_INTERVAL = 1.0
#: A WAL longer than this many frames (pages of 1 KiB) is caught up with the writers held off, so
#: that it restarts from its beginning (see SQLiteCounterStore._catch_up): about 34 MB. Each
#: catch-up holds every request that counts a message for 1-3 ms (two fsyncs), so it should be
#: rare: at ~1,500 counted messages a second (the benchmark) this is one every ~10 s; at the
#: brief's volumes the once-a-second checkpoint keeps up and the WAL restarts on its own.
WAL_RESTART_FRAMES = 32768
#: Bytes a restarted WAL file is truncated to (SQLite's journal_size_limit); a file kept at its
#: size is reused in place, without allocating blocks as it grows again.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: A write waits at most this long (seconds) for another process's write to finish.
LOCK_TIMEOUT = 10.0
#: Message records are kept this long: far beyond any Postfix retry, and a day for status.
MESSAGE_RETENTION = DAY + HOUR


class StoreError(Exception):
    """The store cannot be opened or written (disk full, locked too long, corrupt file)."""


def _hour_floor(now: float) -> float:
    # Bucket s covers [s, s+1): it is in the window while s + 1 > now - HOUR.
    return now - HOUR - 1


def _day_floor(now: float) -> float:
    # Bucket s covers [s, s+1): it is in the window while s + 1 > now - DAY.
    return now - DAY - 1


def _counts(total: int | None, before_hour: int | None, before_day: int | None) -> tuple[int, int]:
    """The windows' counts from the stream's total and the totals before each window's first bucket."""
    if total is None:
        return 0, 0
    # No bucket in a window: it is empty (buckets only grow at the end, so the newest is in it if any is).
    return (0 if before_hour is None else total - before_hour), (0 if before_day is None else total - before_day)


def read_windows(conn: sqlite3.Connection, stream: str, now: float) -> WindowCounts:
    """The rolling counts of ``stream`` at ``now`` on any connection to the store."""
    try:
        hour, day = _counts(*conn.execute(_WINDOWS, (stream, _hour_floor(now), _day_floor(now))).fetchone())
    except sqlite3.OperationalError:
        # A file of an older schema (``sendguard status`` before the upgraded daemon first ran).
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'day_buckets'").fetchone() is None:
            raise
        hour, day = conn.execute(_WINDOWS_BEFORE_3, (stream, _hour_floor(now), _day_floor(now))).fetchone()
    return WindowCounts(hour=int(hour), day=int(day))


def read_held_backlog(conn: sqlite3.Connection) -> dict[str, int]:
    """Over-cap held messages not yet released, per stream."""
    rows = conn.execute("SELECT stream, COUNT(*) FROM messages WHERE state = 'held' GROUP BY stream")
    return {stream: int(n) for stream, n in rows}


def read_family_holds(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Messages held for the family since ``since``, per stream ('' = no stream)."""
    rows = conn.execute(
        "SELECT stream, COUNT(*) FROM messages WHERE state = 'family_hold' AND at >= ? GROUP BY stream",
        (since,),
    )
    return {stream: int(n) for stream, n in rows}


def connect(path: str, synchronous: str = "normal", create: bool = True) -> sqlite3.Connection:
    """Open the store file in WAL mode; with ``create``, make it (and its directory) or upgrade it."""
    if create:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif not os.path.exists(path):
        raise StoreError(f"counter store {path} does not exist")
    try:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if create:
            # Small pages: every page a counted message touches is appended to the WAL on commit;
            # 1 KiB pages make that about a quarter of the bytes. (Ignored for a file that exists.)
            conn.execute("PRAGMA page_size = 1024")
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        if create:
            _create_or_upgrade(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"counter store {path}: {exc}") from exc
    return conn


def _create_or_upgrade(conn: sqlite3.Connection) -> None:
    """Create the schema in a new file, or bring one written by an earlier release to
    :data:`SCHEMA_VERSION`, keeping every count."""
    conn.execute("BEGIN IMMEDIATE")  # the version is read and changed by one writer at a time
    try:
        has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() if has_meta else None
        if row is not None and row[0] in ("1", "2"):
            for statement in _MIGRATE_TO_3:
                conn.execute(statement)
            log.info("counter store upgraded from schema %s to 3 (one table of one-second buckets)", row[0])
        else:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _room_second_far(cur: sqlite3.Cursor, stream: str, floor: float, target: int) -> int | None:
    """The first bucket above ``floor`` whose total reaches ``target``, when it is not among
    the window's first seconds (None when no bucket reaches it).

    Totals grow with the second, so the range of seconds between one known short (``floor``)
    and the newest bucket is halved: one look-up per step, some 17 steps across a day.
    """
    newest = cur.execute(_NEWEST, (stream,)).fetchone()
    if newest is None or newest[1] < target:
        return None
    short, enough = math.floor(floor), newest[0]  # the stream's total there: < target, >= target
    while enough - short > 1:
        middle = (short + enough) // 2
        row = cur.execute(_TOTAL_AT, (stream, middle)).fetchone()
        if row is not None and row[0] >= target:
            enough = middle
        else:
            short = middle
    return enough


class _WritersLock:
    """The writers' lock: this process's threads, then the file's ``flock`` (other processes').

    One object per store, reused by every write (``with store._writers:``): cheaper on the hot
    path than a generator-based context manager. A statement outside ``BEGIN`` is its own
    transaction (autocommit); holding the lock keeps another writer from slipping in between
    such a statement and the next. SQLite errors inside leave as :class:`StoreError`.
    """

    __slots__ = ("_store",)

    def __init__(self, store: SQLiteCounterStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        store = self._store
        store._thread_lock.acquire()
        try:
            store._lock_file()  # raises StoreError after LOCK_TIMEOUT
        except BaseException:
            store._thread_lock.release()
            raise

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        store = self._store
        fcntl.flock(store._lock_fd, fcntl.LOCK_UN)
        store._thread_lock.release()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"counter store {store.path}: {exc}") from exc


class SQLiteCounterStore:
    """The :class:`~sendguard_policyd.counter_store.CounterStore` on one SQLite file.

    One instance is used by one thread at a time (the daemon's event loop);
    other threads (metrics scrapes) open their own connection with :meth:`reader`.
    """

    def __init__(self, path: str, synchronous: str = "normal") -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn = connect(path, synchronous)
        # Checkpoints (copying the WAL back into the file, with an fsync) take milliseconds; done
        # by SQLite on commit they would stall whichever request happens to trigger one. A
        # background thread does them instead, off the event loop.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        # One cursor for the write path: a new one per statement (``conn.execute``) costs an object,
        # its registration with the connection and, in time, the garbage collector's attention.
        self._cur = self._conn.cursor()
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="sendguard-checkpoint", daemon=True)
        self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        self.wal_restart_frames = WAL_RESTART_FRAMES
        self._thread_lock = threading.Lock()
        self._writers = _WritersLock(self)
        self._next_prune = float("-inf")
        # The newest ``now`` a write was given (the clock the prune follows; tests drive it).
        self._newest_now = float("-inf")
        self._seq = 0
        self._readers = threading.local()
        # Streams whose last check was over a cap: their next check reads before it tries to write.
        self._over_cap: set[str] = set()
        self._checkpointer.start()

    # -- the atomic write path ------------------------------------------------------------------

    def _lock_file(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        # Another process is writing (for ~0.1 ms, normally). Poll with a short, growing sleep
        # rather than block: a writer that is stopped (SIGSTOP) must not hang every daemon.
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.00005
        while True:
            time.sleep(delay)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"counter store {self.path}: locked by another process for {LOCK_TIMEOUT:g} s")
                delay = min(delay * 2, 0.002)

    def admit(
        self,
        stream: str,
        instance: str,
        recipients: int,
        now: float,
        hourly_cap: int | None,
        daily_cap: int | None,
        queue_id: str = "",
    ) -> Admission:
        """Check both windows and count the message if it fits, as one transaction."""

        if not instance:
            # Without an instance there is nothing to deduplicate on; the row is still needed for the count.
            self._seq += 1
            instance = f"no-instance:{os.getpid()}:{now}:{self._seq}"
        if now > self._newest_now:
            self._newest_now = now  # the background thread prunes relative to it
        with self._writers:
            return self._admit(stream, instance, recipients, now, hourly_cap, daily_cap, queue_id)

    def _admit(
        self,
        stream: str,
        instance: str,
        recipients: int,
        now: float,
        hourly_cap: int | None,
        daily_cap: int | None,
        queue_id: str,
    ) -> Admission:
        cur = self._cur
        read = (stream, _hour_floor(now), _day_floor(now), instance)
        if stream in self._over_cap:
            # The stream was over a cap a moment ago (a campaign push): read first, so that a
            # refusal, the likely answer, never opens a write transaction.
            state, total, before_hour, before_day = cur.execute(_ADMIT_READ, read).fetchone()
            hour, day = _counts(total, before_hour, before_day)
            if state is not None or not self._fits(hour, day, recipients, hourly_cap, daily_cap):
                return self._refused(cur, stream, now, recipients, hourly_cap, daily_cap, state, total, hour, day)
        cur.execute("BEGIN IMMEDIATE")
        try:
            # Read and write in one transaction: nothing can be counted between the check and the add.
            state, total, before_hour, before_day = cur.execute(_ADMIT_READ, read).fetchone()
            hour, day = _counts(total, before_hour, before_day)
            counted = state is None and self._fits(hour, day, recipients, hourly_cap, daily_cap)
            if counted:
                hour += recipients
                day += recipients
                cur.execute(_ADMIT_INSERT, (instance, stream, recipients, now, queue_id, hour, day))
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        if counted:
            self._over_cap.discard(stream)
            return Admission(COUNTED, hour, day)
        return self._refused(cur, stream, now, recipients, hourly_cap, daily_cap, state, total, hour, day)

    def _refused(
        self,
        cur: sqlite3.Cursor,
        stream: str,
        now: float,
        recipients: int,
        hourly_cap: int | None,
        daily_cap: int | None,
        state: str | None,
        total: int | None,
        hour: int,
        day: int,
    ) -> Admission:
        """The answer for a message that was not counted: a retry, or over a cap (and when room frees)."""
        if state is not None:
            outcome = ALREADY_COUNTED if state == STATE_COUNTED else ALREADY_HELD
            return Admission(outcome, hour, day)
        # A cap of 0 (a paused ramp step) is "over cap", not "too large": it will open again.
        if hourly_cap and recipients > hourly_cap or daily_cap and recipients > daily_cap:
            return Admission(TOO_LARGE, hour, day)
        self._over_cap.add(stream)
        total = total or 0
        if hourly_cap is not None and hour + recipients > hourly_cap:
            room = self._room_at(cur, stream, _hour_floor(now), total - hour, hour + recipients - hourly_cap, HOUR)
            return Admission(OVER_HOURLY, hour, day, room)
        assert daily_cap is not None  # not counted, not a retry, within the hourly cap: over the daily one
        room = self._room_at(cur, stream, _day_floor(now), total - day, day + recipients - daily_cap, DAY)
        return Admission(OVER_DAILY, hour, day, room)

    @staticmethod
    def _fits(hour: int, day: int, recipients: int, hourly_cap: int | None, daily_cap: int | None) -> bool:
        return (hourly_cap is None or hour + recipients <= hourly_cap) and (
            daily_cap is None or day + recipients <= daily_cap
        )

    @staticmethod
    def _room_at(
        cur: sqlite3.Cursor, stream: str, floor: float, before: int, need: int, span: int
    ) -> float | None:
        """When the oldest buckets holding ``need`` recipients will have left the window (None: never).

        ``before`` is the stream's total before the window's first bucket (the first above ``floor``).
        """
        target = before + need
        row = cur.execute(_ROOM_NEAR, (stream, floor, target)).fetchone()
        second = row[0] if row is not None else _room_second_far(cur, stream, floor, target)
        # None: the window does not hold that many (a cap of 0, or a message larger than the cap).
        # Bucket s covers [s, s + 1): it has left the window once s + 1 <= t - span.
        return None if second is None else float(second) + 1 + span

    def prune(self, now: float, conn: sqlite3.Connection | None = None) -> int:
        """Delete buckets and message records that have expired at ``now``; return how many rows went.

        Runs in the background thread every :data:`PRUNE_INTERVAL` seconds of the newest ``now``
        the store has seen. The expired rows are found by a plain read, which in WAL mode runs
        beside the writers (the message table has no index on time, so this is a scan); they are
        then deleted by key in short transactions under the writers' lock, each re-checking
        that the row is still expired. A request therefore never waits for the scan, only for
        one batch of deletes at a time. ``conn``: the connection to use (default: the calling
        thread's reader connection).
        """
        if conn is None:
            conn = self.reader()
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # never a checkpoint under the writers' lock
        # A minute's margin past the day window: a reader's ``now`` a little ahead still finds its buckets.
        bucket_floor = _day_floor(now) - 60
        expired = now - MESSAGE_RETENTION
        try:
            buckets = conn.execute(
                "SELECT stream, MAX(second), COUNT(*) FROM buckets WHERE second <= ? GROUP BY stream", (bucket_floor,)
            ).fetchall()
            instances = [
                row[0]
                for row in conn.execute(
                    "SELECT instance FROM messages WHERE at < ? AND state IN (?, ?)",
                    (expired, STATE_COUNTED, STATE_FAMILY_HOLD),
                )
            ]
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc
        deleted = 0
        for stream, newest, _ in buckets:
            # Buckets of a stream below the floor form one key range: one short delete each.
            deleted += self._delete_locked(
                conn, "DELETE FROM buckets WHERE stream = ? AND second <= ?", (stream, min(newest, bucket_floor))
            )
        for start in range(0, len(instances), PRUNE_BATCH):
            batch = instances[start : start + PRUNE_BATCH]
            marks = ",".join("?" * len(batch))
            deleted += self._delete_locked(
                conn,
                f"DELETE FROM messages WHERE instance IN ({marks}) AND at < ? AND state IN (?, ?)",
                (*batch, expired, STATE_COUNTED, STATE_FAMILY_HOLD),
            )
        return deleted

    def _delete_locked(self, conn: sqlite3.Connection, sql: str, params: tuple) -> int:
        with self._writers:
            return conn.execute(sql, params).rowcount

    def mark_family_hold(self, instance: str, stream: str, now: float, queue_id: str, rule: str) -> bool:
        """Record the family hold of a message; True when this is its first mark (retries and
        further family recipients of the same message add nothing)."""
        if not instance:
            return True
        if now > self._newest_now:
            self._newest_now = now

        with self._writers:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO messages (instance, stream, state, recipients, at, queue_id, reason)"
                " VALUES (?, ?, 'family_hold', 0, ?, ?, ?)",
                (instance, stream, now, queue_id, rule),
            )
            return cur.rowcount == 1

    def message_state(self, instance: str) -> str | None:
        """The recorded state of a message, read on the write connection (the event loop's thread)."""
        if not instance:
            return None
        try:
            row = self._conn.execute("SELECT state FROM messages WHERE instance = ?", (instance,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc
        return row[0] if row else None

    # -- reads --------------------------------------------------------------------------------------

    def reader(self) -> sqlite3.Connection:
        """A connection for the calling thread, for reads outside the event loop (scrapes, status)."""
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = connect(self.path, self.synchronous, create=False)
            self._readers.conn = conn
        return conn

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The rolling counts of ``stream`` (on the calling thread's reader connection)."""
        try:
            return read_windows(self.reader(), stream, now)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def held_backlog(self) -> dict[str, int]:
        """Over-cap held messages per stream (always empty until over-cap holds exist)."""
        try:
            return read_held_backlog(self.reader())
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def _checkpoint_loop(self) -> None:
        conn = None
        headroom = None
        while not self._stop.wait(CHECKPOINT_INTERVAL):
            try:
                if conn is None:
                    conn = connect(self.path, self.synchronous, create=False)
                    headroom = WalHeadroom(conn, self.path, WAL_SIZE_LIMIT)
                # PASSIVE never waits for, nor blocks, a writer; what it cannot copy now waits for the next round.
                _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames > self.wal_restart_frames:
                    self._catch_up(conn)
                assert headroom is not None
                try:
                    headroom.after_checkpoint(frames)
                except OSError as exc:  # a full disk: commits extend the file themselves, as before
                    log.warning("counter store %s: cannot extend the WAL ahead of its writer: %s", self.path, exc)
                newest = self._newest_now
                if newest >= self._next_prune:
                    self._next_prune = newest + PRUNE_INTERVAL
                    self.prune(newest, conn)
            except (sqlite3.Error, StoreError) as exc:
                log.warning("counter store %s: checkpoint failed: %s", self.path, exc)
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                pass
            conn.close()

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Copy the last frames of a long WAL with the writers held off, so the next write restarts it.

        SQLite starts the WAL over from its beginning only when a writer finds every frame
        copied back; under a steady stream of counted messages a checkpoint that runs beside
        the writers never gets there, and the WAL would grow by kilobytes per message without
        end. With the writers' lock held, PASSIVE copies the few frames written since the pass
        just before (about a millisecond, most of it the database file's fsync); it still never
        waits for a reader, so a slow scrape cannot stall requests.
        """
        with self._writers:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        """Stop the checkpoint thread, close the write connection and the lock file."""
        self._stop.set()
        self._checkpointer.join(timeout=5)
        try:
            self._conn.close()
        finally:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
