"""The SQLite counter store (WAL): rolling windows that survive restarts and are shared by processes.

Counts are kept in buckets rather than one row per message: one per second
for the hour window, one per minute for the day window. Each bucket also
carries ``total``, the stream's running total up to and including it, so a
window's count is the last bucket's total minus the total before the
window's first bucket: two index look-ups, however many buckets the window
holds (a ``SUM`` over a busy day's 3,600 + 1,440 buckets costs about a
millisecond).
A bucket is in a window while *any* instant of it is: the hour window at ``now`` therefore holds every message of the last
60 minutes plus at most one second more, the day window at most one minute
more. The windows can over-count by that sliver, never under-count: the cap is
never exceeded, and room frees at most a second (a minute) late.

A window also counts buckets *after* ``now``. Two processes whose clocks or
``now`` readings differ slightly then still see each other's messages, so the
invariant holds at every instant, not just at each process's own ``now``.
Buckets are only added at the end: a message stamped before the stream's
newest bucket (a clock a little behind) is counted in that newest bucket, so it
stays in the windows a little longer than it must (over-counting again), and
the newest bucket's total is always the stream's total.

The check-and-add is one ``INSERT ... SELECT`` statement, so it is one SQLite
transaction: the row goes in only if both windows (read inside the same
statement) stay within their caps. Writers also serialise on an ``flock`` of
``DATABASE.lock``: SQLite's own busy handler sleeps in steps of milliseconds
when two processes collide, where a lock polled in tens of microseconds keeps
the latency flat. A writer that skips the flock (the sqlite3 shell) is still
safe: SQLite refuses to upgrade a stale read snapshot to a write.

WAL checkpoints run in a background thread, not on commit, so that no request
pays for copying the WAL back into the database file.
"""

from __future__ import annotations

import fcntl
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

log = logs.get("policyd")

#: 2: buckets carry running totals (``total``); a version-1 file is converted when opened.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
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
) WITHOUT ROWID;
-- Partial indexes: the hot path inserts 'counted' rows, which these leave untouched.
CREATE INDEX IF NOT EXISTS messages_held ON messages (stream) WHERE state = 'held';
CREATE INDEX IF NOT EXISTS messages_family ON messages (at) WHERE state = 'family_hold';
CREATE TABLE IF NOT EXISTS hour_buckets (
    stream TEXT NOT NULL, second INTEGER NOT NULL, recipients INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, second)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS day_buckets (
    stream TEXT NOT NULL, minute INTEGER NOT NULL, recipients INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, minute)
) WITHOUT ROWID;
{trigger}"""

# Counting a message is one INSERT: the buckets follow in the same statement, so no code
# path (this process, another one, a future release job) can record a message without them.
# Buckets are only ever added at the end: a message whose second (minute) is older than the
# stream's newest bucket (another process's clock a little behind) goes into that newest
# bucket, so it leaves the windows a little later than it could: over-counting, never under.
# The newest bucket's total is then always the stream's total, and a new bucket's is that
# plus its recipients: between neighbouring buckets the totals differ by exactly the later
# one's recipients.
_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS count_message AFTER INSERT ON messages WHEN NEW.state = 'counted'
BEGIN
    INSERT INTO hour_buckets (stream, second, recipients, total)
        VALUES (NEW.stream,
                MAX(CAST(NEW.at AS INTEGER),
                    COALESCE((SELECT MAX(second) FROM hour_buckets WHERE stream = NEW.stream), 0)),
                NEW.recipients,
                NEW.recipients + COALESCE((SELECT total FROM hour_buckets WHERE stream = NEW.stream
                                           ORDER BY second DESC LIMIT 1), 0))
        ON CONFLICT (stream, second) DO UPDATE
            SET recipients = recipients + excluded.recipients, total = total + excluded.recipients;
    INSERT INTO day_buckets (stream, minute, recipients, total)
        VALUES (NEW.stream,
                MAX(CAST(NEW.at / 60 AS INTEGER),
                    COALESCE((SELECT MAX(minute) FROM day_buckets WHERE stream = NEW.stream), 0)),
                NEW.recipients,
                NEW.recipients + COALESCE((SELECT total FROM day_buckets WHERE stream = NEW.stream
                                           ORDER BY minute DESC LIMIT 1), 0))
        ON CONFLICT (stream, minute) DO UPDATE
            SET recipients = recipients + excluded.recipients, total = total + excluded.recipients;
END;
"""

