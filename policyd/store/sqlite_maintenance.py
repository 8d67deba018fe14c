"""The SQLite store's background thread: WAL checkpoints, catching the WAL up, pruning expired rows.

Checkpoints run here, once a second, not on commit, so that no request pays
for copying the WAL back into the database file. Pruning runs here too, every
:data:`PRUNE_INTERVAL` seconds of the newest ``now`` the store has been given
(the clock tests drive), so a request never waits for a scan.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Callable

from sendguard import logs
from sendguard_policyd.store import (
    DAY,
    HOUR,
    STATE_COUNTED,
    STATE_FAMILY_HOLD,
    STATE_GONE,
    STATE_RELEASED,
    StoreError,
)

#: States whose records expire (held and releasing ones wait for the releaser, however long).
_FINAL = (STATE_COUNTED, STATE_FAMILY_HOLD, STATE_RELEASED, STATE_GONE)
from sendguard_policyd.store.sqlite_lock import WritersLock
from sendguard_policyd.store.sqlite_pauses import prune_statements
from sendguard_policyd.store.sqlite_reader import day_floor
from sendguard_policyd.store.sqlite_schema import connect

log = logs.get("policyd")

#: How often (seconds of ``now``) expired rows are deleted.
#: The message table has no index on time (it would slow every count), so a prune scans it.
PRUNE_INTERVAL = 300.0
#: Message records deleted per transaction by a prune (each one holds the writers' lock).
PRUNE_BATCH = 500
#: Seconds between WAL checkpoints.
CHECKPOINT_INTERVAL = 1.0
#: A WAL longer than this many frames (pages of 1 KiB) is caught up with the writers held off, so
#: that it restarts from its beginning (see Maintenance._catch_up): about 34 MB. Each catch-up
#: holds every request that counts a message for 1-3 ms (two fsyncs), so it should be rare: at
#: ~1,500 counted messages a second (the benchmark) this is one every ~10 s; at the brief's
#: volumes the once-a-second checkpoint keeps up and the WAL restarts on its own.
WAL_RESTART_FRAMES = 32768
#: Message records are kept this long: far beyond any Postfix retry, and a day for status.
MESSAGE_RETENTION = DAY + HOUR


class Maintenance:
    """The background thread of one store; :meth:`start` it once, :meth:`close` it once."""

    def __init__(
        self, path: str, synchronous: str, writers: WritersLock, check_file: Callable[[], bool] = lambda: True
    ) -> None:
        """``check_file``: called every round first (the store's check that its file is still at its path;
        False: it is not, and the round does nothing else)."""
        self.path = path
        self._check_file = check_file
        self.synchronous = synchronous
        self.wal_restart_frames = WAL_RESTART_FRAMES
        self._writers = writers
        # The newest ``now`` a write was given: the prune follows it, not the wall clock.
        self._newest_now = float("-inf")
        self._next_prune = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sendguard-checkpoint", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def saw(self, now: float) -> None:
        """A write was given ``now`` (called by the event loop's thread for every write)."""
        if now > self._newest_now:
            self._newest_now = now

    def prune(self, now: float, conn: sqlite3.Connection) -> int:
        """Delete buckets and message records that have expired at ``now``; return how many rows went.

        The expired rows are found by a plain read on ``conn``, which in WAL mode runs beside the
        writers (the message table has no index on time, so this is a scan); they are then
        deleted by key in short transactions under the writers' lock, each re-checking that the
        row is still expired. A request therefore never waits for the scan, only for one batch
        of deletes at a time.
        """
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # never a checkpoint under the writers' lock
        # A minute's margin past the day window: a reader's ``now`` a little ahead still finds its buckets.
        bucket_floor = day_floor(now) - 60
        expired = now - MESSAGE_RETENTION
        try:
            buckets = conn.execute(
                "SELECT stream, MAX(second) FROM buckets WHERE second <= ? GROUP BY stream", (bucket_floor,)
            ).fetchall()
            instances = [
                row[0]
                for row in conn.execute(
                    "SELECT instance FROM messages WHERE at < ? AND state IN (?, ?, ?, ?)",
                    (expired, *_FINAL),
                )
            ]
        except sqlite3.Error as exc:
            raise StoreError(f"counter store {self.path}: {exc}") from exc
        deleted = 0
        for stream, newest in buckets:
            # Buckets of a stream below the floor form one key range: one short delete each.
            deleted += self._delete_locked(
                conn, "DELETE FROM buckets WHERE stream = ? AND second <= ?", (stream, min(newest, bucket_floor))
            )
        for start in range(0, len(instances), PRUNE_BATCH):
            batch = instances[start : start + PRUNE_BATCH]
            marks = ",".join("?" * len(batch))
            deleted += self._delete_locked(
                conn,
                f"DELETE FROM messages WHERE instance IN ({marks}) AND at < ? AND state IN (?, ?, ?, ?)",
                (*batch, expired, *_FINAL),
            )
        for sql, params in prune_statements(now):  # small tables: one short delete each
            deleted += self._delete_locked(conn, sql, params)
        return deleted

    def _delete_locked(self, conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
        with self._writers:
            return conn.execute(sql, params).rowcount

    def _run(self) -> None:
        conn = None
        while not self._stop.wait(CHECKPOINT_INTERVAL):
            try:
                if not self._check_file():
                    continue  # logged once by the check; a checkpoint of a lost file helps nobody
            except Exception:  # a bug here must not end checkpoints
                log.exception("counter store %s: checking the file failed", self.path)
            try:
                if conn is None:
                    conn = connect(self.path, self.synchronous, create=False)
                # PASSIVE never waits for, nor blocks, a writer; what it cannot copy now waits for the next round.
                _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames > self.wal_restart_frames:
                    self._catch_up(conn)
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
        """Stop the thread (after a last checkpoint) and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
