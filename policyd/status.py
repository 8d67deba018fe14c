"""``sendguard status``: per stream the warmup day, cap in force, rolling counts and held backlog.

Read straight from the counter store file, so it is right whether or not a
daemon runs, and whichever daemon did the counting. The same snapshot feeds
the live Prometheus gauges.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Mapping

from sendguard.config import Config
from sendguard.streams import Stream
from sendguard_policyd.sqlite_store import (
    StoreError,
    connect,
    read_family_holds,
    read_held_backlog,
    read_windows,
)
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.warmup import Warmup


@dataclass(frozen=True)
class StreamStatus:
    """One stream's state at one instant."""

    name: str
    warmup_day: int | None
    start: float | None
    hourly_cap: int | None
    daily_cap: int | None
    hour: int
    day: int
    held: int


def snapshot(
    streams: list[Stream], conn: sqlite3.Connection | None, warmups: Mapping[str, Warmup], now: float
) -> list[StreamStatus]:
    """Every stream's status at ``now`` (counts are 0 when there is no store yet)."""
    held = read_held_backlog(conn) if conn is not None else {}
    out = []
    for stream in streams:
        warmup = warmups[stream.name]
        caps = warmup.caps(now)
        counts = read_windows(conn, stream.name, now) if conn is not None else None
        out.append(
            StreamStatus(
                name=stream.name,
                warmup_day=caps.warmup_day,
                start=warmup.start(),
                hourly_cap=caps.hourly,
                daily_cap=caps.daily,
                hour=counts.hour if counts else 0,
                day=counts.day if counts else 0,
                held=held.get(stream.name, 0),
            )
        )
    return out


def _cap(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def render(config: Config, settings: PolicydSettings, now: float | None = None) -> str:
    """The status report for ``config``'s streams, as text."""
    now = time.time() if now is None else now
    path = settings.database
    lines = [f"counter store: {path}"]
    conn = None
    if not os.path.exists(path):
        lines[0] += " (absent: nothing counted yet)"
    else:
        try:
            conn = connect(path, create=False)
        except StoreError as exc:
            lines.append(f"  cannot read the store: {exc}")
    warmups = {s.name: Warmup(s) for s in config.streams}
    try:
        rows = snapshot(config.streams, conn, warmups, now)
        family = read_family_holds(conn, now - 86400) if conn is not None else {}
    except sqlite3.Error as exc:
        lines.append(f"  cannot read the store: {exc}")
        rows = snapshot(config.streams, None, warmups, now)
        family = {}
    finally:
        if conn is not None:
            conn.close()
    if not rows:
        lines.append("no streams configured: nothing is capped")
    for row in rows:
        start = (
            dt.datetime.fromtimestamp(row.start, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            if row.start is not None
            else "none"
        )
        lines.append(f"stream {row.name}:")
        lines.append(f"  warmup day      {row.warmup_day if row.warmup_day is not None else '-'} (start {start})")
        lines.append(f"  cap in force    {_cap(row.hourly_cap)}/rolling hour, {_cap(row.daily_cap)}/rolling 24 h")
        lines.append(f"  rolling hour    {row.hour} of {_cap(row.hourly_cap)}")
        lines.append(f"  rolling day     {row.day} of {_cap(row.daily_cap)}")
        lines.append(f"  held backlog    {row.held} message(s) waiting for release")
        lines.append(f"  family holds    {family.get(row.name, 0)} message(s) in the last 24 h")
    if family.get("none"):
        lines.append(f"mail in no stream: {family['none']} family hold(s) in the last 24 h")
    return "\n".join(lines) + "\n"
