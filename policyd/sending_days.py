"""Sending days: what the warmup of a ``warmup_days = "sending"`` stream advances on.

:class:`SendingDays` is a :class:`~sendguard_policyd.watch.DeliveryConsumer`:
for each delivery the watcher reads from Postfix's log with ``status=sent``,
it adds one to the delivery's stream on the ramp day the delivery's log time
falls in. A ramp day is the same 24-hour period the warmup day counts: from
the stream's start stamp's time of day to the same time the next day
(effective_day.py names each by the UTC date it begins on). So "the day" of a
delivery is the daemon's warmup day, not a local-midnight date: the two agree
when the stamp is local midnight, and a stamp taken at 09:30 makes every ramp
day run from 09:30 to 09:30, for the counts as for the caps.

Every stream with a start is counted, calendar mode included: the counts show
in ``sendguard status``, and a stream switched to sending mode later finds its
history. Deliveries of mail in no stream, or of a stream without a start, are
not counted.

Each count is written through at once (one small store write): the watcher
persists its log position after the consumers took a line, so a count kept in
memory would be lost by a restart at the end of a day, the one moment it
matters. When the store cannot be written, counts wait in memory and go with
the next write after :data:`RETRY_SECONDS` (one warning until then): the
watcher must not wait for a store that is down.

:class:`PausedDays` records the ramp days a whole stream was paused during
(``mark_paused_day``): a paused day never advances a sending-mode ramp.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from typing import Callable, Mapping

from sendguard import logs
from sendguard_policyd.effective_day import nth_ramp_date, ramp_date, ramp_day_index
from sendguard_policyd.store import CounterStore, StoreBusy, StoreError
from sendguard_policyd.watch import Delivery
from sendguard_policyd.warmup import Warmup

log = logs.get("policyd")

#: After a failed write, the next one is tried no sooner than this (seconds).
RETRY_SECONDS = 5.0
#: The most ramp days one pause marks back from now (a pause left on for months).
MAX_SPAN_DAYS = 400
#: Ramp days remembered as marked paused (forgotten when full; a second mark is harmless).
MARKED_SIZE = 1024


class _Pending:
    """Writes that failed, kept until the store takes them; one warning per outage."""

    def __init__(self, what: str, clock: Callable[[], float]) -> None:
        self.what = what
        self.clock = clock
        self.retry_at = float("-inf")
        self.failing = False

    def may_try(self) -> bool:
        return self.clock() >= self.retry_at

    def failed(self, exc: Exception, waiting: int) -> None:
        self.retry_at = self.clock() + RETRY_SECONDS
        if not self.failing:
            log.warning("cannot record %s in the counter store (%s); %d kept in memory, retried every %g s",
                        self.what, exc, waiting, RETRY_SECONDS)  # fmt: skip
            self.failing = True

    def succeeded(self) -> None:
        if self.failing:
            log.info("%s recorded again in the counter store", self.what)
            self.failing = False


class _RampDayWriter:
    """What both writers share: the streams' starts (ramp days), the store, failed-write pacing."""

    def __init__(
        self, warmups: Mapping[str, Warmup], store: CounterStore, clock: Callable[[], float], what: str
    ) -> None:
        """``warmups``: the streams' warmups (their start stamps give the ramp days); ``clock``:
        monotonic, paces stamp re-reads and retries."""
        self.warmups = warmups
        self.store = store
        self.clock = clock
        self._pending = _Pending(what, clock)

    def _start(self, stream: str) -> float | None:
        """The stream's warmup start; None for mail in no stream ("none"), an unknown stream or no start."""
        warmup = self.warmups.get(stream)
        return warmup.start(self.clock()) if warmup is not None else None


class SendingDays(_RampDayWriter):
    """Counts each stream's sent deliveries per ramp day into the store (a ``DeliveryConsumer``)."""

    def __init__(
        self, warmups: Mapping[str, Warmup], store: CounterStore, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(warmups, store, clock, "sent deliveries")
        #: Counts not in the store yet, per (stream, ramp day).
        self.waiting: Counter[tuple[str, dt.date]] = Counter()

    def delivered(self, delivery: Delivery) -> None:
        """Count one delivery if it was sent and its stream has a start."""
        if delivery.status != "sent":
            return
        start = self._start(delivery.stream)
        if start is None:
            return
        self.waiting[(delivery.stream, ramp_date(start, delivery.at))] += 1
        if self._pending.may_try():
            self.flush()

    def flush(self) -> bool:
        """Write every waiting count now; True when none is left waiting."""
        while self.waiting:
            (stream, day), n = next(iter(self.waiting.items()))
            try:
                self.store.add_sent(stream, day, n)
            except (StoreError, StoreBusy) as exc:
                self._pending.failed(exc, sum(self.waiting.values()))
                return False
            del self.waiting[(stream, day)]
        self._pending.succeeded()
        return True


class PausedDays(_RampDayWriter):
    """Marks the ramp days a whole stream was paused during, so that they never advance its ramp.

    The pauses' owner calls :meth:`paused` for each whole-stream pause (operator ``""``) that is
    active, whenever it looks at them (a pause of one operator's mail does not mark the day: the
    stream still sends to the others, and the day counts if it delivers enough). Each day is
    written once; a mark that cannot be written is tried again at the next call.
    """

    def __init__(
        self, warmups: Mapping[str, Warmup], store: CounterStore, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(warmups, store, clock, "paused days")
        self._marked: set[tuple[str, dt.date]] = set()

    def paused(self, stream: str, since: float, now: float) -> None:
        """The whole of ``stream`` has been paused from ``since`` until ``now``: mark every ramp day
        that span touches (a pause over a weekend marks each day of it, even if nobody looked then)."""
        if not self._pending.may_try():
            return
        start = self._start(stream)
        if start is None or now < start:
            return  # no such stream, or its warmup has not begun: no ramp day to mark
        # Days before the warmup began are not ramp days; a pause older than MAX_SPAN_DAYS marks its last ones.
        last = ramp_day_index(start, now)
        first = max(0, ramp_day_index(start, min(since, now)), last - MAX_SPAN_DAYS)
        days = [nth_ramp_date(start, i) for i in range(first, last + 1)]
        for day in days:
            if (stream, day) in self._marked:
                continue
            try:
                if self.store.mark_paused_day(stream, day):
                    log.info("stream %s: ramp day %s marked paused: it will not advance the warmup", stream, day)
            except (StoreError, StoreBusy) as exc:
                self._pending.failed(exc, 1)
                return
            if len(self._marked) >= MARKED_SIZE:
                self._marked.clear()
            self._marked.add((stream, day))
        self._pending.succeeded()
