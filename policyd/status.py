"""``sendguard status``: per stream the warmup day and why, cap in force, rolling counts, holds and pauses.

Read from the counter store file through the store's read-only interface, so
it is right whether or not a daemon runs, and whichever daemon did the
counting. The same snapshot feeds the live Prometheus gauges. The effective
warmup day comes from the ramp history in the same store (effective_day.py):
status reads it once, the daemon's gauges show what its refresher read last.

Status says what it cannot know rather than guess: a store it cannot read
gives counts of "unknown" and exit status :data:`EXIT_STORE_UNREADABLE`; a
start stamp file it cannot read (the running daemon warns and keeps the start
it read last, which status cannot see) is reported with what that means, and
exit status :data:`EXIT_STAMP_UNREADABLE`. Neither is a config error (78):
the daemon goes on running with them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

from sendguard.config import Config
from sendguard.config_reader import ConfigError, resolve_path
from sendguard.streams import Stream, read_stamp
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.backend import open_reader, store_label, store_windows
from sendguard_policyd.pause_command import describe
from sendguard_policyd.store import DAY, Backlog, Pause, StoreError, StoreReader, Windows
from sendguard_policyd.effective_day import SENDING, RampDay
from sendguard_policyd.warmup import Warmup, cap_text, make_warmups, refresh_histories


class _Settings(Protocol):
    """What status needs of the CLI's settings (a dataclass): the shared config."""

    config: Config


SettingsT = TypeVar("SettingsT", bound=_Settings)

#: Everything was read.
EXIT_OK = 0
#: A stream's start stamp file cannot be read: its warmup day and cap are not known here.
EXIT_STAMP_UNREADABLE = 1
#: The counter store cannot be read: the counts are not known (EX_UNAVAILABLE).
EXIT_STORE_UNREADABLE = 69


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
    #: How the effective warmup day came about (None: the stream has no start).
    ramp: RampDay | None = None
    #: The stream's pauses in force (the whole-stream one first).
    pauses: tuple[Pause, ...] = ()


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
    pauses = store.pauses(now) if store is not None else []
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
                ramp=caps.ramp,
                pauses=tuple(sorted((p for p in pauses if p.stream == stream.name), key=lambda p: p.operator)),
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
    by_pause = f", {b.paused} of them held by a pause" if b.paused else ""
    if any(not p.operator for p in row.pauses):
        drain = "; nothing is released while the stream is paused"
    elif row.drain_seconds is not None:
        drain = f"; drains in about {_duration(row.drain_seconds)} at the cap in force"
    else:
        drain = "; does not drain at the cap in force (0)"
    return f"  held backlog    {b.messages} message(s), {b.recipients} recipient(s){oldest}{by_pause}{drain}"


def _pause_lines(pauses: Sequence[Pause], now: float) -> list[str]:
    if not pauses:
        return ["  paused          no"]
    return [f"  paused          {describe(p, now)}" for p in pauses]


def render(config: Config, settings: PolicydSettings, now: float | None = None) -> str:
    """The status report for ``config``'s streams, as text."""
    return report(config, settings, now)[0]


