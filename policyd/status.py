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
from typing import Mapping

from sendguard.config import Config
from sendguard.streams import Stream
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.backend import open_reader, store_label
from sendguard_policyd.store import DAY, StoreError, StoreReader
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


def snapshot(
    streams: list[Stream], store: StoreReader | None, warmups: Mapping[str, Warmup], now: float
) -> list[StreamStatus]:
    """Every stream's status at ``now`` (counts are 0 when there is no store yet)."""
    out = []
    for stream in streams:
        warmup = warmups[stream.name]
        caps = warmup.caps(now)
        counts = store.windows(stream.name, now) if store is not None else None
        out.append(
            StreamStatus(
                name=stream.name,
                warmup_day=caps.warmup_day,
                start=warmup.start(),
                hourly_cap=caps.hourly,
                daily_cap=caps.daily,
                hour=counts.hour if counts else 0,
                day=counts.day if counts else 0,
            )
        )
    return out


def render(config: Config, settings: PolicydSettings, now: float | None = None) -> str:
    """The status report for ``config``'s streams, as text."""
    now = time.time() if now is None else now
    path = settings.database
    lines = [f"counter store: {store_label(settings)}"]
    store = None
    if settings.store == "sqlite" and not os.path.exists(path):
        lines[0] += " (absent: nothing counted yet)"
    else:
        try:
            store = open_reader(settings)
        except StoreError as exc:
            lines.append(f"  cannot read the store: {exc}")
    warmups = {s.name: Warmup(s) for s in config.streams}
    try:
        rows = snapshot(config.streams, store, warmups, now)
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
        lines.append(f"  family holds    {family.get(row.name, 0)} message(s) in the last 24 h")
    if family.get("none"):
        lines.append(f"mail in no stream: {family['none']} family hold(s) in the last 24 h")
    return "\n".join(lines) + "\n"
