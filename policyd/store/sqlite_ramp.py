"""The SQLite store's ramp history: sent deliveries and paused marks per ramp day, and step-backs.

Two tables, made on every writable open (``IF NOT EXISTS``), so a schema-3
file written before the ramp history existed gains them in place:

* ``ramp_days``: one row per stream and ramp day (``YYYY-MM-DD``) with the
  deliveries sent that day and whether the stream was paused during it;
* ``step_backs``: one row per recorded step-back (when, how many days, which rule).

A read-only connection (``sendguard status``) to a file no release with the
ramp history has opened for writing finds neither table: that is an empty
history, not an error.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

from sendguard_policyd.store import RampHistory, StepBack, StoreError

#: Run on every writable open, after the schema is checked.
RAMP_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ramp_days (
    stream TEXT NOT NULL,
    day    TEXT NOT NULL,
    sent   INTEGER NOT NULL DEFAULT 0,
    paused INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, day)
) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS step_backs (stream TEXT NOT NULL, at REAL NOT NULL, days INTEGER NOT NULL, rule TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS step_backs_stream ON step_backs (stream, at)",
)

ADD_SENT = """INSERT INTO ramp_days (stream, day, sent) VALUES (?, ?, ?)
ON CONFLICT (stream, day) DO UPDATE SET sent = sent + excluded.sent"""

# The row changes only when the day was not marked yet: rowcount says whether this mark is new.
MARK_PAUSED = """INSERT INTO ramp_days (stream, day, paused) VALUES (?, ?, 1)
ON CONFLICT (stream, day) DO UPDATE SET paused = 1 WHERE paused = 0"""

STEP_BACK = "INSERT INTO step_backs (stream, at, days, rule) VALUES (?, ?, ?, ?)"

_DAYS = "SELECT day, sent, paused FROM ramp_days WHERE stream = ?"
_STEP_BACKS = "SELECT at, days, rule FROM step_backs WHERE stream = ? ORDER BY at"


def day_text(day: dt.date) -> str:
    """A ramp day as the tables keep it."""
    return day.isoformat()


def read_ramp_history(conn: sqlite3.Connection, stream: str, path: str) -> RampHistory:
    """The stream's ramp history on any connection to the store file at ``path`` (empty when the
    file has no ramp tables yet)."""
    try:
        days = conn.execute(_DAYS, (stream,)).fetchall()
        steps = conn.execute(_STEP_BACKS, (stream,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return RampHistory()
        raise
    try:
        return RampHistory(
            sent={dt.date.fromisoformat(day): int(sent) for day, sent, _ in days if sent},
            paused=frozenset(dt.date.fromisoformat(day) for day, _, paused in days if paused),
            step_backs=tuple(StepBack(float(at), int(n), str(rule)) for at, n, rule in steps),
        )
    except (ValueError, TypeError) as exc:  # a row written by hand or by another program: say so, do not guess
        raise StoreError(f"counter store {path}: stream {stream}: unreadable ramp history ({exc})") from None
