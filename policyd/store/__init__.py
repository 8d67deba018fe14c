"""The counter store: what the decision and ``sendguard status`` need of it, whatever keeps the counts.

The store owns the rolling windows and the per-message record. Its one write
that matters, :meth:`CounterStore.admit`, is a single atomic step: look the
message up by its ``instance`` (a retry of an already answered request must
not count twice), read the stream's last 60 minutes and last 24 hours, and add
the message only if both stay within their caps. Two daemons sharing a store
can therefore never push a window over its cap together.

This module is the interface only: ``decide.py`` and ``status.py`` import
nothing else of the store. The SQLite implementation lives beside it
(``sqlite.py`` and its ``sqlite_*.py`` parts); ``policyd/backend.py`` is the
one place that picks it, for the daemon and for ``sendguard status``.

Message records carry a ``state``: ``counted`` and ``family_hold`` are the
states there are. Over-cap holds (and their backlog) arrive with
hold-and-release, as another state and another outcome here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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


class StoreError(Exception):
    """The store cannot be opened, read or written (disk full, locked too long, corrupt or foreign file)."""


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


class StoreReader(Protocol):
    """What ``sendguard status`` and the metrics scrape read; safe from any thread."""

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The stream's rolling-hour and rolling-day counts at ``now``."""
        ...

    def family_holds(self, since: float) -> dict[str, int]:
        """Messages held for the family since ``since``, per stream (``none``: mail in no stream)."""
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
        """The recorded state of a message (``counted``, ``family_hold``), or None."""
        ...
