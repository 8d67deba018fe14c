"""The SQLite counter store (WAL): rolling windows that survive restarts and are shared by processes.

This file is where the store is written: the check-and-add and the family
mark. The file's tables are in ``sqlite_schema.py``, how a window is read in
``sqlite_reader.py``, the "when does room free" search in ``sqlite_room.py``,
the writers' lock in ``sqlite_lock.py`` and the background thread
(checkpoints, pruning) in ``sqlite_maintenance.py``.

The check-and-add is one SQLite write transaction (``BEGIN IMMEDIATE``): one
statement reads the message's state and both windows, the caps are compared
here, and the row goes in before the transaction commits, so no other writer
can count in between; the writers' lock serialises the processes around it.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Collection

from sendguard_policyd.store import (
    ALREADY_COUNTED,
    ALREADY_HELD,
    COUNTED,
    HOLD_OVER_CAP,
    NOT_HELD,
    OVER_DAILY,
    OVER_HOURLY,
    STATE_COUNTED,
    STATE_GONE,
    STATE_HELD,
    STATE_RELEASED,
    STATE_RELEASING,
    TOO_LARGE,
    Admission,
    Backlog,
    HeldMessage,
    RampHistory,
    Pause,
    StoreError,
    WindowCounts,
    Windows,
    operators_of_text,
    operators_text,
)
from sendguard_policyd.store import sqlite_pauses
from sendguard_policyd.store.sqlite_identity import FileWatch
from sendguard_policyd.store.sqlite_lock import WritersLock
from sendguard_policyd.store.sqlite_peers import StoreMark, other_daemons
from sendguard_policyd.store.sqlite_maintenance import Maintenance
from sendguard_policyd.store.sqlite_reader import (
    STANDARD,
    WINDOWS,
    counts,
    day_floor,
    hour_floor,
    read_family_holds,
    read_held_backlog,
    read_streams_of,
    read_windows,
)
from sendguard_policyd.store.sqlite_ramp import ADD_SENT, MARK_PAUSED, STEP_BACK, day_text, read_ramp_history
from sendguard_policyd.store.sqlite_room import room_at
from sendguard_policyd.store.sqlite_schema import connect
from sendguard_policyd.store.sqlite_text import from_sql, to_sql

# Everything a check-and-add needs in one round trip (each statement run from Python costs
# microseconds of its own): the message's state (a retry?) and the window counts' parts
# (as in WINDOWS). Positional parameters (they bind faster than named ones): 1 stream,
# 2 hour floor, 3 day floor, 4 instance.
_ADMIT_READ = "SELECT (SELECT state FROM messages WHERE instance = ?4)," + WINDOWS.removeprefix("SELECT")

_ADMIT_INSERT = """INSERT INTO messages (instance, stream, state, recipients, at, queue_id, hour_after, day_after)
VALUES (?, ?, 'counted', ?, ?, ?, ?, ?)"""

_FAMILY_INSERT = """INSERT OR IGNORE INTO messages (instance, stream, state, recipients, at, queue_id, reason)
VALUES (?, ?, 'family_hold', 0, ?, ?, ?)"""

_HOLD_INSERT = """INSERT OR IGNORE INTO messages (instance, stream, state, recipients, at, queue_id, reason)
VALUES (?, ?, 'held', ?, ?, ?, ?)"""

_WAITING = f"""SELECT queue_id, instance, stream, recipients, at, state, reason, operators
FROM messages LEFT JOIN held_operators USING (instance)
WHERE stream = ? AND state IN ('{STATE_HELD}', '{STATE_RELEASING}') ORDER BY at, instance"""

_WAITING_BY_QID = f"""SELECT instance, stream, recipients, state FROM messages
WHERE queue_id = ? AND state IN ('{STATE_HELD}', '{STATE_RELEASING}') ORDER BY at LIMIT 1"""

_CLAIM = "UPDATE messages SET state = 'releasing', at = ?, hour_after = ?, day_after = ? WHERE instance = ?"

_FINISH = f"UPDATE messages SET state = ? WHERE queue_id = ? AND state IN ('{STATE_HELD}', '{STATE_RELEASING}')"


def _fits(hour: int, day: int, recipients: int, hourly_cap: int | None, daily_cap: int | None) -> bool:
    return (hourly_cap is None or hour + recipients <= hourly_cap) and (
        daily_cap is None or day + recipients <= daily_cap
    )


def _refuse_a_second_beginning(path: str) -> None:
    """A missing store may be made empty only when no other daemon here still counts in one of that name."""
    peers = other_daemons(path)
    if peers:
        raise StoreError(
            f"counter store {path} does not exist, but sendguard process(es) {', '.join(map(str, peers))}"
            " still count in a file of that name that was deleted or moved: an empty store would count"
            " from zero beside them and spend the caps twice. Stop every daemon using it, then start them again"
        )


class SQLiteCounterStore:
    """The :class:`~sendguard_policyd.store.CounterStore` on one SQLite file.

    One thread writes (the daemon's event loop); other threads (metrics scrapes, the
    background thread) read on connections of their own.
    """

    def __init__(self, path: str, synchronous: str = "normal", windows: Windows = STANDARD) -> None:
        self.path = path
        self.synchronous = synchronous
        self.windows_length = windows
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._writers = WritersLock(path)
        # Daemons starting together on a new file would race to switch it to WAL and create the
        # schema, and SQLite answers the loser "database is locked" at once, without waiting:
        # the file is opened (and made) under the writers' lock.
        try:
            with self._writers:
                if not os.path.exists(path):
                    _refuse_a_second_beginning(path)
                self._conn = connect(path, synchronous)
            self._mark = StoreMark(path)
        except BaseException:
            self._writers.close()
            raise
        # Checkpoints (copying the WAL back into the file, with an fsync) take milliseconds; done
        # by SQLite on commit they would stall whichever request happens to trigger one. The
        # background thread does them instead, off the event loop.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        # One cursor for the write path: a new one per statement (``conn.execute``) costs an object,
        # its registration with the connection and, in time, the garbage collector's attention.
        self._cur = self._conn.cursor()
        self._watch = FileWatch(path, self._writers.fileno())
        self.maintenance = Maintenance(path, synchronous, self._writers, self.check_file)
        self._seq = 0
        self._readers = threading.local()
        # Streams whose last check was over a cap: their next check reads before it tries to write.
        self._over_cap: set[str] = set()
        self.maintenance.start()

    # -- the atomic write path ------------------------------------------------------------------

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
        key = to_sql(instance)
        self.maintenance.saw(now)
        with self._writers:
            cur = self._cur
            read = (stream, hour_floor(now, self.windows_length), day_floor(now, self.windows_length), key)
            if stream in self._over_cap:
                # The stream was over a cap a moment ago (a campaign push): read first, so that a
                # refusal, the likely answer, never opens a write transaction.
                state, total, before_hour, before_day = cur.execute(_ADMIT_READ, read).fetchone()
                hour, day = counts(total, before_hour, before_day)
                if state is not None or not _fits(hour, day, recipients, hourly_cap, daily_cap):
                    return self._refused(cur, stream, now, recipients, hourly_cap, daily_cap, state, total, hour, day)
            cur.execute("BEGIN IMMEDIATE")
            try:
                # Read and write in one transaction: nothing can be counted between the check and the add.
                state, total, before_hour, before_day = cur.execute(_ADMIT_READ, read).fetchone()
                hour, day = counts(total, before_hour, before_day)
                counted = state is None and _fits(hour, day, recipients, hourly_cap, daily_cap)
                if counted:
                    hour += recipients
                    day += recipients
                    cur.execute(_ADMIT_INSERT, (key, stream, recipients, now, to_sql(queue_id), hour, day))
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            if counted:
                self._over_cap.discard(stream)
                return Admission(COUNTED, hour, day)
            # Still under the lock: the room search reads the windows this check saw.
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
        w = self.windows_length
        if hourly_cap is not None and hour + recipients > hourly_cap:
            room = room_at(cur, stream, hour_floor(now, w), total - hour, hour + recipients - hourly_cap, w.hour)
            return Admission(OVER_HOURLY, hour, day, room)
        assert daily_cap is not None  # not counted, not a retry, within the hourly cap: over the daily one
        room = room_at(cur, stream, day_floor(now, w), total - day, day + recipients - daily_cap, w.day)
        return Admission(OVER_DAILY, hour, day, room)

    def mark_family_hold(self, instance: str, stream: str, now: float, queue_id: str, rule: str) -> bool:
        """Record the family hold of a message; True when this is its first mark (retries and
        further family recipients of the same message add nothing)."""
        if not instance:
            return True
        self.maintenance.saw(now)
        with self._writers:
            row = (to_sql(instance), stream, now, to_sql(queue_id), rule)
            return self._cur.execute(_FAMILY_INSERT, row).rowcount == 1

    # -- over-cap holds and their release ----------------------------------------------------------

    def record_hold(
        self,
        instance: str,
        stream: str,
        recipients: int,
        now: float,
        queue_id: str,
        reason: str = HOLD_OVER_CAP,
        operators: tuple[str, ...] = (),
    ) -> bool:
        """Record a message held at END-OF-MESSAGE, with why and its operators; True when it had no
        record before."""
        if not instance:
            # Nothing to deduplicate on: Postfix always sends one; the queue id still identifies it.
            self._seq += 1
            instance = f"no-instance:{os.getpid()}:{now}:{self._seq}"
        self.maintenance.saw(now)
        key = to_sql(instance)
        with self._writers:
            cur = self._cur
            cur.execute("BEGIN IMMEDIATE")
            try:
                first = cur.execute(_HOLD_INSERT, (key, stream, recipients, now, to_sql(queue_id), reason)).rowcount == 1
                if first and operators:
                    cur.execute(sqlite_pauses.INSERT_OPERATORS, (key, operators_text(operators)))
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            return first

    def held_messages(self, stream: str) -> list[HeldMessage]:
        """The stream's messages waiting for release, oldest first (on the calling thread's reader)."""
        try:
            rows = self._reader().execute(_WAITING, (stream,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc
        return [
            HeldMessage(from_sql(q), from_sql(i), s, int(r), float(a), st, why or HOLD_OVER_CAP, operators_of_text(ops))
            for q, i, s, r, a, st, why, ops in rows
        ]

    def claim_release(self, queue_id: str, now: float, hourly_cap: int | None, daily_cap: int | None) -> Admission:
        """Count a held message if it fits now (``held`` → ``releasing``), as one transaction."""
        self.maintenance.saw(now)
        w = self.windows_length
        with self._writers:
            cur = self._cur
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute(_WAITING_BY_QID, (to_sql(queue_id),)).fetchone()
                if row is None:
                    cur.execute("COMMIT")
                    return Admission(NOT_HELD, 0, 0)
                instance, stream, recipients, state = row
                total, before_hour, before_day = cur.execute(
                    WINDOWS, (stream, hour_floor(now, w), day_floor(now, w))
                ).fetchone()
                hour, day = counts(total, before_hour, before_day)
                claimed = state == STATE_HELD and _fits(hour, day, recipients, hourly_cap, daily_cap)
                if claimed:
                    hour += recipients
                    day += recipients
                    cur.execute(_CLAIM, (now, hour, day, instance))
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            if claimed:
                return Admission(COUNTED, hour, day)
            if state == STATE_RELEASING:  # claimed by an earlier pass that did not see Postfix let it go
                return Admission(ALREADY_COUNTED, hour, day)
            return self._refused(cur, stream, now, recipients, hourly_cap, daily_cap, None, total, hour, day)

    def finish_release(self, queue_id: str, state: str, now: float) -> None:
        """Close the waiting record of ``queue_id`` as ``released`` or ``gone``."""
        if state not in (STATE_RELEASED, STATE_GONE):
            raise ValueError(f"a release finishes as {STATE_RELEASED} or {STATE_GONE}, not {state!r}")
        self.maintenance.saw(now)
        with self._writers:
            self._cur.execute(_FINISH, (state, to_sql(queue_id)))

    # -- pauses (sqlite_pauses.py) -----------------------------------------------------------------

    def pause(self, p: Pause) -> None:
        """Put a pause in force (or extend the one in force), as one transaction."""
        with self._writers:
            sqlite_pauses.put_pause(self._cur, p)

    def resume(self, stream: str, operator: str, now: float) -> bool:
        """End the pause in force for ``stream`` and ``operator`` at ``now``; True when there was one."""
        with self._writers:
            return sqlite_pauses.end_pause(self._cur, stream, operator, now)

    def pauses(self, now: float) -> list[Pause]:
        """The pauses in force at ``now`` (on the calling thread's reader connection)."""
        try:
            return sqlite_pauses.read_pauses(self._reader(), now)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def pause_history(self, since: float) -> list[Pause]:
        """The pauses kept that lasted past ``since`` (on the calling thread's reader connection)."""
        try:
            return sqlite_pauses.read_history(self._reader(), since)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def message_state(self, instance: str) -> str | None:
        """The recorded state of a message, read on the write connection (the event loop's thread)."""
        if not instance:
            return None
        if self._writers.refuse is not None:
            raise StoreError(self._writers.refuse)
        try:
            row = self._cur.execute("SELECT state FROM messages WHERE instance = ?", (to_sql(instance),)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc
        return row[0] if row else None

    # -- the ramp history (sqlite_ramp.py): written by the watcher's consumers, not the event loop --

    def add_sent(self, stream: str, day: dt.date, n: int) -> None:
        """Add ``n`` sent deliveries to the stream's ramp day ``day``."""
        if n <= 0:
            return
        with self._writers:
            self._conn.execute(ADD_SENT, (stream, day_text(day), n))

    def mark_paused_day(self, stream: str, day: dt.date) -> bool:
        """Mark ramp day ``day`` paused; True when it was not marked before."""
        with self._writers:
            return self._conn.execute(MARK_PAUSED, (stream, day_text(day))).rowcount == 1

    def step_back(self, stream: str, days: int, rule: str, now: float) -> None:
        """Record a step-back of ``days`` warmup days by ``rule`` at ``now``."""
        if days < 1:
            raise ValueError(f"a step-back goes back at least 1 day, not {days}")
        with self._writers:
            self._conn.execute(STEP_BACK, (stream, now, days, rule))

    # -- reads from any thread ------------------------------------------------------------------

    def check_file(self) -> bool:
        """Refuse every read and write while the file at the path is not the one opened (sqlite_identity.py);
        the background thread calls it once a second. True: the file is the one opened."""
        self._writers.refuse = self._watch.check()
        return self._writers.refuse is None

    def _reader(self) -> sqlite3.Connection:
        """The calling thread's own connection (scrapes and status run beside the event loop)."""
        if self._writers.refuse is not None:
            raise StoreError(self._writers.refuse)
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = connect(self.path, self.synchronous, create=False)
            self._readers.conn = conn
        return conn

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The rolling counts of ``stream`` (on the calling thread's reader connection)."""
        try:
            return read_windows(self._reader(), stream, now, self.windows_length)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def held_backlog(self) -> dict[str, Backlog]:
        """Over-cap messages waiting for release, per stream (on the calling thread's reader)."""
        try:
            return read_held_backlog(self._reader())
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def family_holds(self, since: float) -> dict[str, int]:
        """Messages held for the family since ``since``, per stream (on the calling thread's reader)."""
        try:
            return read_family_holds(self._reader(), since)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def ramp_history(self, stream: str) -> RampHistory:
        """The stream's ramp history (on the calling thread's reader connection)."""
        try:
            return read_ramp_history(self._reader(), stream, self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def stream_of(self, queue_id: str) -> str | None:
        """The stream of the message queued as ``queue_id``, or None (on the calling thread's reader)."""
        return self.streams_of((queue_id,)).get(queue_id)

    def streams_of(self, queue_ids: Collection[str]) -> dict[str, str]:
        """The streams of the messages recorded under ``queue_ids`` (on the calling thread's reader)."""
        try:
            return read_streams_of(self._reader(), queue_ids)
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def prune(self, now: float) -> int:
        """Delete what has expired at ``now`` now (the background thread does it on its own); rows deleted."""
        return self.maintenance.prune(now, self._reader())

    # -- the event loop never waits for the writers' lock (sqlite_lock.py) -------------------------

    def never_wait_in_this_thread(self) -> None:
        """Writes from the calling thread raise StoreBusy rather than wait for another writer."""
        self._writers.never_wait_in_this_thread()
        # The write connection is the loop's alone: SQLite's own lock, held by a writer that skips
        # the flock, must refuse it at once (StoreBusy, sqlite_lock.py), not after the busy timeout.
        self._conn.execute("PRAGMA busy_timeout = 0")

    def wait_off_loop(self, deadline: float, done: Callable[[bool], None]) -> None:
        """Wait for the writers' lock on another thread until ``deadline``; then ``done(got_it)``."""
        self._writers.wait_off_loop(deadline, done)

    def loop_holds(self, held: bool) -> None:
        """The loop's writes go ahead on the handed-over lock (``held``) or fail at once."""
        self._writers.loop_holds(held)

    def loop_releases(self) -> None:
        """Release the handed-over lock."""
        self._writers.loop_releases()

    def close(self) -> None:
        """Stop the background thread, close the write connection and the lock file."""
        self.maintenance.close()
        try:
            self._conn.close()
        finally:
            self._writers.close()
            self._mark.close()
