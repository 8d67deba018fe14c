"""The counter store: what the decision and ``sendguard status`` need of it, whatever keeps the counts.

The store owns the rolling windows and the per-message record. Its one write
that matters, :meth:`CounterStore.admit`, is a single atomic step: look the
message up by its ``instance`` (a retry of an already answered request must
not count twice), read the stream's last 60 minutes and last 24 hours, and add
the message only if both stay within their caps. Two daemons sharing a store
can therefore never push a window over its cap together.

This module is the interface only: ``decide.py`` and ``status.py`` import
nothing else of the store. The SQLite implementation lives beside it
(``sqlite.py`` and its ``sqlite_*.py`` parts), and the Redis one (``redis.py``
and its ``redis_*.py`` parts); ``policyd/backend.py`` is the one place that
picks one, for the daemon and for ``sendguard status``.

Message records carry a ``state``. ``counted`` and ``family_hold`` are final.
An over-cap message of a stream with ``over_cap = "hold"`` is recorded
``held`` (not counted) and Postfix keeps it in its hold queue; the releaser
then, per stream in arrival order, *claims* it (``held`` → ``releasing``, its
recipients counted in the same atomic step as any admission) before it runs
``postsuper -H``, and *finishes* it (``released``) once Postfix has let it go.
A crash between the two leaves it ``releasing``: counted, still held, and the
next pass releases it without counting it again. A held message that left the
hold queue by other hands (deleted, released by an operator) is finished
``gone`` and never counted.

A held message's record also says why it was held (:data:`HOLD_OVER_CAP`, or
:data:`HOLD_PAUSE` while its stream or receiving operator was paused) and the
receiving operators of its recipients as the decision knew them: the releaser
lets nothing go to an operator that is paused.

A :class:`Pause` stops a stream's new mail (or only the mail to one receiving
operator) until it ends: set by a stop-signal rule (``stop_signals.py``) or by
hand (``sendguard pause``). At most one pause is in force per stream and
operator; pauses that ended are kept a while as history.

The windows are an hour and a day; :class:`Windows` can shorten them for the
container suite only (``[policyd] test_window_seconds``).

The store also keeps each stream's ramp history, what the warmup day follows
in ``warmup_days = "sending"`` mode and after a stop signal (warmup.py,
effective_day.py): how many deliveries were sent on each ramp day, which
days the stream was paused, and the step-backs. Nothing there expires: a
warmup lasts weeks, and a day is one small row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Protocol

#: Seconds in the rolling windows (and the one "day" of the policy daemon: warmup days, status).
HOUR = 3600
DAY = 86400

# Outcomes of admit().
COUNTED = "counted"  # the message fits; its recipients are now in both windows
ALREADY_COUNTED = "already_counted"  # a retry of a message counted before: pass, count nothing
ALREADY_HELD = "already_held"  # the message was held (family) at RCPT: never counted
OVER_HOURLY = "over_hourly"  # the rolling hour would exceed the hourly cap
OVER_DAILY = "over_daily"  # the rolling day would exceed the daily cap
TOO_LARGE = "too_large"  # more recipients than the cap itself: it can never fit

# Message states.
STATE_COUNTED = "counted"
STATE_FAMILY_HOLD = "family_hold"
STATE_HELD = "held"  # over its stream's cap, in Postfix's hold queue, not counted
STATE_RELEASING = "releasing"  # counted by a release claim; Postfix has not confirmed the release yet
STATE_RELEASED = "released"  # counted and let go by ``postsuper -H``
STATE_GONE = "gone"  # left the hold queue by other hands: never counted

# Outcomes of claim_release() besides COUNTED, ALREADY_COUNTED, OVER_*, TOO_LARGE.
NOT_HELD = "not_held"  # no held or releasing record under that queue id (finished, or never ours)

# Why a message was held (its record's reason).
HOLD_OVER_CAP = "over_cap"  # over its stream's cap
HOLD_PAUSE = "pause"  # its stream, or the receiving operator of a recipient, was paused

#: A recipient whose receiving operator was not known when its message was held (an MX lookup
#: not finished or failed): the releaser treats it as any operator.
UNKNOWN_OPERATOR = "?"
#: The rule of a pause set by hand (``sendguard pause``).
MANUAL = "manual"
#: Pauses that ended are kept this long (seconds) as history (``pause_history``).
PAUSE_HISTORY = 90 * DAY


@dataclass(frozen=True)
class Windows:
    """The rolling windows' lengths in seconds: an hour and a day, except in the container suite."""

    hour: int = HOUR
    day: int = DAY

    @classmethod
    def scaled(cls, hour: int) -> Windows:
        """Windows of ``hour`` seconds and 24 times that (``test_window_seconds``)."""
        return cls(hour=hour, day=24 * hour)


