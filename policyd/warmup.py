"""The warmup day of a stream, and the caps it puts in force.

The calendar warmup day is the number of whole days (86,400 s) since the
stream's start stamp. Every calendar day counts, weekends included: a
weekday-only ramp once stalled a warmup (brief, incident 3). The stamp is a
file holding a Unix epoch, re-read when the file changes (an operator restarts
a warmup by rewriting it, without restarting the daemon), or a fixed
``start_date`` from the config.

The day that sets the cap is the *effective* one (effective_day.py): in
``warmup_days = "sending"`` mode only the days that delivered enough and were
not paused count, and in either mode step-backs lower it. It is computed from
the stream's ramp history (store), which a :class:`Warmup` is handed
(:meth:`Warmup.set_history`) by whoever reads the store: the daemon's refresher
thread (ramp_refresh.py), the releaser's pass, ``sendguard status``. Asking for
the caps never reads the store: the event loop asks for every counted message.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from sendguard import logs
from sendguard.streams import Stream, read_stamp
from sendguard_policyd.effective_day import RampDay, effective_day, ramp_top
from sendguard_policyd.settings import DEFAULT_POLICY, PolicydSettings, StreamPolicy
from sendguard_policyd.store import DAY, NO_HISTORY, RampHistory, StoreReader

log = logs.get("policyd")

#: The stamp file is stat()ed at most this often (seconds): cheap, and a change shows within a second.
RESTAT_INTERVAL = 1.0


@dataclass(frozen=True)
class Caps:
    """The caps in force for a stream at one instant."""

    #: The effective warmup day (None: the stream has no start).
    warmup_day: int | None
    hourly: int | None
    daily: int | None
    #: How the warmup day came about (None: the stream has no start).
    ramp: RampDay | None = None


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
    """The caps in force for one stream, from its ramp, ceilings, start stamp and ramp history."""

    def __init__(self, stream: Stream, policy: StreamPolicy = DEFAULT_POLICY, log_changes: bool = False) -> None:
        """``policy``: the stream's ``warmup_days`` and ``sending_day_minimum``; ``log_changes``: log
        each change of the effective day (the daemon's warmups do; status and the releaser do not)."""
        self.stream = stream
        self.mode = policy.warmup_days
        self.minimum = policy.sending_day_minimum
        self.top = ramp_top(stream.ramp, stream.ramp_cap)
        self.log_changes = log_changes
        self._stamp = StampFile(stream.start_file) if stream.start_file is not None else None
        #: The ramp history last read from the store (until the first read: none, so a sending-mode
        #: stream is on day 0, the most careful cap).
        self.history: RampHistory = NO_HISTORY
        # The last answer and what it was computed from, (start, calendar day, history), in one
        # tuple: the event loop and a metrics scrape may ask at the same time.
        self._last: tuple[tuple[float | None, int | None, RampHistory], Caps] | None = None

    def set_history(self, history: RampHistory) -> None:
        """Hand over the ramp history just read from the store (from any thread)."""
        if history != self.history:
            self.history = history  # a new object: the next caps() computes the day again

    def start(self, clock: float | None = None) -> float | None:
        """The warmup start epoch, or None when the stream has no start (``clock``: see StampFile.epoch)."""
        if self._stamp is not None:
            return self._stamp.epoch(clock)
        return self.stream.start_epoch

    def caps(self, now: float, clock: float | None = None) -> Caps:
        """The effective warmup day and the hourly and daily caps in force at ``now``.

        ``clock`` paces stamp-file re-reads (monotonic time in the daemon);
        without it every call re-checks the file, which is what tests want.
        """
        start = self.start(clock)
        calendar = warmup_day(start, now) if start is not None else None
        history = self.history
        memo = self._last
        if memo is not None:
            (last_start, last_calendar, last_history), last = memo
            if last_start == start and last_calendar == calendar and last_history is history:
                return last  # the same day from the same history, so the same caps: asked for every counted message
        stream = self.stream
        ramp = None
        day = None
        if start is not None:
            ramp = effective_day(start, now, self.mode, self.minimum, history, self.top)
            day = ramp.day
        if stream.ramp:
            # A ramp with an unreadable start cannot happen after parse; day 0 is the careful fallback.
            hourly = stream.ramp_cap(day if day is not None else 0)
        else:
            hourly = stream.hourly_ceiling
        caps = Caps(warmup_day=day, hourly=hourly, daily=stream.daily_cap, ramp=ramp)
        if self.log_changes and memo is not None and memo[1].warmup_day != day and ramp is not None:
            log.info("stream %s: warmup day %s -> %s (%s)", stream.name, memo[1].warmup_day, day, ramp.reason())
        self._last = ((start, calendar, history), caps)
        return caps


def make_warmups(streams: Sequence[Stream], settings: PolicydSettings, log_changes: bool = False) -> dict[str, Warmup]:
    """One :class:`Warmup` per stream, with the stream's ``warmup_days`` settings."""
    return {s.name: Warmup(s, settings.policy_for(s.name), log_changes) for s in streams}


def refresh_histories(warmups: Mapping[str, Warmup], store: StoreReader) -> None:
    """Read every started stream's ramp history and hand it to its warmup (off the event loop).

    Raises :class:`StoreError` at the first stream the store cannot answer for (the others keep
    the history they had)."""
    for name, warmup in warmups.items():
        if warmup.stream.start_file is not None or warmup.stream.start_epoch is not None:
            warmup.set_history(store.ramp_history(name))
