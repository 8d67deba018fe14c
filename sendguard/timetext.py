"""Time as people read and write it: durations (``90s``, ``45m``, ``6h``, ``3d``, ``1d12h``) and instants (UTC).

A duration is whole numbers with a unit each (``s``, ``m``, ``h``, ``d``, ``w``), one or
more of them added up; a bare number is refused, so ``3`` can never silently
mean three seconds where three days were meant.
"""

from __future__ import annotations

import re
import time

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)\s*([smhdw])")
_WHOLE = re.compile(r"(?:\d+\s*[smhdw]\s*)+")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError with a reason an operator can act on when it is not a duration."""
    value = text.strip().lower()
    if not _WHOLE.fullmatch(value):
        raise ValueError(f"{text!r} is not a duration (a number and a unit s, m, h, d or w, like 30m, 6h, 3d or 1d12h)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """A duration in the largest units that fit, as :func:`parse_duration` reads it (``1d12h``, ``90m`` → ``1h30m``)."""
    rest = int(round(seconds))
    if rest <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def format_instant(epoch: float) -> str:
    """An instant as logs, answers and ``sendguard status`` print it: ``2026-03-02T10:59:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
