"""The warmup day of a stream, and the caps it puts in force.

The warmup day is the number of whole days (86,400 s) since the stream's start
stamp. Every calendar day counts, weekends included: a weekday-only ramp once
stalled a warmup (brief, incident 3). The stamp is a file holding a Unix epoch,
re-read when the file changes (an operator restarts a warmup by rewriting it,
without restarting the daemon), or a fixed ``start_date`` from the config.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from sendguard import logs
from sendguard.streams import Stream, read_stamp
from sendguard_policyd.store import DAY

log = logs.get("policyd")

#: The stamp file is stat()ed at most this often (seconds): cheap, and a change shows within a second.
RESTAT_INTERVAL = 1.0


@dataclass(frozen=True)
class Caps:
    """The caps in force for a stream at one instant."""

    warmup_day: int | None
    hourly: int | None
    daily: int | None


def cap_text(cap: int | None) -> str:
    """A cap as the logs, the deferral texts and ``sendguard status`` print it."""
    return "unlimited" if cap is None else str(cap)


def warmup_day(start_epoch: float, now: float) -> int:
    """Whole days since ``start_epoch``; a start in the future is day 0 (the most careful cap)."""
    if now <= start_epoch:
        return 0
    return int((now - start_epoch) // DAY)


class StampFile:
    """A start stamp file, re-read when its inode, size or mtime changes.

    When a changed file cannot be read, the last good value stays in force and
    one warning is logged: a half-written stamp must not reset a warmup to day 0
    or skip it ahead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._sig: tuple[int, int, int] | None = None
        self._epoch: float | None = None
        self._checked = float("-inf")
        self._bad_sig: tuple[int, int, int] | None = None

    def epoch(self, clock: float | None = None) -> float | None:
        """The stamp's epoch.

        ``clock`` is a monotonic reading used only to pace re-checks (at most one
        stat per :data:`RESTAT_INTERVAL`); None checks the file now.
        """
        if clock is not None and clock - self._checked < RESTAT_INTERVAL and self._epoch is not None:
            return self._epoch
        with self._lock:
            if clock is not None:
                self._checked = clock
            try:
                st = os.stat(self.path)
                sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError as exc:
                if self._bad_sig != (0, 0, 0):
                    log.warning("stamp file %s cannot be read (%s); keeping start %s", self.path, exc, self._epoch)
                    self._bad_sig = (0, 0, 0)
                return self._epoch
            if sig == self._sig:
                return self._epoch
            try:
                epoch = read_stamp(self.path)
            except ValueError as exc:
                if self._bad_sig != sig:
                    log.warning("%s; keeping start %s", exc, self._epoch)
                    self._bad_sig = sig
                return self._epoch
            if self._epoch is not None and epoch != self._epoch:
                log.info("stamp file %s changed: warmup start %s -> %s", self.path, self._epoch, epoch)
            self._sig, self._epoch, self._bad_sig = sig, epoch, None
            return epoch


class Warmup:
    """The caps in force for one stream, from its ramp, ceilings and start stamp."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._stamp = StampFile(stream.start_file) if stream.start_file is not None else None
        self._last: Caps | None = None

    def start(self, clock: float | None = None) -> float | None:
        """The warmup start epoch, or None when the stream has no start (``clock``: see StampFile.epoch)."""
        if self._stamp is not None:
            return self._stamp.epoch(clock)
        return self.stream.start_epoch

    def caps(self, now: float, clock: float | None = None) -> Caps:
        """The warmup day and the hourly and daily caps in force at ``now``.

        ``clock`` paces stamp-file re-reads (monotonic time in the daemon);
        without it every call re-checks the file, which is what tests want.
        """
        start = self.start(clock)
        day = warmup_day(start, now) if start is not None else None
        last = self._last
        if last is not None and last.warmup_day == day:
            return last  # the same day, so the same caps: asked for every counted message
        stream = self.stream
        if stream.ramp:
            # A ramp with an unreadable start cannot happen after parse; day 0 is the careful fallback.
            hourly = stream.ramp_cap(day if day is not None else 0)
        else:
            hourly = stream.hourly_ceiling
        self._last = Caps(warmup_day=day, hourly=hourly, daily=stream.daily_cap)
        return self._last
