"""When does room free: the instant enough of a window's oldest recipients have left it.

The answer of an over-cap deferral names that instant. It is the first bucket
in the window whose running total reaches ``target`` ("total before the
window" plus the recipients that must leave). Totals grow with time, so an
index scan stops at that bucket, usually the first or second. The scan covers
only the first :data:`ROOM_SCAN` seconds from the window's first bucket; past
them the range is halved instead (a cap lowered far below the count would
otherwise scan most of a day's buckets at every refused attempt).
"""

from __future__ import annotations

import math
import sqlite3

ROOM_SCAN = 64

_ROOM_NEAR = f"""SELECT second FROM buckets WHERE stream = ?1 AND second > ?2 AND total >= ?3 AND second <= {ROOM_SCAN} + (
    SELECT second FROM buckets WHERE stream = ?1 AND second > ?2 ORDER BY second LIMIT 1)
ORDER BY second LIMIT 1"""
_TOTAL_AT = "SELECT total FROM buckets WHERE stream = ? AND second <= ? ORDER BY second DESC LIMIT 1"
_NEWEST = "SELECT second, total FROM buckets WHERE stream = ? ORDER BY second DESC LIMIT 1"


def room_at(cur: sqlite3.Cursor, stream: str, floor: float, before: int, need: int, span: int) -> float | None:
    """When the oldest buckets holding ``need`` recipients will have left the window (None: never).

    ``floor``: the window's floor at the instant asked about (the first bucket above it is the
    window's first); ``before``: the stream's total before that bucket; ``span``: the window's length.
    """
    target = before + need
    row = cur.execute(_ROOM_NEAR, (stream, floor, target)).fetchone()
    second = row[0] if row is not None else _second_far(cur, stream, floor, target)
    # None: the window does not hold that many (a cap of 0, or a message larger than the cap).
    # Bucket s covers [s, s + 1): it has left the window once s + 1 <= t - span.
    return None if second is None else float(second) + 1 + span


def _second_far(cur: sqlite3.Cursor, stream: str, floor: float, target: int) -> int | None:
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