def report(config: Config, settings: PolicydSettings, now: float | None = None) -> tuple[str, int]:
    """The status report for ``config``'s streams, and the exit status it deserves (``EXIT_*``)."""
    now = time.time() if now is None else now
    unreadable = False
    path = settings.database
    lines = [f"counter store: {store_label(settings)}"]
    windows = store_windows(settings)
    store = None
    if settings.store == "sqlite" and not os.path.exists(path):
        lines[0] += " (absent: nothing counted yet)"
    else:
        try:
            store = open_reader(settings)
        except StoreError as exc:
            lines.append(f"  cannot read the store: {exc}")
            unreadable = True
    warmups = make_warmups(config.streams, settings)
    try:
        if store is not None:
            refresh_histories(warmups, store)
        rows = snapshot(config.streams, store, warmups, now, windows)
        family = store.family_holds(now - DAY) if store is not None else {}
        names = {s.name for s in config.streams}
        strays = [p for p in store.pauses(now) if p.stream not in names] if store is not None else []
    except StoreError as exc:
        lines.append(f"  cannot read the store: {exc}")
        unreadable = True
        rows = snapshot(config.streams, None, warmups, now)
        family = {}
        strays = []
    finally:
        if store is not None:
            store.close()
    if not rows:
        lines.append("no streams configured: nothing is capped")
    stamps = {s.name: _stamp_problem(s) for s in config.streams}
    count = "unknown" if unreadable else None
    for row in rows:
        start = (
            dt.datetime.fromtimestamp(row.start, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            if row.start is not None
            else "none"
        )
        lines.append(f"stream {row.name}:")
        hourly = cap_text(row.hourly_cap)
        problem = stamps[row.name]
        if problem:
            hourly = "unknown"
            lines.append(f"  start stamp     {problem}")
            lines.append("                  a running daemon warned and keeps the start it read last (its log says which);"
                         " a daemon started now stops with this error; the warmup day and hourly cap are not known here")  # fmt: skip
        elif unreadable and row.ramp is not None and row.ramp.mode == SENDING:
            # The sending days are in the store: the day (and so the cap) cannot be known here.
            hourly = "unknown"
            lines.append(f"  warmup day      unknown (start {start}; calendar day {row.ramp.calendar_day})")
            lines.extend(_ramp_lines(row.ramp, unreadable))
        else:
            lines.append(f"  warmup day      {row.warmup_day if row.warmup_day is not None else '-'} (start {start})")
            lines.extend(_ramp_lines(row.ramp, unreadable))
        lines.append(f"  cap in force    {hourly}/rolling hour, {cap_text(row.daily_cap)}/rolling 24 h")
        lines.append(f"  rolling hour    {count or row.hour} of {hourly}")
        lines.append(f"  rolling day     {count or row.day} of {cap_text(row.daily_cap)}")
        lines.append("  held backlog    unknown" if unreadable else _backlog_line(row, now))
        lines.extend(["  paused          unknown"] if unreadable else _pause_lines(row.pauses, now))
        lines.append(f"  family holds    {count or family.get(row.name, 0)} message(s) in the last 24 h")
    if family.get("none"):
        lines.append(f"mail in no stream: {family['none']} family hold(s) in the last 24 h")
    for p in strays:  # set by another config, or for a stream since removed: the daemons here ignore it
        lines.append(f"pause of a stream not in this config: {describe(p, now)}")
    code = EXIT_STORE_UNREADABLE if unreadable else EXIT_STAMP_UNREADABLE if any(stamps.values()) else EXIT_OK
    return "\n".join(lines) + "\n", code


def _ramp_lines(ramp: RampDay | None, unreadable: bool) -> list[str]:
    """Why the warmup day is what it is, and how far the ramp day in progress has come."""
    if ramp is None:
        return []
    if unreadable:
        what = "sending days and step-backs" if ramp.mode == SENDING else "step-backs"
        return [f"  why             unknown: the {what} are kept in the store, which cannot be read"]
    lines = [f"  why             {ramp.reason()}"]
    if ramp.mode == SENDING:
        if ramp.today_paused:
            verdict = "paused today: it will not count"
        elif ramp.today_sent >= ramp.minimum:
            verdict = "enough to count"
        else:
            verdict = f"{ramp.minimum} needed to count"
        lines.append(f"  today           {ramp.today_sent} delivered so far in ramp day {ramp.today} ({verdict})")
    return lines


def _stamp_problem(stream: Stream) -> str | None:
    if stream.start_file is None:
        return None
    try:
        read_stamp(stream.start_file)
    except ValueError as exc:
        return str(exc)
    return None


def load_tolerating_stamps(
    path: str, parse: Callable[[dict[str, Any], str], SettingsT], error: ConfigError
) -> SettingsT:
    """The settings of the config at ``path`` that failed to load with ``error`` because of a start stamp
    file, read as the running daemon does: a stamp it cannot read is a warning, not a stop.

    ``parse(data, file)`` validates a decoded TOML document (the CLI's). Each stream whose stamp
    is at fault is validated with a placeholder start and then given back its ``start_file``, so
    :func:`report` finds and reports the stamp problem. Any other error is raised.
    """
    import tomllib

    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    bad: dict[str, str] = {}
    while True:
        name = _stamp_stream(error, data)
        if name is None or name in bad:
            raise error
        section = data["streams"][name]
        bad[name] = str(section.pop("start_file"))
        section["start_date"] = dt.date(1970, 1, 2)
        try:
            settings = parse(data, path)
            break
        except ConfigError as exc:
            error = exc
    base = settings.config.base_dir
    streams = tuple(
        dataclasses.replace(s, start_file=resolve_path(base, bad[s.name]), start_epoch=None) if s.name in bad else s
        for s in settings.config.streams
    )
    return dataclasses.replace(settings, config=dataclasses.replace(settings.config, streams=streams))  # type: ignore[type-var]


def _stamp_stream(error: ConfigError, data: dict[str, Any]) -> str | None:
    """The stream whose start stamp file made ``error``, if that is what it is."""
    prefix, _, name_key = error.key.partition(".")
    name, _, key = name_key.rpartition(".")
    if prefix != "streams" or key != "start_file" or not error.reason.startswith("stamp file "):
        return None
    streams = data.get("streams")
    return name if isinstance(streams, dict) and isinstance(streams.get(name), dict) else None
