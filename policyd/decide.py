"""The decision: what the daemon answers Postfix for one request.

* RCPT: a recipient in the Yahoo/Verizon-Media family gets ``HOLD`` whatever the
  stream (even mail in no stream); the hold is recorded by ``instance`` so the
  message's END-OF-MESSAGE request never counts it. Everything else: ``DUNNO``.
* END-OF-MESSAGE: the stream is chosen, and the message's ``recipient_count``
  is checked against the rolling hour and day and counted in one atomic step.
  It passes (``DUNNO``) and is counted, or gets ``DEFER_IF_PERMIT 4.7.1`` with
  the stream, the cap and when room frees, and is not counted. A message
  held at RCPT gets ``DUNNO`` (the hold stands) and is not counted.
* END-OF-MESSAGE of a paused stream (pause_board.py), or of a message with a
  recipient at a receiving operator paused for its stream: ``HOLD`` naming
  the pause, recorded for the releaser (which lets it go through the caps once
  the pause ends), not counted. A message with several recipients is held
  whole when any one of them is paused (Postfix holds messages, not
  recipients); the operators of its recipients come from the RCPT requests.
* Any other state: ``DUNNO``. A state outside ``expected_states`` is warned
  about (log and metric): a hook in the wrong restriction list is a silent
  failure otherwise.

Decisions are logged, not traffic: a hold or a deferral at INFO, a pass at
DEBUG, and every few minutes one INFO summary line per busy stream
(summary.py).

Every function takes ``now`` (epoch seconds) so tests drive the clock.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from prometheus_client import Counter

from sendguard import logs
from sendguard.streams import MATCH_ATTRIBUTES, Stream, match_stream
from sendguard_policyd import metrics
from sendguard_policyd.family import FamilyMatcher
from sendguard_policyd.family_mx import RULE as MX_RULE
from sendguard_policyd.family_mx import MxFamily
from sendguard_policyd.operators import Operators
from sendguard_policyd.pause_board import PauseBoard, StreamPauses
from sendguard_policyd.recipient_operators import RecipientOperators
from sendguard_policyd.settings import PROTOCOL_STATES, PolicydSettings
from sendguard_policyd.store import (
    ALREADY_COUNTED,
    ALREADY_HELD,
    COUNTED,
    HOLD_OVER_CAP,
    HOLD_PAUSE,
    OVER_DAILY,
    OVER_HOURLY,
    STATE_COUNTED,
    STATE_FAMILY_HOLD,
    STATE_HELD,
    STATE_RELEASING,
    TOO_LARGE,
    UNKNOWN_OPERATOR,
    CounterStore,
    StoreBusy,
    StoreError,
)
from sendguard_policyd.summary import Summary
from sendguard_policyd.warmup import Caps, cap_text, make_warmups

log = logs.get("policyd")


NO_STREAM = "none"  # the stream label of mail that matches no stream
#: An unexpected protocol state is logged at most once per this many seconds per state.
UNEXPECTED_LOG_INTERVAL = 600.0
#: Messages whose recipient domains are remembered between RCPT and END-OF-MESSAGE (cleared when full).
RCPT_DOMAINS_SIZE = 10000
#: Characters of a pause's reason quoted in a HOLD answer (Postfix logs the answer whole).
PAUSE_REASON_CHARS = 160
#: Distinct attribute combinations whose stream is remembered (cleared when full).
STREAM_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Decision:
    """One answer: the action text for Postfix and what to count and log about it."""

    action: str
    #: The ``action`` metric label: dunno, hold, defer_if_permit.
    label: str
    stream: str = NO_STREAM


DUNNO = "DUNNO"


@functools.lru_cache(maxsize=256)
def _dunno(stream: str = NO_STREAM) -> Decision:
    # Most answers are this one; a Decision is immutable, so each stream's is made once.
    return Decision(DUNNO, "dunno", stream)


class Decider:
    """Decides requests for one configuration against one counter store."""

    def __init__(
        self,
        settings: PolicydSettings,
        streams: Sequence[Stream],
        store: CounterStore,
        family: FamilyMatcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        mx: MxFamily | None = None,
        operators: Operators | None = None,
        pauses: PauseBoard | None = None,
    ) -> None:
        """``operators``: the receiving operators (default: the built-in ones); ``pauses``: the pauses
        in force (default: a board over ``store``, refreshed only when told: service.py starts it)."""
        self.settings = settings
        self.streams = streams
        self.store = store
        self.family = family if family is not None else FamilyMatcher.with_extra(settings.family_extra_domains)
        # The effective warmup day comes from each stream's ramp history, handed over by the
        # service's refresher thread (ramp_refresh.py): the decision itself never reads it.
        self.warmups = make_warmups(streams, settings, log_changes=True)
        if mx is None and settings.family_mx_check:
            mx = MxFamily(settings.family_mx_nameservers)
        self.mx = mx
        self.operators = operators if operators is not None else Operators()
        self.recipient_operators = RecipientOperators(self.operators, mx)
        self.pauses = (
            pauses if pauses is not None else PauseBoard(store, [s.name for s in streams], self.operators.names)
        )
        # The recipient domains of each message as its RCPT requests named them, for END-OF-MESSAGE
        # (which names a recipient only when there is one): its family check by MX, its operators.
        self._rcpt_domains: dict[str, set[str]] = {}
        self.expected = frozenset(settings.expected_states)
        self._clock = clock
        self._unexpected_logged: dict[str, float] = {}
        self._stream_cache: dict[tuple[str, ...], Stream | None] = {}
        # Labelled metric children, looked up once: .labels() costs more than the increment.
        self._decision_counters: dict[tuple[str, str], Counter] = {}
        self._counted_counters: dict[str, Counter] = {}
        self._family_holds = metrics.HOLDS.labels("family")
        self._unexpected_since: dict[str, int] = {}
        self.summary = Summary(store.windows, self._caps_of)
        # Over-cap holds answered while the store could not record them: recorded once it can,
        # so the releaser still finds them (until then Postfix keeps them held; nothing leaves).
        self._unrecorded_holds: list[tuple[str, str, int, float, str, str, tuple[str, ...]]] = []
        self._over_cap_holds = metrics.HOLDS.labels("over_cap")
        self._pause_holds = metrics.HOLDS.labels("pause")

    def decide(self, attrs: Mapping[str, str], now: float) -> Decision:
        """The answer to one parsed request at ``now`` (counted in the decisions metric).

        Raises :class:`StoreBusy` when a write would wait for another writer (the event loop's
        thread never waits): nothing was written, and deciding the request again later is safe."""
        self.summary.tick(now)  # before this request: the summary covers the interval that ended
        state = attrs["protocol_state"]
        if state not in self.expected:
            self._warn_unexpected(state, attrs)
        stream = self._stream_of(attrs)
        if state == "RCPT":
            decision = self._rcpt(attrs, now, stream)
        elif state == "END-OF-MESSAGE":
            decision = self._end_of_message(attrs, now, stream)
            # Forgotten only once decided: a decision parked on a busy store (StoreBusy) runs again.
            if self._rcpt_domains:
                self._rcpt_domains.pop(attrs.get("instance", ""), None)
        else:
            decision = _dunno(stream.name if stream else NO_STREAM)
        key = (decision.stream, decision.label)
        counter = self._decision_counters.get(key)
        if counter is None:
            counter = self._decision_counters[key] = metrics.DECISIONS.labels(*key)
        counter.inc()
        if decision.label == "defer_if_permit":
            self.summary.deferred(decision.stream, now)
        return decision

    def tick(self, now: float) -> None:
        """Periodic work between requests (the event loop calls about once a second): the summary
        line, and recording holds that the store could not take when they were answered."""
        self.summary.tick(now)
        if self._unrecorded_holds:
            self._record_unrecorded()

    def _record_unrecorded(self) -> None:
        while self._unrecorded_holds:
            instance, stream, count, at, queue_id, reason, operators = self._unrecorded_holds[0]
            try:
                self.store.record_hold(instance, stream, count, at, queue_id, reason, operators)
            except (StoreError, StoreBusy):
                return  # still down, or another writer holds the store: the next tick tries again
            self._unrecorded_holds.pop(0)
            log.info("%s: hold recorded now that the counter store answers again (stream %s)", queue_id, stream)

    def _caps_of(self, stream: str, now: float) -> Caps | None:
        warmup = self.warmups.get(stream)
        return warmup.caps(now, self._clock()) if warmup is not None else None

    def _counted_metric(self, stream: str) -> Counter:
        counter = self._counted_counters.get(stream)
        if counter is None:
            counter = self._counted_counters[stream] = metrics.COUNTED_RECIPIENTS.labels(stream)
        return counter

    def _stream_of(self, attrs: Mapping[str, str]) -> Stream | None:
        """The request's stream; memoised on the attributes rules can read (they repeat all day)."""
        key = tuple(map(attrs.get, MATCH_ATTRIBUTES))  # a missing attribute is None: its own key
        try:
            return self._stream_cache[key]
        except KeyError:
            pass
        if len(self._stream_cache) >= STREAM_CACHE_SIZE:
            self._stream_cache.clear()
        stream = self._stream_cache[key] = match_stream(self.streams, attrs)
        return stream

    def close(self) -> None:
        """Stop background work (MX lookups, the pauses' refresher)."""
        self.pauses.close()
        if self.mx is not None:
            self.mx.close()

    # -- RCPT: the family hold -------------------------------------------------------------------

    def _rcpt(self, attrs: Mapping[str, str], now: float, stream: Stream | None) -> Decision:
        name = stream.name if stream else NO_STREAM
        recipient = attrs.get("recipient", "")
        rule = self.family.rule_for(recipient) if recipient else None
        if rule is None and "@" in recipient:
            domain = recipient.rpartition("@")[2].lower()
            if self.mx is not None and self.mx.status(domain):
                rule = MX_RULE
            elif attrs.get("instance"):
                if len(self._rcpt_domains) >= RCPT_DOMAINS_SIZE:
                    self._rcpt_domains.clear()
                self._rcpt_domains.setdefault(attrs["instance"], set()).add(domain)
        if rule is None:
            return _dunno(name)
        return self._family_hold(attrs, now, recipient, rule, name)

    def _family_at_eom(self, attrs: Mapping[str, str]) -> tuple[str, str] | None:
        """(recipient, rule) when the message is for the family as END-OF-MESSAGE sees it.

        Postfix names the recipient here only when the message has exactly one; with more, the
        RCPT hook has held it already and the store knows. The MX check also looks at every
        domain whose lookup had not finished at RCPT.
        """
        recipient = attrs.get("recipient", "")
        rule = self.family.rule_for(recipient) if recipient else None
        if rule is not None:
            return recipient, rule
        if self.mx is None:
            return None
        domains = self._domains_of(attrs)
        for domain in sorted(domains):
            known = self.mx.status(domain)
            if known:
                return (recipient if recipient.endswith("@" + domain) else f"*@{domain}"), MX_RULE
            if known is None:
                log.info("%s: MX lookup of %s not finished at END-OF-MESSAGE: not held as yahoo family",
                         _qid(attrs), domain)  # fmt: skip
        return None

    def _domains_of(self, attrs: Mapping[str, str]) -> set[str]:
        """The message's recipient domains: END-OF-MESSAGE's recipient, and those its RCPT requests named."""
        domains = set(self._rcpt_domains.get(attrs.get("instance", ""), ()))
        recipient = attrs.get("recipient", "")
        if "@" in recipient:
            domains.add(recipient.rpartition("@")[2].lower())
        return domains

    def _operators_of(self, attrs: Mapping[str, str]) -> tuple[str, ...]:
        """The receiving operators of the message's recipients ((UNKNOWN_OPERATOR,): none is known)."""
        return self.recipient_operators.of_all(self._domains_of(attrs))

    def _family_hold(self, attrs: Mapping[str, str], now: float, recipient: str, rule: str, stream: str) -> Decision:
        qid = _qid(attrs)
        try:
            first = self.store.mark_family_hold(attrs.get("instance", ""), stream, now, attrs.get("queue_id", ""), rule)
        except StoreError as exc:
            # The HOLD itself does not need the store; only END-OF-MESSAGE's "not counted" does,
            # and a message not found held there is counted: over-counting is the safe side.
            metrics.STORE_ERRORS.inc()
            log.error("%s: cannot record family hold (%s); holding anyway", qid, exc)
            first = True
        if first:  # the holds metric counts messages, not the HOLD answers to each family recipient
            self._family_holds.inc()
            self.summary.held(stream, now)
        domain = recipient.rpartition("@")[2]
        log.info("%s: hold: recipient %s: yahoo family rule %s (stream %s)", qid, recipient, rule, stream)
        return Decision(
            f"HOLD sendguard: recipient domain {domain} is in the Yahoo/Verizon-Media family (rule {rule});"
            " held, never sent",
            "hold",
            stream,
        )

    # -- END-OF-MESSAGE: the caps ------------------------------------------------------------------

    def _end_of_message(self, attrs: Mapping[str, str], now: float, stream: Stream | None) -> Decision:
        qid = _qid(attrs)
        name = stream.name if stream else NO_STREAM
        family = self._family_at_eom(attrs)
        if family is None and stream is not None:
            paused = self.pauses.of(name, now)
            if paused is not None:
                held = self._paused(attrs, now, name, paused)
                if held is not None:
                    return held
            counted = self._count(attrs, now, stream, qid)
            if counted is not None:
                return counted
            held_before = True  # the check-and-add found the message held at RCPT
        elif family is None and self.settings.unmatched == "dunno":
            log.debug("%s: pass: no stream matches, not capped", qid)
            return _dunno()
        else:
            # A family recipient, or mail in no stream to defer: whether RCPT held it decides.
            held_before = self._state_of(attrs) == STATE_FAMILY_HOLD
        if held_before:
            # Postfix applied the HOLD at RCPT already; DUNNO here does not undo it (a deferral
            # would), and nothing is counted. INFO: a hold is a decision, and this is the one line
            # that ties it to the queue id (RCPT has none yet).
            log.info("%s: pass: stream %s: held for the yahoo family at RCPT, not counted", qid, name)
            return _dunno(name)
        if family is not None:
            return self._family_hold(attrs, now, family[0], family[1], name)  # no RCPT hook: hold now
        log.info("%s: defer: no stream matches (client %s, sender %s, port %s) and unmatched = defer",
                 qid, attrs.get("client_address", ""), attrs.get("sender", ""), attrs.get("server_port", ""))  # fmt: skip
        return Decision(
            "DEFER_IF_PERMIT 4.7.1 sendguard: this mail matches no sending stream; not accepted", "defer_if_permit"
        )

    def _count(self, attrs: Mapping[str, str], now: float, stream: Stream, qid: str) -> Decision | None:
        """Check the caps and count the message; None when the store found it held at RCPT."""
        name = stream.name
        count = _recipient_count(attrs, qid)
        caps = self.warmups[name].caps(now, self._clock())
        instance = attrs.get("instance", "")
        policy = self.settings.policy_for(name)
        try:
            adm = self.store.admit(name, instance, count, now, caps.hourly, caps.daily, attrs.get("queue_id", ""))
        except StoreError as exc:
            metrics.STORE_ERRORS.inc()
            return self._store_failed(attrs, now, name, count, policy.over_cap, policy.on_store_error, exc)
        hour_cap = cap_text(caps.hourly)
        day_cap = cap_text(caps.daily)
        if adm.outcome == COUNTED:
            self._counted_metric(name).inc(count)
            self.summary.counted(name, count, now)
            log.debug(
                "%s: pass: stream %s: %d recipient(s) counted, hour %d/%s, day %d/%s, warmup day %s",
                qid, name, count, adm.hour_count, hour_cap, adm.day_count, day_cap, caps.warmup_day,
            )  # fmt: skip
            return _dunno(name)
        if adm.outcome == ALREADY_COUNTED:
            log.debug("%s: pass: stream %s: instance %s was counted before (Postfix retry), not counted again",
                      qid, name, instance)  # fmt: skip
            return _dunno(name)
        if adm.outcome == ALREADY_HELD:
            if self._state_of(attrs) in (STATE_HELD, STATE_RELEASING):
                # Postfix asks again (its first answer was lost): the message must stay held.
                return self._hold_answer(name, "it was held before and waits for release")
            return None
        if adm.outcome == TOO_LARGE:
            cap = caps.hourly if caps.hourly is not None and count > caps.hourly else caps.daily
            text = (
                f"4.7.1 sendguard: stream {name}: message has {count} recipients, more than the cap of {cap};"
                " it can never pass whole, send it in smaller parts"
            )
            log.warning("%s: defer: stream %s: %d recipients exceed the cap of %s", qid, name, count, cap)
            return Decision("DEFER_IF_PERMIT " + text, "defer_if_permit", name)
        if adm.outcome == OVER_HOURLY:
            what = f"hourly cap of {hour_cap} recipients per rolling 60 minutes (warmup day {caps.warmup_day})"
            used = adm.hour_count
        else:
            assert adm.outcome == OVER_DAILY, adm.outcome
            what = f"daily cap of {day_cap} recipients per rolling 24 hours"
            used = adm.day_count
        when = _fmt_room(adm.room_at, now)
        if policy.over_cap == "hold":
            return self._over_cap_hold(attrs, now, name, count, f"{used} used of the {what}; {when}", what)
        log.info("%s: defer: stream %s: %d used of the %s; %d more would exceed it; %s",
                 qid, name, used, what, count, when)  # fmt: skip
        return Decision(
            f"DEFER_IF_PERMIT 4.7.1 sendguard: stream {name} is at its {what}; {when}, try again later",
            "defer_if_permit",
            name,
        )

    def _over_cap_hold(
        self, attrs: Mapping[str, str], now: float, name: str, count: int, detail: str, what: str
    ) -> Decision:
        """Hold a message over its stream's cap: Postfix keeps it, the releaser lets it go later."""
        qid = _qid(attrs)
        self._remember_hold(attrs, now, name, count)
        self._over_cap_holds.inc()
        self.summary.held(name, now)
        log.info("%s: hold: stream %s: %s; %d recipient(s) held for release", qid, name, detail, count)
        return self._hold_answer(name, f"it is at its {what}")

    def _hold_entry(
        self, attrs: Mapping[str, str], now: float, name: str, count: int, reason: str
    ) -> tuple[str, str, int, float, str, str, tuple[str, ...]]:
        """What the store records of a held message (record_hold's arguments)."""
        return (attrs.get("instance", ""), name, count, now, attrs.get("queue_id", ""), reason, self._operators_of(attrs))

    def _remember_hold(
        self, attrs: Mapping[str, str], now: float, name: str, count: int, reason: str = HOLD_OVER_CAP
    ) -> bool:
        """Record a hold for the releaser; False when the message was recorded before (in any state).

        A store failure is logged and the hold recorded once the store answers (True: held anyway)."""
        entry = self._hold_entry(attrs, now, name, count, reason)
        try:
            return self.store.record_hold(*entry)
        except StoreError as exc:
            metrics.STORE_ERRORS.inc()
            log.error("%s: cannot record the hold (%s); held anyway, recorded once the store answers",
                      _qid(attrs), exc)  # fmt: skip
            self._unrecorded_holds.append(entry)
            return True

    # -- END-OF-MESSAGE: pauses ------------------------------------------------------------------

    def _paused(self, attrs: Mapping[str, str], now: float, name: str, paused: StreamPauses) -> Decision | None:
        """HOLD for a message the stream's pauses cover; None when they do not (it goes on to the caps)."""
        pause, what = paused.whole, f"stream {name} is paused"
        if pause is None:
            operators = self._operators_of(attrs)
            hit = next((op for op in operators if op in paused.operators), None)
            if hit is not None:
                pause, what = paused.operators[hit], f"stream {name}'s mail to {hit} is paused"
            elif UNKNOWN_OPERATOR in operators:
                # It may be for the paused operator: held, and released once no operator of its stream is paused.
                first = sorted(paused.operators)[0]
                pause = paused.operators[first]
                what = f"stream {name}'s mail to {first} is paused and a recipient's operator is not known yet"
            else:
                return None
        qid = _qid(attrs)
        count = _recipient_count(attrs, qid)
        if not self._remember_hold(attrs, now, name, count, HOLD_PAUSE):
            state = self._state_of(attrs)
            if state in (STATE_COUNTED, STATE_FAMILY_HOLD):
                # Counted before the pause began (Postfix asks again), or held for the family at RCPT:
                # it stands as it was decided. Held before (or unreadable now): it stays held.
                log.info("%s: pass: stream %s: %s before the pause, not held again", qid, name,
                         "counted" if state == STATE_COUNTED else "held for the yahoo family")  # fmt: skip
                return _dunno(name)
        else:
            self._pause_holds.inc()
            self.summary.held(name, now)
        until = "until resumed" if pause.until is None else f"until {_fmt_stamp(int(pause.until))}"
        log.info("%s: hold: %s (rule %s, %s): %s; %d recipient(s) held for release", qid, what, pause.rule, until,
                 pause.reason, count)  # fmt: skip
        return Decision(
            f"HOLD sendguard: {what} (rule {pause.rule}, {until}): {_answer_text(pause.reason)};"
            " held, released when the pause ends",
            "hold",
            name,
        )

    @staticmethod
    def _hold_answer(name: str, why: str) -> Decision:
        return Decision(
            f"HOLD sendguard: stream {name}: {why}; held, released as the stream's window frees", "hold", name
        )

    def _store_failed(
        self, attrs: Mapping[str, str], now: float, name: str, count: int, over_cap: str, on_error: str,
        exc: StoreError,
    ) -> Decision:
        """The store could not count the message: ``on_store_error`` decides (never an unknown count past a cap)."""
        qid = _qid(attrs)
        if on_error == "open":
            log.error("%s: pass uncounted: stream %s: counter store failed (%s) and on_store_error = open",
                      qid, name, exc)  # fmt: skip
            return _dunno(name)
        if over_cap == "hold":
            log.error("%s: hold: stream %s: counter store failed (%s); held until it can be counted", qid, name, exc)
            self._unrecorded_holds.append(self._hold_entry(attrs, now, name, count, HOLD_OVER_CAP))
            self._over_cap_holds.inc()
            return self._hold_answer(name, "the counter store is unavailable")
        log.error("%s: defer: stream %s: counter store failed: %s", qid, name, exc)
        return Decision(
            "DEFER_IF_PERMIT 4.3.0 sendguard: counter store unavailable, try again later", "defer_if_permit", name
        )

    def _state_of(self, attrs: Mapping[str, str]) -> str | None:
        try:
            return self.store.message_state(attrs.get("instance", ""))
        except StoreError as exc:
            metrics.STORE_ERRORS.inc()
            log.error("%s: cannot read the message's record: %s", _qid(attrs), exc)
            return None

    # -- the wrong-hook warning -----------------------------------------------------------------

    def _warn_unexpected(self, state: str, attrs: Mapping[str, str]) -> None:
        label = state if state in PROTOCOL_STATES else "other"
        metrics.UNEXPECTED_STATES.labels(label).inc()
        seen = self._unexpected_since.get(label, 0) + 1
        self._unexpected_since[label] = seen
        clock = self._clock()
        last = self._unexpected_logged.get(label)
        if last is None or clock - last >= UNEXPECTED_LOG_INTERVAL:
            self._unexpected_logged[label] = clock
            self._unexpected_since[label] = 0
            log.warning(
                "%s: request at protocol_state %s, which expected_states (%s) does not list:"
                " check_policy_service is hooked into an unexpected restriction list; answering DUNNO"
                " (%d such requests since the last warning)",
                _qid(attrs), state[:40], ", ".join(sorted(self.expected)), seen,
            )  # fmt: skip


