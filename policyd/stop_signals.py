"""Stop signals: the watcher's deliveries counted against the rules; at a rule's threshold, a pause.

:class:`StopSignals` is a :class:`~sendguard_policyd.watch.DeliveryConsumer`.
For each delivery of a configured stream that was not sent, every enabled rule
(stop_signal_rules.py) that matches it counts one, per rule and stream (and per
receiving operator for ``pause_operator``), over a rolling hour of the
deliveries' own log times, so a log read late counts as it happened. When a
count reaches the rule's threshold the rule fires:

* the store gets the pause (``store.pause``): the whole stream, or the
  stream's mail to that operator, from the delivery's time for the rule's
  ``duration``. A pause in force is extended by a later firing, never
  shortened; every policy daemon and releaser reading the store follows it;
* when the firing starts a pause (none in force for that stream and
  operator) and the rule has ``step_back_days``, the injected
  ``on_step_back(stream, days, rule, now)`` is called once: the warmup steps
  back, so the cap resumes lower than where it burned;
* the count starts again from zero, so a rule fires at most once per
  ``threshold`` matches.

A firing whose pause would already be over (a log read days late) pauses
nothing and says so. A store that cannot take the pause is logged, and the
next match fires again. Mail in no stream (``none``) is never paused: what
cannot be told apart from transactional mail is not held.

Give it a store of its own, not the event loop's (as the releaser has): the
watcher's thread then never shares the loop's connection.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Collection, Protocol, Sequence

from sendguard import logs
from sendguard.timetext import format_instant
from sendguard_policyd import metrics
from sendguard_policyd.stop_signal_rules import PAUSE_OPERATOR, Rule, excerpt, reply_text
from sendguard_policyd.store import HOUR, Pause, StoreBusy, StoreError
from sendguard_policyd.watch import Delivery

log = logs.get("policyd")


class PauseStore(Protocol):
    """What the rules need of the counter store: to read and set pauses."""

    def pauses(self, now: float) -> list[Pause]:
        """The pauses in force at ``now``."""
        ...

    def pause(self, p: Pause) -> None:
        """Put a pause in force (or extend the one in force)."""
        ...


#: ``on_step_back(stream, days, rule, now)``: the warmup of ``stream`` steps back ``days`` days.
StepBack = Callable[[str, int, str, float], None]


class StopSignals:
    """Counts deliveries against the stop-signal rules and pauses streams (see the module docstring)."""

    def __init__(
        self,
        rules: Sequence[Rule],
        streams: Collection[str],
        store: PauseStore,
        on_step_back: StepBack | None = None,
        clock: Callable[[], float] = time.time,
        window: float = HOUR,
    ) -> None:
        """``streams``: the configured stream names (deliveries of any other are not counted)."""
        self.rules = tuple(r for r in rules if r.enabled)
        self.streams = frozenset(streams)
        self.store = store
        self.on_step_back = on_step_back
        self.clock = clock
        self.window = window
        # (rule, stream, operator or "") -> log times of the matches in the last window.
        self._hits: dict[tuple[str, str, str], deque[float]] = {}

    def delivered(self, delivery: Delivery) -> None:
        """Count one delivery; fire the rules it brings to their threshold."""
        if delivery.status == "sent" or delivery.stream not in self.streams:
            return
        text: str | None = None
        for rule in self.rules:
            if delivery.status not in rule.statuses:
                continue
            if text is None:
                text = reply_text(delivery.reply)
            if not rule.matches(delivery, text):
                continue
            metrics.STOP_SIGNAL_MATCHES.labels(delivery.stream, rule.name).inc()
            operator = (rule.operator or delivery.operator) if rule.action == PAUSE_OPERATOR else ""
            hits = self._hits.setdefault((rule.name, delivery.stream, operator), deque())
            hits.append(delivery.at)
            while hits and hits[0] <= delivery.at - self.window:
                hits.popleft()
            if len(hits) >= rule.threshold:
                self._fire(rule, delivery, operator, hits, text)

    def _fire(self, rule: Rule, d: Delivery, operator: str, hits: deque[float], text: str) -> None:
        what = f"stream {d.stream}" + (f"'s mail to {operator}" if operator else "")
        count = len(hits)
        until = None if rule.duration is None else d.at + rule.duration
        if until is not None and until <= self.clock():
            log.warning("%s: stop signal %s for %s at %s is older than its pause (%s): nothing paused",
                        d.queue_id, rule.name, what, format_instant(d.at), format_instant(until))  # fmt: skip
            hits.clear()
            return
        reason = (
            f"{count} {'reply' if count == 1 else 'replies'} within an hour matched {rule.name},"
            f" the last from {d.relay or d.domain}: {excerpt(text)}"
        )
        try:
            new = all((p.stream, p.operator) != (d.stream, operator) for p in self.store.pauses(d.at))
            self.store.pause(Pause(d.stream, operator, d.at, until, reason, rule.name))
        except (StoreError, StoreBusy) as exc:
            log.error("%s: stop signal %s: cannot pause %s: %s; the next matching reply tries again",
                      d.queue_id, rule.name, what, exc)  # fmt: skip
            return
        hits.clear()
        log.warning("%s: stop signal %s: %s %s %s: %s", d.queue_id, rule.name, "pausing" if new else "extending the pause of",
                    what, "until resumed" if until is None else f"until {format_instant(until)}", reason)  # fmt: skip
        if new and rule.step_back_days:
            self._step_back(rule, d)

    def _step_back(self, rule: Rule, d: Delivery) -> None:
        if self.on_step_back is None:
            log.info("stop signal %s asks the warmup of stream %s to step back %d day(s); nothing here steps it back",
                     rule.name, d.stream, rule.step_back_days)  # fmt: skip
            return
        try:
            self.on_step_back(d.stream, rule.step_back_days, rule.name, d.at)
        except Exception:  # the pause stands whatever the ramp's hook does
            log.exception("stop signal %s: stepping the warmup of stream %s back failed", rule.name, d.stream)
