"""The releaser: over-cap mail held in Postfix goes out exactly as fast as its stream's windows allow.

One pass (``sendguard release --once``; a loop every ``[release] interval``
otherwise, and inside ``sendguard run`` on the Postfix host):

1. read Postfix's hold queue (``postqueue -j``);
2. per stream, oldest first, for every message the policy daemon held itself:
   a *claim* in the counter store — the same atomic check-and-add as at
   END-OF-MESSAGE, so the message is counted *before* it leaves — then
   ``postsuper -H`` and ``postqueue -i``, then the record is closed;
3. the first message that does not fit stops its stream: later ones wait
   behind it, so a stream's mail leaves in the order it came.

A crash between the claim and Postfix's release leaves the message counted
and still held; the next pass finds it claimed and releases it without
counting it again. Messages the daemon did not hold (a Yahoo-family hold,
anything an operator held) are never touched; a held message that left the
hold queue by other hands (deleted, released by hand) is closed uncounted.
A message larger than the cap can never fit: it is skipped and logged (it
stays held for the operator), so it does not block the stream.

Pauses (read from the store at the start of every pass): nothing of a paused
stream is released, whatever it was held for; while only some receiving
operators of a stream are paused, a message with a recipient at one of them
(or one whose operators were not known when it was held) waits, and does not
hold back the stream's other mail. Once the pause ends, the mail it held
leaves like any held mail: in arrival order, counted against the caps then.
A message held longer than ``lifetime_warn_share`` of the queue lifetime is
flagged even while its pause lasts: a pause of days can outlast it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from sendguard import logs
from sendguard.streams import Stream
from sendguard.timetext import format_instant
from sendguard_policyd import metrics
from sendguard_policyd.postfix_queue import PostfixError, PostfixQueue, QueuedMessage
from sendguard_policyd.store import (
    ALREADY_COUNTED,
    COUNTED,
    NOT_HELD,
    STATE_GONE,
    STATE_HELD,
    STATE_RELEASED,
    STATE_RELEASING,
    TOO_LARGE,
    UNKNOWN_OPERATOR,
    CounterStore,
    HeldMessage,
    Pause,
    StoreError,
)
from sendguard_policyd.warmup import Warmup, cap_text, refresh_histories

log = logs.get("release")

#: ``maximal_queue_lifetime`` is read again after this many seconds (an operator may change it).
LIFETIME_REFRESH = 600.0
#: The streams' ramp history (effective warmup days) is read again after this many seconds.
HISTORY_REFRESH = 60.0
#: A message is recorded held when the policy daemon answers HOLD, before Postfix has finished it
#: (the milters still run) and filed it in the hold queue; only a record older than this that is
#: missing from the hold queue has left it by other hands.
ARRIVAL_GRACE = 60.0


@dataclass
class PassResult:
    """What one pass did, per stream (for the log, the tests and ``--once``'s exit status)."""

    released: dict[str, int] = field(default_factory=dict)
    gone: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    #: Of the waiting ones, those kept back by a pause.
    paused: dict[str, int] = field(default_factory=dict)
    errors: int = 0


class Releaser:
    """Releases one configuration's held mail through one Postfix."""

    def __init__(
        self,
        streams: Sequence[Stream],
        store: CounterStore,
        queue: PostfixQueue,
        lifetime_warn_share: float = 0.5,
        clock: Callable[[], float] = time.time,
        warmups: Mapping[str, Warmup] | None = None,
    ) -> None:
        """``warmups``: the streams' warmups with their ``warmup_days`` settings (``warmup.make_warmups``);
        None: calendar days for every stream."""
        self.streams = streams
        self.store = store
        self.queue = queue
        self.warn_share = lifetime_warn_share
        self.clock = clock
        self.warmups = warmups if warmups is not None else {s.name: Warmup(s) for s in streams}
        self._history_read = float("-inf")
        self._lifetime: float | None = None
        self._lifetime_read = float("-inf")
        # Queue ids already logged as too large / near the end of their lifetime: one line each.
        self._logged_too_large: set[str] = set()
        self._logged_old: set[str] = set()
        # Pauses already logged as keeping mail back: one line each.
        self._logged_pauses: set[tuple[str, str, float]] = set()
        self._last_error = ""

    def run_pass(self) -> PassResult:
        """One pass over the hold queue; never raises for Postfix or store trouble (logged, counted)."""
        result = PassResult()
        now = self.clock()
        try:
            held = self.queue.held()
        except PostfixError as exc:
            self._error("postqueue", str(exc))
            result.errors += 1
            return result
        try:
            # Read before anything is released: mail of a paused stream or operator must not leave.
            pauses = self.store.pauses(now)
        except StoreError as exc:
            self._error("store", f"reading the pauses: {exc}")
            result.errors += 1
            return result
        lifetime = self._maximal_queue_lifetime(now)
        self._read_histories(now)
        for stream in self.streams:
            try:
                self._release_stream(stream, held, now, lifetime, result, [p for p in pauses if p.stream == stream.name])
            except StoreError as exc:
                self._error("store", f"stream {stream.name}: {exc}")
                result.errors += 1
        if not result.errors:
            self._last_error = ""
        return result

    def _read_histories(self, now: float) -> None:
        """The ramp history behind the effective warmup days, read at most once a refresh interval:
        a release must not go out at a higher cap than the daemon's (a step-back, a stalled ramp)."""
        if now - self._history_read < HISTORY_REFRESH:
            return
        try:
            refresh_histories(self.warmups, self.store)
        except StoreError as exc:
            # The days stay as last read; the claims below meet the same store trouble and say so.
            log.warning("cannot read the streams' ramp history: %s", exc)
            return
        self._history_read = now

    def _release_stream(
        self,
        stream: Stream,
        held: dict[str, QueuedMessage],
        now: float,
        lifetime: float | None,
        result: PassResult,
        pauses: list[Pause],
    ) -> None:
        name = stream.name
        whole = next((p for p in pauses if not p.operator), None)
        paused_operators = {p.operator for p in pauses if p.operator}
        caps = self.warmups[name].caps(now)
        blocked = False
        near_end = 0
        # Claimed ones first: they are counted already, and must not wait behind one that does not fit.
        waiting = sorted(self.store.held_messages(name), key=lambda m: m.state != STATE_RELEASING)
        for message in waiting:
            queued = held.get(message.queue_id)
            if queued is None:
                if message.state == STATE_HELD and now - message.at < ARRIVAL_GRACE:
                    # Not filed in the hold queue yet: it waits, and so does everything after it.
                    blocked = True
                    result.waiting[name] = result.waiting.get(name, 0) + 1
                    continue
                self._left_by_other_hands(message, now, result)
                continue
            if lifetime is not None and now - queued.arrival_time > self.warn_share * lifetime:
                near_end += 1
                self._warn_old(message, queued, now, lifetime)
            pause = whole or self._pause_of(message, paused_operators, pauses)
            if pause is not None:
                # Kept back, without holding back the stream's other mail (a whole pause keeps it all).
                self._note_pause(pause, name)
                result.waiting[name] = result.waiting.get(name, 0) + 1
                result.paused[name] = result.paused.get(name, 0) + 1
                continue
            if blocked:
                result.waiting[name] = result.waiting.get(name, 0) + 1
                continue
            adm = self.store.claim_release(message.queue_id, now, caps.hourly, caps.daily)
            if adm.outcome in (COUNTED, ALREADY_COUNTED):
                if not self._release(message, adm.outcome == ALREADY_COUNTED, now, result):
                    blocked = True  # Postfix refused: keep the order, try again next pass
                    result.waiting[name] = result.waiting.get(name, 0) + 1
                    continue
                log.info(
                    "%s: release: stream %s: %d recipient(s), hour %d/%s, day %d/%s%s",
                    message.queue_id, name, message.recipients, adm.hour_count, cap_text(caps.hourly),
                    adm.day_count, cap_text(caps.daily),
                    " (counted by an earlier pass)" if adm.outcome == ALREADY_COUNTED else "",
                )  # fmt: skip
            elif adm.outcome == NOT_HELD:
                continue  # closed meanwhile (another releaser, an operator's tool)
            elif adm.outcome == TOO_LARGE:
                if message.queue_id not in self._logged_too_large:
                    self._logged_too_large.add(message.queue_id)
                    log.warning(
                        "%s: stream %s: %d recipients can never fit the cap in force (%s/hour, %s/day);"
                        " left on hold for the operator (postsuper -H to send it anyway, -d to delete it)",
                        message.queue_id, name, message.recipients, cap_text(caps.hourly), cap_text(caps.daily),
                    )  # fmt: skip
                result.waiting[name] = result.waiting.get(name, 0) + 1
            else:  # over a cap: this one and every later one wait for room
                blocked = True
                result.waiting[name] = result.waiting.get(name, 0) + 1
        metrics.HELD_NEAR_LIFETIME.labels(name).set(near_end)

    @staticmethod
    def _pause_of(message: HeldMessage, paused: set[str], pauses: list[Pause]) -> Pause | None:
        """The operator pause that keeps ``message`` back, if any (operators not known: any of them)."""
        if not paused:
            return None
        operators = message.operators or (UNKNOWN_OPERATOR,)
        hit = next((op for op in operators if op in paused), None)
        if hit is None and UNKNOWN_OPERATOR in operators:
            hit = min(paused)
        return next((p for p in pauses if p.operator == hit), None) if hit is not None else None

    def _note_pause(self, pause: Pause, stream: str) -> None:
        key = (pause.stream, pause.operator, pause.since)
        if key in self._logged_pauses:
            return
        self._logged_pauses.add(key)
        what = f"stream {stream}" + (f"'s mail to {pause.operator}" if pause.operator else "")
        until = "until resumed" if pause.until is None else f"until {format_instant(pause.until)}"
        log.info("release: %s is paused (rule %s, %s): its held mail waits for the pause to end", what, pause.rule,
                 until)  # fmt: skip

    def _release(self, message: HeldMessage, counted_before: bool, now: float, result: PassResult) -> bool:
        try:
            self.queue.release(message.queue_id)
        except PostfixError as exc:
            # Counted and still held: the next pass finds it claimed and only releases it.
            self._error("postsuper", f"{message.queue_id}: {exc}")
            result.errors += 1
            return False
        self.store.finish_release(message.queue_id, STATE_RELEASED, now)
        metrics.RELEASES.labels(message.stream).inc()
        metrics.RELEASED_RECIPIENTS.labels(message.stream).inc(message.recipients)
        result.released[message.stream] = result.released.get(message.stream, 0) + 1
        return True

    def _left_by_other_hands(self, message: HeldMessage, now: float, result: PassResult) -> None:
        if message.state == STATE_RELEASING:
            # Claimed, and Postfix let it go, but the pass that did it stopped before closing the record.
            self.store.finish_release(message.queue_id, STATE_RELEASED, now)
            log.info("%s: release: stream %s: left the hold queue after its claim; closed", message.queue_id,
                     message.stream)  # fmt: skip
            return
        self.store.finish_release(message.queue_id, STATE_GONE, now)
        metrics.HELD_GONE.labels(message.stream).inc()
        result.gone[message.stream] = result.gone.get(message.stream, 0) + 1
        log.info(
            "%s: stream %s: no longer in the hold queue (deleted or released by hand); not counted",
            message.queue_id, message.stream,
        )  # fmt: skip

    def _warn_old(self, message: HeldMessage, queued: QueuedMessage, now: float, lifetime: float) -> None:
        if message.queue_id in self._logged_old:
            return
        self._logged_old.add(message.queue_id)
        log.warning(
            "%s: stream %s: held %.1f h, over %.0f%% of maximal_queue_lifetime (%.1f h): once released,"
            " a first failed delivery can bounce it (see docs/policyd.md, long holds)",
            message.queue_id, message.stream, (now - queued.arrival_time) / 3600, self.warn_share * 100,
            lifetime / 3600,
        )  # fmt: skip

    def _maximal_queue_lifetime(self, now: float) -> float | None:
        if now - self._lifetime_read >= LIFETIME_REFRESH:
            self._lifetime_read = now
            try:
                self._lifetime = self.queue.lifetime()
            except PostfixError as exc:
                log.warning("cannot read maximal_queue_lifetime (%s): long holds are not flagged", exc)
                self._lifetime = None
        return self._lifetime

    def _error(self, step: str, text: str) -> None:
        metrics.RELEASE_ERRORS.labels(step).inc()
        # One line per new failure, not one per pass while Postfix is down.
        if text != self._last_error:
            log.error("release pass: %s", text)
            self._last_error = text

    def serve(self, interval: float, stop: threading.Event) -> None:
        """Run passes every ``interval`` seconds until ``stop`` is set."""
        log.info("releaser started: a pass every %g s over streams %s", interval,
                 ", ".join(s.name for s in self.streams) or "(none)")  # fmt: skip
        while not stop.is_set():
            try:
                self.run_pass()
            except Exception:  # a bug must not end the releaser: held mail would stay held
                log.exception("release pass failed")
            stop.wait(interval)
        log.info("releaser stopped")