def _qid(attrs: Mapping[str, str]) -> str:
    return attrs.get("queue_id") or "NOQUEUE"


def _answer_text(text: str) -> str:
    """A pause's reason as a HOLD answer quotes it: one line, not too long."""
    flat = " ".join(text.split())
    return flat if len(flat) <= PAUSE_REASON_CHARS else flat[: PAUSE_REASON_CHARS - 3] + "..."


def _recipient_count(attrs: Mapping[str, str], qid: str) -> int:
    raw = attrs.get("recipient_count", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    # Postfix always sends a positive count at END-OF-MESSAGE; a missing or zero one is counted as
    # one recipient, so a broken client can never send uncounted.
    log.warning("%s: END-OF-MESSAGE with recipient_count=%r; counting 1 recipient", qid, raw[:20])
    return 1


def _fmt_room(room_at: float | None, now: float) -> str:
    if room_at is None:
        return "no room frees under the current warmup step"
    minutes = max(0, int((room_at - now + 59) // 60))
    return f"room frees at {_fmt_stamp(int(room_at))} (in {minutes} min)"


_stamp_cache: dict[int, str] = {}


def _fmt_stamp(second: int) -> str:
    # Deferrals during a push name the same few seconds over and over: format each once.
    stamp = _stamp_cache.get(second)
    if stamp is None:
        if len(_stamp_cache) >= 1024:
            _stamp_cache.clear()
        when = dt.datetime.fromtimestamp(second, dt.timezone.utc)
        stamp = _stamp_cache[second] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return stamp
