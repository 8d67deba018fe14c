"""``sendguard pause`` and ``sendguard resume``: pauses set and ended by hand, in the counter store.

They write the store the daemons read (SQLite file or Redis), so they work
whether or not a daemon runs: a running one holds the stream's new mail within
a couple of seconds (pause_board.py), and its releaser keeps the held mail
until the pause ends. A pause by hand (rule ``manual``) takes the place of the
one in force, even a longer one set by a stop-signal rule; ``resume`` ends it
at once, and the releaser then lets the held mail go through the caps.

What they refuse, each with one line and exit status :data:`EXIT_USAGE`: a
stream the config does not define, an operator no rule could name, a duration
that does not parse, an empty reason. A store that cannot be written gives
:data:`EXIT_STORE` and says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

from sendguard.timetext import format_duration, format_instant, parse_duration
from sendguard_policyd.backend import open_store, store_label
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.stop_signals_settings import known_operators
from sendguard_policyd.store import MANUAL, CounterStore, Pause, StoreError

T = TypeVar("T")

EXIT_OK = 0
EXIT_USAGE = 64  # EX_USAGE
EXIT_STORE = 69  # EX_UNAVAILABLE: the store cannot be written


@dataclass(frozen=True)
class Outcome:
    """What a command prints and the exit status it ends with."""

    text: str
    code: int = EXIT_OK


def describe(p: Pause, now: float) -> str:
    """One pause in words, as ``pause`` and ``sendguard status`` print it."""
    what = f"{p.stream}'s mail to {p.operator}" if p.operator else f"all of {p.stream}'s mail"
    if p.until is None:
        end = "until resumed"
    else:
        end = f"until {format_instant(p.until)} (in {format_duration(max(0.0, p.until - now))})"
    return f"{what}: since {format_instant(p.since)}, {end}, rule {p.rule}: {p.reason}"


def _check(
    streams: Sequence[str], data: Mapping[str, Any], stream: str, operator: str
) -> str | None:
    if stream not in streams:
        return f"no stream {stream!r} in the config (streams: {', '.join(streams) or 'none'})"
    known = known_operators(data)
    if operator and operator not in known:
        return f"{operator!r} is not a receiving operator (known: {', '.join(sorted(known))})"
    return None


def _with_store(settings: PolicydSettings, command: str, undone: str, change: Callable[[CounterStore], T]) -> T | Outcome:
    """``change(store)`` on the store the daemons read, opened for it and closed after; an Outcome on failure."""
    try:
        store = open_store(settings)
    except (StoreError, OSError) as exc:
        return Outcome(f"sendguard {command}: cannot open the counter store: {exc}", EXIT_STORE)
    try:
        return change(store)
    except StoreError as exc:
        return Outcome(f"sendguard {command}: {undone}: {exc}", EXIT_STORE)
    finally:
        store.close()


def pause(
    settings: PolicydSettings,
    streams: Sequence[str],
    data: Mapping[str, Any],
    stream: str,
    operator: str,
    duration: str | None,
    reason: str,
    now: float | None = None,
) -> Outcome:
    """``sendguard pause STREAM [--operator OP] [--for DURATION] --reason TEXT``."""
    now = time.time() if now is None else now
    problem = _check(streams, data, stream, operator)
    reason = " ".join(reason.split())  # one line: it is quoted in HOLD answers and log lines
    if problem is None and not reason:
        problem = "--reason cannot be empty: say why, the HOLD answers and sendguard status quote it"
    until = None
    if problem is None and duration is not None:
        try:
            until = now + parse_duration(duration)
        except ValueError as exc:
            problem = f"--for: {exc}"
    if problem is not None:
        return Outcome(f"sendguard pause: {problem}", EXIT_USAGE)
    def change(store: CounterStore) -> list[Pause]:
        store.pause(Pause(stream, operator, now, until, reason, MANUAL))
        return [p for p in store.pauses(now) if (p.stream, p.operator) == (stream, operator)]

    in_force = _with_store(settings, "pause", "nothing paused", change)
    if isinstance(in_force, Outcome):
        return in_force
    lines = [f"paused {describe(p, now)}" for p in in_force]
    lines.append(
        f"in {store_label(settings)}: a running policy daemon holds this mail within a couple of seconds;"
        f" `sendguard resume {stream}{f' --operator {operator}' if operator else ''}` ends the pause"
    )
    return Outcome("\n".join(lines))


def resume(
    settings: PolicydSettings,
    streams: Sequence[str],
    data: Mapping[str, Any],
    stream: str,
    operator: str,
    now: float | None = None,
) -> Outcome:
    """``sendguard resume STREAM [--operator OP]``: the whole-stream pause, or the one of that operator."""
    now = time.time() if now is None else now
    problem = _check(streams, data, stream, operator)
    if problem is not None:
        return Outcome(f"sendguard resume: {problem}", EXIT_USAGE)
    def change(store: CounterStore) -> tuple[bool, list[Pause]]:
        return store.resume(stream, operator, now), [p for p in store.pauses(now) if p.stream == stream]

    done = _with_store(settings, "resume", "nothing resumed", change)
    if isinstance(done, Outcome):
        return done
    ended, left = done
    what = f"{stream}'s mail to {operator}" if operator else f"all of {stream}'s mail"
    if ended:
        lines = [f"resumed {what}: the releaser lets its held mail go through the caps"]
    else:
        lines = [f"no pause of {what} was in force: nothing to resume"]
    lines += [f"still paused: {describe(p, now)}" for p in left]
    return Outcome("\n".join(lines))
