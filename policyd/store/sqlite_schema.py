"""The SQLite store's file: its tables, how a connection is opened, and which schema it must have.

Counts are kept in one-second buckets, one table for both windows. Each
bucket also carries ``total``, the stream's running total up to and including
it, so a window's count is the newest bucket's total minus the total before
the window's first bucket: an index look-up per window, however many buckets
the window holds (a ``SUM`` over a busy day's 86,400 buckets costs
milliseconds). Buckets are kept a day (and a little more), so the one table
serves the hour and the day: a second table of coarser buckets for the day
would cost every counted message one more b-tree to update and write.

Schema 3 is the first released schema. A file with any other
``schema_version`` is refused with a :class:`StoreError` naming the file, the
version found and the version expected: it was written by another program or
by a later release, and guessing at it could lose counts.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sendguard_policyd.store import StoreError
from sendguard_policyd.store.sqlite_ramp import RAMP_SCHEMA
from sendguard_policyd.store.sqlite_pauses import TABLES as PAUSE_TABLES

SCHEMA_VERSION = 3

#: Bytes a restarted WAL file is truncated to (SQLite's journal_size_limit); a file kept at its
#: size is reused in place, without allocating blocks as it grows again.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: Milliseconds a statement waits for another connection's write lock before it fails.
BUSY_TIMEOUT_MS = 10000

# Counting a message is one INSERT: its bucket follows in the same statement, so no code path
# (this process, another one, a benchmark's prefill) can record a message without it. Buckets
# are only ever added at the end: a message whose second is older than the stream's newest
# bucket (another process's clock a little behind) goes into that newest bucket, so it leaves
# the windows a little later than it could: over-counting, never under. The newest bucket's
# total is then always the stream's total, and a new bucket's is that plus its recipients:
# between neighbouring buckets the totals differ by exactly the later one's recipients.
_COUNT_IN_BUCKET = """
    INSERT INTO buckets (stream, second, recipients, total)
        VALUES (NEW.stream,
                MAX(CAST(NEW.at AS INTEGER),
                    COALESCE((SELECT MAX(second) FROM buckets WHERE stream = NEW.stream), 0)),
                NEW.recipients,
                NEW.recipients + COALESCE((SELECT total FROM buckets WHERE stream = NEW.stream
                                           ORDER BY second DESC LIMIT 1), 0))
        ON CONFLICT (stream, second) DO UPDATE
            SET recipients = recipients + excluded.recipients, total = total + excluded.recipients;
"""
_TRIGGER = f"""
CREATE TRIGGER IF NOT EXISTS count_message AFTER INSERT ON messages WHEN NEW.state = 'counted'
BEGIN{_COUNT_IN_BUCKET}END
"""

# A release claim counts a held message the same way: its bucket follows the state change from
# 'held' to 'releasing' in the same statement (the claim sets ``at`` to the moment it counts).
_RELEASE_TRIGGER = f"""
CREATE TRIGGER IF NOT EXISTS count_release AFTER UPDATE OF state ON messages
WHEN OLD.state = 'held' AND NEW.state = 'releasing'
BEGIN{_COUNT_IN_BUCKET}END
"""

#: What over-cap holds need: run on every file this release opens to write (``IF NOT EXISTS``),
#: so a store made before holds existed gains them in place, with nothing to convert (the same
#: for the tables of pauses, sqlite_pauses.py).
_HOLDS = (
    _RELEASE_TRIGGER,
    # The releaser's reads: a stream's waiting messages in arrival order, and one by queue id.
    "CREATE INDEX IF NOT EXISTS messages_waiting ON messages (stream, at) WHERE state IN ('held', 'releasing')",
    "CREATE INDEX IF NOT EXISTS messages_waiting_qid ON messages (queue_id) WHERE state IN ('held', 'releasing')",
)

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
    # Partial index: the hot path inserts 'counted' rows, which it leaves untouched.
    "CREATE INDEX IF NOT EXISTS messages_family ON messages (at) WHERE state = 'family_hold'",
    """CREATE TABLE IF NOT EXISTS buckets (
    stream TEXT NOT NULL, second INTEGER NOT NULL, recipients INTEGER NOT NULL, total INTEGER NOT NULL,
    PRIMARY KEY (stream, second)
) WITHOUT ROWID""",
    _TRIGGER,
)


def connect(path: str, synchronous: str = "normal", create: bool = True) -> sqlite3.Connection:
    """Open the store file in WAL mode and check its schema; with ``create``, make it (and its directory) first.

    Without ``create`` a missing file is a :class:`StoreError`, and nothing is written.
    """
    if create:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif not os.path.exists(path):
        raise StoreError(f"counter store {path} does not exist")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"counter store {path}: {exc}{why_unopenable(path, exc)}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if create:
            # Small pages: every page a counted message touches is appended to the WAL on commit;
            # 1 KiB pages make that about a quarter of the bytes. (Ignored for a file that exists.)
            conn.execute("PRAGMA page_size = 1024")
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        if create:
            _create(conn, path)
        else:
            _check_version(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"counter store {path}: {exc}{why_unopenable(path, exc)}") from exc
    except StoreError:
        conn.close()
        raise
    return conn


def why_unopenable(path: str, exc: sqlite3.Error) -> str:
    """The cause behind SQLite's "unable to open database file" (it says the same for each), as text to
    append to it; empty for any other error or when no cause is found."""
    if "unable to open" not in str(exc):
        return ""
    directory = os.path.dirname(os.path.abspath(path))
    user = f"uid {os.geteuid()}"
    if os.path.isdir(path):
        return ": the path is a directory, not a file (policyd.database names the file itself)"
    if not os.path.isdir(directory):
        return f": its directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        # WAL mode creates FILE-wal and FILE-shm beside the file, even to read it.
        return f": its directory {directory} is not writable by this user ({user}); SQLite creates the -wal and -shm files there"
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return f": the file is not readable and writable by this user ({user})"
    return ""


def _found_version(conn: sqlite3.Connection) -> str | None:
    """The file's ``schema_version`` ("none" when it has a meta table without one), None for an empty file."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        return None if tables == 0 else "none"
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return "none" if row is None else str(row[0])


def _refuse(path: str, found: str) -> StoreError:
    return StoreError(
        f"counter store {path}: schema version {found} found, version {SCHEMA_VERSION} expected"
        " (the file was written by another release or program; sendguard does not convert it)"
    )


def _check_version(conn: sqlite3.Connection, path: str) -> None:
    found = _found_version(conn)
    if found is None:
        raise StoreError(f"counter store {path} is empty: no daemon has created it yet")
    if found != str(SCHEMA_VERSION):
        raise _refuse(path, found)


def _create(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in a new file, or check that an existing one has :data:`SCHEMA_VERSION`."""
    conn.execute("BEGIN IMMEDIATE")  # two daemons starting at once: one creates, the other checks
    try:
        found = _found_version(conn)
        if found is not None and found != str(SCHEMA_VERSION):
            raise _refuse(path, found)
        if found is None:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        for statement in (*_HOLDS, *RAMP_SCHEMA, *PAUSE_TABLES):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