class StoreError(Exception):
    """The store cannot be opened, read or written (disk full, locked too long, corrupt or foreign file)."""


class StoreBusy(Exception):
    """A write from the event loop's thread would have to wait for another writer.

    Not a :class:`StoreError`: nothing failed and nothing was written. The loop parks the
    request, has the store wait off the loop (:meth:`CounterStore.wait_off_loop`) and decides
    the request again once the store can be written, or answers it as a store failure when
    the wait runs out.
    """


@dataclass(frozen=True)
class Admission:
    """The answer of :meth:`CounterStore.admit`."""

    outcome: str
    #: Recipients in the stream's last 60 minutes / 24 hours, after this message if it was counted.
    hour_count: int
    day_count: int
    #: When enough room frees for this message (epoch seconds), for over-cap outcomes.
    room_at: float | None = None

    @property
    def passes(self) -> bool:
        """Whether the message may go on (counted now or before)."""
        return self.outcome in (COUNTED, ALREADY_COUNTED)


@dataclass(frozen=True)
class WindowCounts:
    """A stream's rolling counts at one instant."""

    hour: int
    day: int


@dataclass(frozen=True)
class HeldMessage:
    """One held message waiting in Postfix's hold queue for its stream's room (or for a pause to end)."""

    queue_id: str
    instance: str
    stream: str
    recipients: int
    #: When it was held (epoch seconds): release order within a stream.
    at: float
    #: STATE_HELD, or STATE_RELEASING after a claim that Postfix has not confirmed.
    state: str
    #: HOLD_OVER_CAP or HOLD_PAUSE.
    reason: str = HOLD_OVER_CAP
    #: The receiving operators of its recipients when it was held; UNKNOWN_OPERATOR among them, or
    #: none at all (a record from before operators were recorded): not known, so any operator.
    operators: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pause:
    """A stream's new mail (or its mail to one receiving operator) held until the pause ends."""

    stream: str
    #: The receiving operator whose mail is paused; "" for the whole stream.
    operator: str
    #: When it began (epoch seconds).
    since: float
    #: When it ends (epoch seconds); None: until resumed by hand.
    until: float | None
    #: Why, in words (the signal: what the receiver answered, how often); shown in HOLD answers.
    reason: str
    #: The stop-signal rule that set it, or MANUAL.
    rule: str

    def active(self, now: float) -> bool:
        """Whether the pause is in force at ``now`` (it has not ended: a start a moment ahead, on
        another host's clock, counts as begun)."""
        return self.until is None or now < self.until

    def outlasts(self, other: Pause) -> bool:
        """Whether this pause ends no earlier than ``other``."""
        return self.until is None or (other.until is not None and self.until >= other.until)


def operators_text(operators: tuple[str, ...]) -> str:
    """How a store keeps a held message's operators: sorted, comma-separated."""
    return ",".join(sorted(set(operators)))


def operators_of_text(text: str | None) -> tuple[str, ...]:
    """The operators kept as :func:`operators_text` (none: not recorded)."""
    return tuple(text.split(",")) if text else ()


