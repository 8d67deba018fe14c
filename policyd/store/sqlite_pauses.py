"""The SQLite store's pauses and the receiving operators of held messages: their tables and statements.

``pauses`` keeps one row per pause, in force or ended: a pause in force has no
``until`` or one in the future; resuming one sets its ``until`` to the moment
it was resumed, so the rows are also the history (``pause_history``), pruned
:data:`~sendguard_policyd.store.PAUSE_HISTORY` after they ended.

``held_operators`` holds, per held message (``instance``), the receiving
operators of its recipients: a table of its own, so that a schema-3 file made
before pauses existed gains it in place (``CREATE ... IF NOT EXISTS`` on every
writable open) and the hot path's ``messages`` rows stay as they were.

A file opened only to read (``sendguard status``) that no daemon of this
release has opened to write has neither table: it has no pauses.
"""

from __future__ import annotations

import sqlite3

from sendguard_policyd.store import PAUSE_HISTORY, Pause, merge_pause

#: Run on every writable open (sqlite_schema.py), after the schema check.
TABLES = (
    """CREATE TABLE IF NOT EXISTS pauses (
    id       INTEGER PRIMARY KEY,
    stream   TEXT NOT NULL,
    operator TEXT NOT NULL,
    since    REAL NOT NULL,
    until    REAL,
    reason   TEXT NOT NULL,
    rule     TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS pauses_by_key ON pauses (stream, operator, until)",
    "CREATE TABLE IF NOT EXISTS held_operators (instance TEXT PRIMARY KEY, operators TEXT NOT NULL) WITHOUT ROWID",
)

_COLUMNS = "id, stream, operator, since, until, reason, rule"
_IN_FORCE = f"""SELECT {_COLUMNS} FROM pauses
WHERE stream = ? AND operator = ? AND (until IS NULL OR until > ?) ORDER BY since DESC LIMIT 1"""
_ALL_IN_FORCE = f"SELECT {_COLUMNS} FROM pauses WHERE until IS NULL OR until > ? ORDER BY stream, operator"
_HISTORY = f"SELECT {_COLUMNS} FROM pauses WHERE until IS NULL OR until >= ? ORDER BY since, id"
_INSERT = "INSERT INTO pauses (stream, operator, since, until, reason, rule) VALUES (?, ?, ?, ?, ?, ?)"
_UPDATE = "UPDATE pauses SET until = ?, reason = ?, rule = ? WHERE id = ?"
_RESUME = "UPDATE pauses SET until = ? WHERE stream = ? AND operator = ? AND (until IS NULL OR until > ?)"
_PRUNE = "DELETE FROM pauses WHERE until IS NOT NULL AND until < ?"
# Operators of messages no longer waiting (released, gone, pruned) are of no use to anyone.
PRUNE_OPERATORS = """DELETE FROM held_operators WHERE instance NOT IN
(SELECT instance FROM messages WHERE state IN ('held', 'releasing'))"""
INSERT_OPERATORS = "INSERT OR REPLACE INTO held_operators (instance, operators) VALUES (?, ?)"


def _pause(row: tuple[int, str, str, float, float | None, str, str]) -> Pause:
    _, stream, operator, since, until, reason, rule = row
    return Pause(stream, operator, float(since), None if until is None else float(until), reason, rule)


def put_pause(cur: sqlite3.Cursor, new: Pause) -> None:
    """Put ``new`` in force (see :func:`~sendguard_policyd.store.merge_pause`); the caller holds the
    writers' lock and this runs as one transaction."""
    cur.execute("BEGIN IMMEDIATE")
    try:
        row = cur.execute(_IN_FORCE, (new.stream, new.operator, new.since)).fetchone()
        current = _pause(row) if row else None
        merged = merge_pause(current, new)
        if merged is not None:
            if row is None:
                cur.execute(_INSERT, (merged.stream, merged.operator, merged.since, merged.until, merged.reason, merged.rule))
            else:
                cur.execute(_UPDATE, (merged.until, merged.reason, merged.rule, row[0]))
        cur.execute("COMMIT")
    except BaseException:
        if cur.connection.in_transaction:
            cur.execute("ROLLBACK")
        raise


def end_pause(cur: sqlite3.Cursor, stream: str, operator: str, now: float) -> bool:
    """End the pause in force for ``stream`` and ``operator`` at ``now``; True when there was one."""
    return cur.execute(_RESUME, (now, stream, operator, now)).rowcount > 0


def _tolerating_no_table(conn: sqlite3.Connection, sql: str, arg: float) -> list[Pause]:
    try:
        return [_pause(row) for row in conn.execute(sql, (arg,))]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # a file no daemon of this release has opened to write: no pause was ever set
        raise


def read_pauses(conn: sqlite3.Connection, now: float) -> list[Pause]:
    """The pauses in force at ``now``, by stream and operator."""
    return _tolerating_no_table(conn, _ALL_IN_FORCE, now)


def read_history(conn: sqlite3.Connection, since: float) -> list[Pause]:
    """The pauses kept that lasted past ``since``, oldest first."""
    return _tolerating_no_table(conn, _HISTORY, since)


def prune_statements(now: float) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """The deletes of a prune at ``now``: pauses ended long ago, operators of messages no longer held."""
    return ((_PRUNE, (now - PAUSE_HISTORY,)), (PRUNE_OPERATORS, ()))
