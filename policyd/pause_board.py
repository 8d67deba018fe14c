"""The pauses in force, as the event loop sees them: a snapshot of the store, refreshed off the loop.

The loop decides every request in microseconds and must never wait for the
store (server.py), so it does not read pauses from the store per request: a
thread of its own reads them every :data:`REFRESH_INTERVAL` and swaps in a new
snapshot, which the loop reads as plain memory (:meth:`PauseBoard.of`). A pause
set by ``sendguard pause``, by a stop-signal rule in another process or by
another host's daemon therefore takes effect here within about a second; one
that ends at its ``until`` ends on time, since the loop compares ``until`` with
the request's own clock.

When the store cannot be read, the last snapshot stays (one log line when it
fails, one when it reads again): a pause in force is not forgotten because the
store hiccuped.

The refresh also keeps the pause gauges (``sendguard_policyd_paused``) and
counts each pause seen to begin (``sendguard_policyd_pauses_total``: a pause
already in force when the daemon starts is not counted, so a restart does not
look like a new stop signal).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from sendguard import logs
from sendguard.timetext import format_instant
from sendguard_policyd import metrics
from sendguard_policyd.store import Pause, StoreBusy, StoreError, StoreReader

log = logs.get("policyd")

#: Seconds between two reads of the pauses from the store.
REFRESH_INTERVAL = 1.0
#: The ``operator`` label of a whole-stream pause.
ALL = "all"


@dataclass(frozen=True)
class StreamPauses:
    """One stream's pauses in force at one instant."""

    #: The whole-stream pause, if any.
    whole: Pause | None = None
    #: The per-operator pauses, by operator.
    operators: Mapping[str, Pause] = field(default_factory=dict)


def label(operator: str) -> str:
    """The metric label of a pause's operator ("" is the whole stream: ``all``)."""
    return operator or ALL


class PauseBoard:
    """The pauses in force for the event loop; :meth:`start` the refresher, :meth:`close` it."""

    def __init__(
        self,
        store: StoreReader,
        streams: Sequence[str] = (),
        operators: Sequence[str] = (),
        interval: float = REFRESH_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``streams`` and ``operators``: the gauge's label values (each pair is exported, 0 or 1)."""
        self.store = store
        self.streams = tuple(streams)
        self.operators = tuple(operators)
        self.interval = interval
        self.clock = clock
        #: stream -> its pauses in force at the last refresh (replaced whole, never changed in place).
        self._by_stream: dict[str, tuple[Pause, ...]] = {}
        self._seen: set[tuple[str, str, float, str]] | None = None  # None: no refresh has read the store
        self._failing = False
        # One refresh at a time (the refresher, and a caller that wants the store read now).
        self._refreshing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the event loop's side -------------------------------------------------------------------

    def of(self, stream: str, now: float) -> StreamPauses | None:
        """The stream's pauses in force at ``now`` (None: none): memory only, never the store."""
        pauses = self._by_stream.get(stream)
        if not pauses:
            return None
        whole = None
        by_operator: dict[str, Pause] = {}
        for p in pauses:
            if not p.active(now):
                continue
            if p.operator:
                by_operator[p.operator] = p
            else:
                whole = p
        if whole is None and not by_operator:
            return None
        return StreamPauses(whole, by_operator)

    def all(self, now: float) -> list[Pause]:
        """Every pause in force at ``now`` as last read."""
        return [p for pauses in self._by_stream.values() for p in pauses if p.active(now)]

    # -- the refresher's side --------------------------------------------------------------------

    def refresh(self, now: float | None = None) -> bool:
        """Read the pauses from the store now; False when it could not (the last snapshot stays)."""
        with self._refreshing:
            return self._refresh(self.clock() if now is None else now)

    def _refresh(self, now: float) -> bool:
        try:
            pauses = self.store.pauses(now)
        except (StoreError, StoreBusy) as exc:
            if not self._failing:
                log.warning("cannot read the pauses from the counter store (%s); the last ones read stay in force", exc)
                self._failing = True
            return False
        if self._failing:
            log.info("pauses read from the counter store again")
            self._failing = False
        by_stream: dict[str, list[Pause]] = {}
        for p in pauses:
            by_stream.setdefault(p.stream, []).append(p)
        self._note_changes(pauses)
        self._by_stream = {stream: tuple(ps) for stream, ps in by_stream.items()}
        self._set_gauges(now)
        return True

    def _note_changes(self, pauses: list[Pause]) -> None:
        keys = {(p.stream, p.operator, p.since, p.rule) for p in pauses}
        seen, self._seen = self._seen, keys
        before = {(p.stream, p.operator): p for ps in self._by_stream.values() for p in ps}
        for p in pauses:
            old = before.get((p.stream, p.operator))
            if old is None or (old.since, old.rule, old.until) != (p.since, p.rule, p.until):
                until = "until resumed" if p.until is None else f"until {format_instant(p.until)}"
                what = f"stream {p.stream}" + (f", mail to {p.operator}," if p.operator else "")
                log.info("%s paused %s (rule %s): %s", what, until, p.rule, p.reason)
            if seen is not None and (p.stream, p.operator, p.since, p.rule) not in seen:
                metrics.PAUSES.labels(p.stream, label(p.operator), p.rule).inc()
        now_keys = {(p.stream, p.operator) for p in pauses}
        for stream, operator in sorted(set(before) - now_keys):
            what = f"stream {stream}" + (f", mail to {operator}," if operator else "")
            log.info("%s no longer paused: held mail is released through the caps", what)

    def _set_gauges(self, now: float) -> None:
        active = {(p.stream, label(p.operator)) for p in self.all(now)}
        names = set(self.streams) | {stream for stream, _ in active}
        for stream in names:
            for operator in (ALL, *self.operators):
                metrics.PAUSED.labels(stream, operator).set(1 if (stream, operator) in active else 0)
        for stream, operator in active:  # an operator no config names (a pause set by another config)
            metrics.PAUSED.labels(stream, operator).set(1)

    def start(self) -> None:
        """Read once now, then every ``interval`` on a thread of its own."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="sendguard-pauses", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # a bug must not end the refreshes: pauses would freeze as they are
                log.exception("error refreshing the pauses")

    def close(self) -> None:
        """Stop the refresher (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