def merge_pause(current: Pause | None, new: Pause) -> Pause | None:
    """What :meth:`CounterStore.pause` puts in force: ``new``, or ``current`` (in force, same stream
    and operator) changed by it; None when ``current`` stays as it is.

    A rule never shortens a pause in force (a second signal extends it, a shorter one is a no-op);
    by hand (MANUAL) it may. Either way the pause keeps the start it had: it has not stopped.
    """
    if current is None:
        return new
    if new.rule != MANUAL and not new.outlasts(current):
        return None
    return Pause(current.stream, current.operator, current.since, new.until, new.reason, new.rule)


@dataclass(frozen=True)
class Backlog:
    """A stream's held backlog at one instant."""

    messages: int
    recipients: int
    #: When the oldest waiting message was held (None: nothing waits).
    oldest_at: float | None
    #: How many of the messages were held because their stream or operator was paused.
    paused: int = 0


@dataclass(frozen=True)
class StepBack:
    """One step-back of a stream's warmup, as recorded (a stop signal's rule, or ``manual``)."""

    #: When it was recorded (epoch seconds).
    at: float
    #: Warmup days to go back (at least 1).
    days: int
    rule: str


@dataclass(frozen=True)
class RampHistory:
    """What a stream's effective warmup day is computed from, as the store keeps it.

    Days are ramp days (``effective_day.ramp_date``): the 24-hour periods the warmup day
    counts, each named by the date it begins on.
    """

    #: Deliveries sent (``status=sent``), per ramp day that had any.
    sent: Mapping[dt.date, int] = field(default_factory=dict)
    #: Ramp days during which the whole stream was paused at some moment.
    paused: frozenset[dt.date] = frozenset()
    #: Every step-back recorded, oldest first.
    step_backs: tuple[StepBack, ...] = ()


#: The history of a stream the store knows nothing about.
NO_HISTORY = RampHistory()


class StoreReader(Protocol):
    """What ``sendguard status`` and the metrics scrape read; safe from any thread."""

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The stream's rolling-hour and rolling-day counts at ``now``."""
        ...

    def family_holds(self, since: float) -> dict[str, int]:
        """Messages held for the family since ``since``, per stream (``none``: mail in no stream)."""
        ...

    def held_backlog(self) -> dict[str, Backlog]:
        """Held messages waiting for release (``held`` or ``releasing``), per stream that has any."""
        ...

    def pauses(self, now: float) -> list[Pause]:
        """The pauses in force at ``now``, every stream's (at most one per stream and operator)."""
        ...

    def pause_history(self, since: float) -> list[Pause]:
        """Every pause kept (in force or ended, at most :data:`PAUSE_HISTORY` back) that lasted
        past ``since``, oldest first; a pause resumed by hand ends when it was resumed."""
        ...

    def ramp_history(self, stream: str) -> RampHistory:
        """The stream's sent deliveries per ramp day, its paused days and its step-backs."""
        ...

    def stream_of(self, queue_id: str) -> str | None:
        """The stream of the message Postfix queued as ``queue_id`` on this host, as the daemon counted or
        held it at END-OF-MESSAGE (or marked it for the family); None when the store has no record of it
        (mail in no stream, or a record past the store's retention of about a day)."""
        ...

    def streams_of(self, queue_ids: Collection[str]) -> dict[str, str]:
        """:meth:`stream_of` for many queue ids in one look-up (the watcher asks per batch of log lines):
        the queue ids the store knows, with their streams."""
        ...

    def close(self) -> None:
        """Release the reader's resources."""
        ...


