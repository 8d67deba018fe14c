"""Listmonk's sliding window, and the window that keeps it under a stream's caps.

How Listmonk counts (``internal/manager``, the same from v2 to v5): one
counter for the whole instance — every campaign of that Listmonk draws from
it. A window opens with the first message after the previous one expired;
that message is not counted. Each further message counts, and once ``rate``
have been counted the campaign loop sleeps until the window's ``duration``
has passed. So one window carries at most ``rate + 1`` messages, and windows
start at least ``duration`` apart; a rolling period ``P`` (the policy
daemon's hour or day) then meets at most ``ceil(P / duration) + 1`` windows.
In the worst case Listmonk pushes ``(ceil(P / duration) + 1) * (rate + 1)``
messages in one rolling ``P`` — twice the naive ``rate`` when ``duration`` is
``P`` itself, which is why "rate = cap per 1h" does not keep a rolling hour
under the cap.

:func:`window_for` picks, among durations that divide an hour or a day, the
window whose worst case stays under every cap in force and that lets the
most mail through (ties: the shorter window, so a change applies sooner). A daily cap is thereby spread over the day (one window
cannot be both "per hour" and "per day"). Listmonk ignores a window whose
rate is below 1 or whose duration is 1 s or less — it then sends unthrottled —
so the floor, used while a stream is paused, is 1 message per hour.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sendguard_policyd.cap_in_force import CapInForce

HOUR = 3600
DAY = 86400

#: Listmonk applies a window only when its duration is longer than this (seconds).
MIN_DURATION = 1.0
#: The least rate Listmonk applies (0 or less switches the window off: unthrottled sending).
MIN_RATE = 1


@dataclass(frozen=True)
class Window:
    """A Listmonk sliding window: at most ``rate`` counted messages per ``seconds``."""

    rate: int
    seconds: float

    @property
    def duration(self) -> str:
        """The duration as Listmonk stores it: a Go duration with one unit ("24m", "1h", "90s").

        Never "1d": the admin UI's pattern allows it but Go's duration parser
        does not, and Listmonk then runs without a window.
        """
        whole = int(self.seconds)
        if whole != self.seconds:
            return f"{int(self.seconds * 1000)}ms"
        if whole % 3600 == 0:
            return f"{whole // 3600}h"
        if whole % 60 == 0:
            return f"{whole // 60}m"
        return f"{whole}s"

    def text(self) -> str:
        """The window as the logs say it ("41 per 15m")."""
        return f"{self.rate} per {self.duration}"

    def worst_case(self, period: float) -> int:
        """The most messages Listmonk may push in one rolling ``period`` seconds under this window."""
        return (math.ceil(period / self.seconds) + 1) * (self.rate + 1)


@dataclass(frozen=True)
class Choice:
    """The window to set for a cap in force (None: no window, the stream has no cap) and why."""

    window: Window | None
    #: False when no Listmonk window can keep under the cap (a cap below 4 per hour): the policy
    #: daemon holds what exceeds it.
    exact: bool
    reason: str


def floor_window(hour: int = HOUR) -> Window:
    """The least window Listmonk applies, for a paused stream: 1 message per hour."""
    return Window(MIN_RATE, float(hour))


def _durations(hour: int) -> list[int]:
    """Whole-second durations that divide the hour or the day, at least a minute long.

    A minute at least because Listmonk logs a line each time a window fills;
    shorter windows gain nothing on the brief's caps.
    """
    day = 24 * hour
    shortest = max(2, hour // 60)
    return [d for d in range(shortest, day + 1) if hour % d == 0 or day % d == 0]


def _best_rate(seconds: int, caps: list[tuple[int, int]]) -> int:
    """The largest rate whose worst case stays under every (cap, period); below 1 when none does."""
    return min(cap // (math.ceil(period / seconds) + 1) for cap, period in caps) - 1


def window_for(cap: CapInForce, share: int = 1, hour: int = HOUR) -> Choice:
    """The Listmonk window for ``cap``, when ``share`` Listmonk instances feed the stream.

    Each of them gets an equal part of every cap. ``hour`` is the policy
    daemon's hour in seconds (its day is 24 of them): shortened only in tests.
    """
    if cap.paused:
        return Choice(floor_window(hour), True, f"the floor Listmonk applies while the stream is paused: {cap.reason}")
    caps = [(c // share, p) for c, p in ((cap.hourly, hour), (cap.daily, 24 * hour)) if c is not None]
    part = f" (one of {share} Listmonk instances)" if share > 1 else ""
    if not caps:
        return Choice(None, True, f"the stream has no cap: {cap.reason}")
    best: tuple[float, Window] | None = None
    for seconds in _durations(hour):
        rate = _best_rate(seconds, caps)
        if rate < MIN_RATE:
            continue
        throughput = (rate + 1) / seconds
        if best is None or throughput > best[0]:
            best = (throughput, Window(rate, float(seconds)))
    if best is None:
        return Choice(
            floor_window(hour), False,
            f"no Listmonk window stays under {_caps_text(caps, hour)}{part} (its least lets 4 an hour through);"
            f" the policy daemon holds the rest: {cap.reason}",
        )  # fmt: skip
    return Choice(best[1], True, f"keeps every rolling window under {_caps_text(caps, hour)}{part}: {cap.reason}")


def _caps_text(caps: list[tuple[int, int]], hour: int) -> str:
    return " and ".join(f"{c} per {'hour' if p == hour else 'day'}" for c, p in caps)


# -- reading Listmonk's settings back ------------------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]*\.?[0-9]*)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go duration ("1h30m", "90s", "1.5h"), or None when Go would refuse it."""
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        return None
    total, pos = 0.0, 0
    while pos < len(body):
        match = _PART.match(body, pos)
        if match is None or match.group(1) in ("", "."):
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return -total if text.startswith("-") else total


def window_in_force(enabled: object, rate: object, duration: object) -> Window | None:
    """The window Listmonk applies for these three settings, or None when it sends unthrottled.

    Listmonk applies a window only when it is enabled, its rate is at least 1
    and its duration parses to more than 1 s (an unparsable duration is 0).
    """
    if enabled is not True or isinstance(rate, bool) or not isinstance(rate, int) or not isinstance(duration, str):
        return None
    seconds = parse_go_duration(duration)
    if rate < MIN_RATE or seconds is None or seconds <= MIN_DURATION:
        return None
    return Window(rate, seconds)