_SCHEMA = _SCHEMA.replace("{trigger}", _TRIGGER)

# Version 1 had buckets without totals: add them (running sums of what is there) and swap the
# trigger, in one transaction, so no message is ever counted against half a conversion.
_MIGRATE_1_TO_2 = (
    "ALTER TABLE hour_buckets ADD COLUMN total INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE day_buckets ADD COLUMN total INTEGER NOT NULL DEFAULT 0",
    """UPDATE hour_buckets SET total = r.total FROM (
        SELECT stream, second, SUM(recipients) OVER (PARTITION BY stream ORDER BY second) AS total FROM hour_buckets
    ) AS r WHERE hour_buckets.stream = r.stream AND hour_buckets.second = r.second""",
    """UPDATE day_buckets SET total = r.total FROM (
        SELECT stream, minute, SUM(recipients) OVER (PARTITION BY stream ORDER BY minute) AS total FROM day_buckets
    ) AS r WHERE day_buckets.stream = r.stream AND day_buckets.minute = r.minute""",
    "DROP TRIGGER IF EXISTS count_message",
    _TRIGGER,
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
)

# A stream's rolling counts from the running totals: the newest bucket's total minus the total
# before the oldest bucket in the window (0 when the window holds no bucket).
_HOUR_COUNT = """COALESCE(
    (SELECT total FROM hour_buckets WHERE stream = :stream ORDER BY second DESC LIMIT 1)
    - (SELECT total - recipients FROM hour_buckets WHERE stream = :stream AND second > :hour_floor
        ORDER BY second LIMIT 1), 0)"""
_DAY_COUNT = """COALESCE(
    (SELECT total FROM day_buckets WHERE stream = :stream ORDER BY minute DESC LIMIT 1)
    - (SELECT total - recipients FROM day_buckets WHERE stream = :stream AND minute > :day_floor
        ORDER BY minute LIMIT 1), 0)"""

# The whole check-and-add as ONE statement: the row (and, by the trigger, its buckets) is
# inserted only if the instance is new and both windows stay within their caps. A NULL cap
# is no cap. Run under the writers' lock, a single statement is one atomic transaction.
_ADMIT_INSERT = f"""
INSERT INTO messages (instance, stream, state, recipients, at, queue_id, hour_after, day_after)
SELECT :instance, :stream, 'counted', :n, :now, :queue_id, w.hour + :n, w.day + :n
FROM (SELECT {_HOUR_COUNT} AS hour, {_DAY_COUNT} AS day) AS w
WHERE (:hourly IS NULL OR w.hour + :n <= :hourly) AND (:daily IS NULL OR w.day + :n <= :daily)
ON CONFLICT (instance) DO NOTHING
RETURNING hour_after, day_after
"""

# When room frees: the oldest bucket by which the window's first ``:need`` recipients are reached
# (totals grow with time, so it is the first bucket whose total reaches "total before the window"
# plus ``:need``). One scan in SQLite, stopping at that bucket: usually the first or second.
_ROOM_HOUR = """
SELECT second FROM hour_buckets WHERE stream = :stream AND second > :floor AND total >= :need + (
    SELECT total - recipients FROM hour_buckets WHERE stream = :stream AND second > :floor ORDER BY second LIMIT 1)
ORDER BY second LIMIT 1
"""
_ROOM_DAY = """
SELECT minute * 60 FROM day_buckets WHERE stream = :stream AND minute > :floor AND total >= :need + (
    SELECT total - recipients FROM day_buckets WHERE stream = :stream AND minute > :floor ORDER BY minute LIMIT 1)
ORDER BY minute LIMIT 1
"""