class CounterStore(StoreReader, Protocol):
    """The store interface the decision code uses (the event loop's thread writes)."""

    def admit(
        self,
        stream: str,
        instance: str,
        recipients: int,
        now: float,
        hourly_cap: int | None,
        daily_cap: int | None,
        queue_id: str = "",
    ) -> Admission:
        """Atomically check both windows and count the message if it fits (idempotent per instance)."""
        ...

    def mark_family_hold(self, instance: str, stream: str, now: float, queue_id: str, rule: str) -> bool:
        """Remember that this message was held for the family, so END-OF-MESSAGE never counts it.

        True when the message had no mark before (the first family recipient)."""
        ...

    def message_state(self, instance: str) -> str | None:
        """The recorded state of a message (``counted``, ``family_hold``, ``held`` ...), or None."""
        ...

    def record_hold(
        self,
        instance: str,
        stream: str,
        recipients: int,
        now: float,
        queue_id: str,
        reason: str = HOLD_OVER_CAP,
        operators: tuple[str, ...] = (),
    ) -> bool:
        """Record a message held at END-OF-MESSAGE (nothing counted): over its cap, or paused
        (``reason``), with the receiving operators of its recipients.

        Idempotent per ``instance``: True when this is its first record, False when the
        message was recorded before (in any state; that record stays as it is)."""
        ...

    def pause(self, p: Pause) -> None:
        """Put a pause in force. Over one in force for the same stream and operator, it takes its
        place only when it lasts as long or longer, or when it was set by hand (rule MANUAL); the
        pause then keeps its start. One that ended is kept as history."""
        ...

    def resume(self, stream: str, operator: str, now: float) -> bool:
        """End the pause in force for ``stream`` and ``operator`` ("" = the whole-stream one) at ``now``;
        True when there was one."""
        ...

    def held_messages(self, stream: str) -> list[HeldMessage]:
        """The stream's messages waiting for release, oldest first (``releasing`` ones included)."""
        ...

    def claim_release(
        self, queue_id: str, now: float, hourly_cap: int | None, daily_cap: int | None
    ) -> Admission:
        """Count a held message if it fits now, before Postfix releases it: one atomic step.

        ``held`` and fits: it becomes ``releasing`` and its recipients are in both windows
        (COUNTED). Already ``releasing``: ALREADY_COUNTED, nothing counted again. Does not fit:
        OVER_HOURLY / OVER_DAILY (with ``room_at``) or TOO_LARGE, nothing changes. No held or
        releasing record under ``queue_id``: NOT_HELD."""
        ...

    def never_wait_in_this_thread(self) -> None:
        """Writes from the calling thread (the event loop) never wait for another writer: they
        raise :class:`StoreBusy` instead (a store whose writes never wait for a lock ignores this)."""
        ...

    def wait_off_loop(self, deadline: float, done: Callable[[bool], None]) -> None:
        """On another thread, wait until the store can be written or the monotonic ``deadline``;
        then call ``done(True)`` (the loop's writes may go ahead) or ``done(False)`` (the wait ran out)."""
        ...

    def loop_holds(self, held: bool) -> None:
        """The loop decides its parked requests now: writes go ahead (``held``) or fail at once
        with :class:`StoreError` (the wait ran out), until :meth:`loop_releases`."""
        ...

    def loop_releases(self) -> None:
        """The loop is done deciding its parked requests: other writers may go again."""
        ...

    def finish_release(self, queue_id: str, state: str, now: float) -> None:
        """Close a held message's record: STATE_RELEASED (it left the hold queue through us) or
        STATE_GONE (it left by other hands; if it was ``releasing`` its count stays, as it may
        have been sent)."""
        ...

    def add_sent(self, stream: str, day: dt.date, n: int) -> None:
        """Add ``n`` sent deliveries to the stream's ramp day ``day`` (the sending-day counter's write)."""
        ...

    def mark_paused_day(self, stream: str, day: dt.date) -> bool:
        """Record that the whole stream was paused during ramp day ``day``; True if it was not marked yet."""
        ...

    def step_back(self, stream: str, days: int, rule: str, now: float) -> None:
        """Record a step-back of ``days`` (at least 1) warmup days by ``rule`` at ``now``."""
        ...
