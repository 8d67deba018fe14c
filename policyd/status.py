"""``sendguard status``: per stream the warmup day, cap in force, rolling counts and family holds.

Read from the counter store file through the store's read-only interface, so
it is right whether or not a daemon runs, and whichever daemon did the
counting. The same snapshot feeds the live Prometheus gauges.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from sendguard.config import Config
from sendguard.streams import Stream
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.backend import open_reader, store_windows
from sendguard_policyd.store import DAY, Backlog, StoreError, StoreReader, Windows
from sendguard_policyd.warmup import Warmup, cap_text


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
    #: Over-cap messages held and waiting for release.
    backlog: Backlog = Backlog(0, 0, None)
    #: Seconds until the backlog has drained at the caps in force (None: nothing waits, or never).
    drain_seconds: float | None = None


def drain_time(backlog: Backlog, hourly_cap: int | None, daily_cap: int | None, windows: Windows) -> float | None:
    """About how long the backlog takes to leave at these caps (None: nothing waits, or a cap of 0)."""
    if backlog.messages == 0:
        return None
    needs = []
    for cap, span in ((hourly_cap, windows.hour), (daily_cap, windows.day)):
        if cap == 0:
            return None
        if cap is not None:
            needs.append(backlog.recipients / cap * span)
    return max(needs, default=0.0)


def snapshot(
    streams: Sequence[Stream],
    store: StoreReader | None,
    warmups: Mapping[str, Warmup],
    now: float,
    windows: Windows = Windows(),
) -> list[StreamStatus]:
    """Every stream's status at ``now`` (counts are 0 when there is no store yet)."""
    out = []
    backlogs = store.held_backlog() if store is not None else {}
    for stream in streams:
        warmup = warmups[stream.name]
        caps = warmup.caps(now)
        counts = store.windows(stream.name, now) if store is not None else None
        backlog = backlogs.get(stream.name, Backlog(0, 0, None))
        out.append(
            StreamStatus(
                name=stream.name,
                warmup_day=caps.warmup_day,
                start=warmup.start(),
                hourly_cap=caps.hourly,
                daily_cap=caps.daily,
                hour=counts.hour if counts else 0,
                day=counts.day if counts else 0,
                backlog=backlog,
                drain_seconds=drain_time(backlog, caps.hourly, caps.daily, windows),
            )
        )
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _backlog_line(row: StreamStatus, now: float) -> str:
    b = row.backlog
    if b.messages == 0:
        return "  held backlog    none"
    oldest = f", oldest held {_duration(max(0.0, now - b.oldest_at))} ago" if b.oldest_at is not None else ""
    drain = (
        f"; drains in about {_duration(row.drain_seconds)} at the cap in force"
        if row.drain_seconds is not None
        else "; does not drain at the cap in force (0)"
    )
    return f"  held backlog    {b.messages} message(s), {b.recipients} recipient(s){oldest}{drain}"


def render(config: Config, settings: PolicydSettings, now: float | None = None) -> str:
    """The status report for ``config``'s streams, as text."""
    now = time.time() if now is None else now
    path = settings.database
    lines = [f"counter store: {path}"]
    windows = store_windows(settings)
    store = None
    if not os.path.exists(path):
        lines[0] += " (absent: nothing counted yet)"
    else:
        try:
            store = open_reader(path, windows)
        except StoreError as exc:
            lines.append(f"  cannot read the store: {exc}")
    warmups = {s.name: Warmup(s) for s in config.streams}
    try:
        rows = snapshot(config.streams, store, warmups, now, windows)
        family = store.family_holds(now - DAY) if store is not None else {}
    except StoreError as exc:
        lines.append(f"  cannot read the store: {exc}")
        rows = snapshot(config.streams, None, warmups, now)
        family = {}
    finally:
        if store is not None:
            store.close()
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
        lines.append(f"  cap in force    {cap_text(row.hourly_cap)}/rolling hour, {cap_text(row.daily_cap)}/rolling 24 h")
        lines.append(f"  rolling hour    {row.hour} of {cap_text(row.hourly_cap)}")
        lines.append(f"  rolling day     {row.day} of {cap_text(row.daily_cap)}")
        lines.append(_backlog_line(row, now))
        lines.append(f"  family holds    {family.get(row.name, 0)} message(s) in the last 24 h")
    if family.get("none"):
        lines.append(f"mail in no stream: {family['none']} family hold(s) in the last 24 h")
    return "\n".join(lines) + "\n"
