"""The daemon's ramp-history refresher: the store is read on a thread of its own, never on the event loop.

The effective warmup day (effective_day.py) follows the streams' ramp history
in the store: sent deliveries per ramp day, paused days, step-backs. The event
loop asks for the caps of every counted message and must never wait for the
store, so this thread reads every stream's history once a
:data:`REFRESH_INTERVAL` and hands it to the warmups; the loop computes the
day from what it was handed last. What that can cost is bounded and on the
careful side for the counts: a ramp day's last deliveries are seen up to a
minute late, so just after a day ends the day may stay one lower for up to a
minute. A step-back recorded by this process (:meth:`RampRefresher.step_back`)
is read back at once.

Before each read it marks the ramp days a whole-stream pause spanned (from the
store's pauses, in force or ended in the last two days: a pause set by the
watcher's stop signals, by ``sendguard pause`` or on another host), so that a
paused day never advances a sending-mode ramp (sending_days.PausedDays).

When the store cannot be read, the warmups keep the history they had and one
warning is logged until it can be read again.
"""

from __future__ import annotations

import threading
import time
from typing import Mapping

from sendguard import logs
from sendguard_policyd.sending_days import PausedDays
from sendguard_policyd.store import DAY, CounterStore, StoreBusy, StoreError
from sendguard_policyd.warmup import Warmup, refresh_histories

log = logs.get("policyd")

#: Seconds between two reads of the ramp history.
REFRESH_INTERVAL = 60.0


class RampRefresher:
    """Reads the streams' ramp history into their warmups, now (:meth:`refresh`) and every interval."""

    def __init__(self, warmups: Mapping[str, Warmup], store: CounterStore, interval: float = REFRESH_INTERVAL) -> None:
        self.warmups = warmups
        self.store = store
        self.interval = interval
        self._paused_days = PausedDays(warmups, store)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one refresh at a time (the thread's, a caller's)
        self._failing = False
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Read every stream's history now, on the calling thread (never the event loop's); True if read."""
        with self._lock:
            try:
                self._mark_paused_days(time.time())
                refresh_histories(self.warmups, self.store)
            except (StoreError, StoreBusy) as exc:
                if not self._failing:
                    log.warning("cannot read the streams' ramp history (%s); the warmup days stay as last read,"
                                " retrying every %g s", exc, self.interval)  # fmt: skip
                    self._failing = True
                return False
            if self._failing:
                log.info("ramp history readable again")
                self._failing = False
            return True

    def _mark_paused_days(self, now: float) -> None:
        # Ended pauses too: one shorter than the interval would otherwise never be seen in force.
        for p in self.store.pause_history(now - 2 * DAY):
            if not p.operator:
                self._paused_days.paused(p.stream, p.since, now if p.until is None else min(p.until, now))

    def step_back(self, stream: str, days: int, rule: str, now: float) -> None:
        """Record a step-back in the store and read the history again (the stop signals' hook)."""
        self.store.step_back(stream, days, rule, now)
        self._wake.set()

    def start(self) -> None:
        """Start the thread (after a first :meth:`refresh` by the caller, so the daemon starts informed)."""
        self._thread = threading.Thread(target=self._run, name="sendguard-ramp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception:  # a bug must not end the refreshes: the days would freeze silently
                log.exception("error reading the ramp history")

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
