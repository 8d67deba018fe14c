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

The windows are an hour and a day; :class:`Windows` can shorten them for the
container suite only (``[policyd] test_window_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Protocol

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
    """One over-cap message waiting in Postfix's hold queue for its stream's room."""

    queue_id: str
    instance: str
    stream: str
    recipients: int
    #: When it was held (epoch seconds): release order within a stream.
    at: float
    #: STATE_HELD, or STATE_RELEASING after a claim that Postfix has not confirmed.
    state: str


@dataclass(frozen=True)
class Backlog:
    """A stream's held backlog at one instant."""

    messages: int
    recipients: int
    #: When the oldest waiting message was held (None: nothing waits).
    oldest_at: float | None


class StoreReader(Protocol):
    """What ``sendguard status`` and the metrics scrape read; safe from any thread."""

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The stream's rolling-hour and rolling-day counts at ``now``."""
        ...

    def family_holds(self, since: float) -> dict[str, int]:
        """Messages held for the family since ``since``, per stream (``none``: mail in no stream)."""
        ...

    def held_backlog(self) -> dict[str, Backlog]:
        """Over-cap messages waiting for release (``held`` or ``releasing``), per stream that has any."""
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

    def record_hold(self, instance: str, stream: str, recipients: int, now: float, queue_id: str) -> bool:
        """Record an over-cap message held at END-OF-MESSAGE (nothing counted).

        Idempotent per ``instance``: True when this is its first record, False when the
        message was recorded before (in any state; that record stays as it is)."""
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