# Why a message was not counted: everything the refusal needs, in one round trip.
_ADMIT_READ = f"""
SELECT (SELECT state FROM messages WHERE instance = :instance), {_HOUR_COUNT}, {_DAY_COUNT}
"""

#: How often (seconds of ``now``) expired rows are deleted, inside a write that happens anyway.
#: The message table has no index on time (it would slow every count), so a prune scans it.
PRUNE_INTERVAL = 300.0
#: Seconds between WAL checkpoints by the background thread.
CHECKPOINT_INTERVAL = 1.0
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
    # Bucket m covers [60m, 60m+60): in the window while 60m + 60 > now - DAY.
    return (now - DAY) / 60.0 - 1


def read_windows(conn: sqlite3.Connection, stream: str, now: float) -> WindowCounts:
    """The rolling counts of ``stream`` at ``now`` on any connection to the store."""
    hour = conn.execute(
        "SELECT COALESCE(SUM(recipients), 0) FROM hour_buckets WHERE stream = ? AND second > ?",
        (stream, _hour_floor(now)),
    ).fetchone()[0]
    day = conn.execute(
        "SELECT COALESCE(SUM(recipients), 0) FROM day_buckets WHERE stream = ? AND minute > ?",
        (stream, _day_floor(now)),
    ).fetchone()[0]
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
    """Open the store file (creating it and its directory when ``create``) in WAL mode."""
    if create:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif not os.path.exists(path):
        raise StoreError(f"counter store {path} does not exist")
    try:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if create:
            # Small pages: a counted message touches three b-trees, and every touched page is
            # appended to the WAL on commit; 1 KiB pages make that about a quarter of the bytes.
            # (Ignored for a file that exists already.)
            conn.execute("PRAGMA page_size = 1024")
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        if create:
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            _upgrade(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"counter store {path}: {exc}") from exc
    return conn


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring a file written by an earlier release to :data:`SCHEMA_VERSION`, keeping every count."""
    conn.execute("BEGIN IMMEDIATE")  # the version is read and changed by one writer at a time
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] == "1":
            for statement in _MIGRATE_1_TO_2:
                conn.execute(statement)
            log.info("counter store upgraded from schema 1 to 2 (running totals)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="sendguard-checkpoint", daemon=True)
        self._checkpointer.start()
        self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._thread_lock = threading.Lock()
        self._next_prune = float("-inf")
        self._seq = 0
        self._readers = threading.local()
        # Streams whose last check was over a cap: their next check reads before it tries to write.
        self._over_cap: set[str] = set()

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

    def _locked(self, fn):  # type: ignore[no-untyped-def]
        """Run ``fn`` holding the writers' lock: this thread's, then the file's (other processes').

        Every statement in ``fn`` is its own transaction (autocommit); holding the lock
        keeps another writer from slipping in between a statement and the next.
        """
        with self._thread_lock:
            self._lock_file()  # raises StoreError after LOCK_TIMEOUT
            try:
                return fn()
            except sqlite3.Error as exc:
                raise StoreError(f"counter store {self.path}: {exc}") from exc
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

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
        params = {
            "instance": instance,
            "stream": stream,
            "n": recipients,
            "now": now,
            "queue_id": queue_id,
            "hour_floor": _hour_floor(now),
            "day_floor": _day_floor(now),
            "hourly": hourly_cap,
            "daily": daily_cap,
        }

        over_before = stream in self._over_cap

        def step() -> Admission:
            conn = self._conn
            if not over_before:
                # The common case: the message fits, and the INSERT is the whole check-and-add.
                row = conn.execute(_ADMIT_INSERT, params).fetchone()
                if row is not None:
                    return self._counted(stream, now, row)
            # Not counted (over a cap, or a retry), or the stream was over its cap a moment ago
            # (a campaign push): read first, so that a refusal never attempts a write.
            state, hour, day = conn.execute(_ADMIT_READ, params).fetchone()
            if over_before and state is None and self._fits(hour, day, recipients, hourly_cap, daily_cap):
                # The INSERT re-checks both caps itself, so the count stays atomic even against
                # a writer that does not take the flock.
                row = conn.execute(_ADMIT_INSERT, params).fetchone()
                if row is not None:
                    return self._counted(stream, now, row)
                state, hour, day = conn.execute(_ADMIT_READ, params).fetchone()
            if state is not None:
                outcome = ALREADY_COUNTED if state == STATE_COUNTED else ALREADY_HELD
                return Admission(outcome, hour, day)
            # A cap of 0 (a paused ramp step) is "over cap", not "too large": it will open again.
            if hourly_cap and recipients > hourly_cap or daily_cap and recipients > daily_cap:
                return Admission(TOO_LARGE, hour, day)
            if hourly_cap is not None and hour + recipients > hourly_cap:
                self._over_cap.add(stream)
                room = self._room_at(conn, stream, now, hour + recipients - hourly_cap, hourly=True)
                return Admission(OVER_HOURLY, hour, day, room)
            if daily_cap is not None and day + recipients > daily_cap:
                self._over_cap.add(stream)
                room = self._room_at(conn, stream, now, day + recipients - daily_cap, hourly=False)
                return Admission(OVER_DAILY, hour, day, room)
            # Only a writer outside this protocol (one that deletes counts) can get here.
            raise StoreError(f"counter store {self.path}: the count changed under the check; try again")

        return self._locked(step)

    def _counted(self, stream: str, now: float, row: tuple[int, int]) -> Admission:
        self._over_cap.discard(stream)
        self._maybe_prune(now)
        return Admission(COUNTED, row[0], row[1])

    @staticmethod
    def _fits(hour: int, day: int, recipients: int, hourly_cap: int | None, daily_cap: int | None) -> bool:
        return (hourly_cap is None or hour + recipients <= hourly_cap) and (
            daily_cap is None or day + recipients <= daily_cap
        )

    @staticmethod
    def _room_at(conn: sqlite3.Connection, stream: str, now: float, need: int, hourly: bool) -> float | None:
        """When the oldest buckets holding ``need`` recipients will have left the window (None: never)."""
        if hourly:
            sql, floor, width, span = _ROOM_HOUR, _hour_floor(now), 1, HOUR
        else:
            sql, floor, width, span = _ROOM_DAY, _day_floor(now), 60, DAY
        row = conn.execute(sql, {"stream": stream, "floor": floor, "need": need}).fetchone()
        # None: the window does not hold that many (a cap of 0, or a message larger than the cap).
        return None if row is None else float(row[0]) + width + span

    def _maybe_prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL
        conn = self._conn
        conn.execute("DELETE FROM hour_buckets WHERE second <= ?", (_hour_floor(now) - 60,))
        conn.execute("DELETE FROM day_buckets WHERE minute <= ?", (_day_floor(now) - 60,))
        conn.execute(
            "DELETE FROM messages WHERE at < ? AND state IN (?, ?)",
            (now - MESSAGE_RETENTION, STATE_COUNTED, STATE_FAMILY_HOLD),
        )

    def mark_family_hold(self, instance: str, stream: str, now: float, queue_id: str, rule: str) -> bool:
        """Record the family hold of a message; True when this is its first mark (retries and
        further family recipients of the same message add nothing)."""
        if not instance:
            return True

        def step() -> bool:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO messages (instance, stream, state, recipients, at, queue_id, reason)"
                " VALUES (?, ?, 'family_hold', 0, ?, ?, ?)",
                (instance, stream, now, queue_id, rule),
            )
            return cur.rowcount == 1

        return self._locked(step)

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
        while not self._stop.wait(CHECKPOINT_INTERVAL):
            try:
                if conn is None:
                    conn = connect(self.path, self.synchronous, create=False)
                # PASSIVE never waits for, nor blocks, a writer; what it cannot copy now waits for the next round.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except (sqlite3.Error, StoreError) as exc:
                log.warning("counter store %s: checkpoint failed: %s", self.path, exc)
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                pass
            conn.close()

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
