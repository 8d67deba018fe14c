"""What a counter store must do, whatever keeps the counts (SQLite now; Redis fits the same shape).

The store owns the rolling windows and the per-message record. Its one write
that matters, :meth:`CounterStore.admit`, is a single atomic step: look the
message up by its ``instance`` (a retry of an already answered request must
not count twice), sum the stream's last 60 minutes and last 24 hours, and add
the message only if both stay within their caps. Two daemons sharing a store
can therefore never push a window over its cap together.

Message records carry a ``state`` so that the next issue's hold-and-release
fits without a new table: ``counted`` and ``family_hold`` exist today; an
over-cap ``held`` message (queue id recorded) would be released later by a
``claim`` that is another :meth:`admit` of the same instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: Seconds in the rolling windows.
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
STATE_HELD = "held"  # reserved for over-cap holds (next issue)


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


class CounterStore(Protocol):
    """The store interface the decision code uses."""

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
        """The recorded state of a message (``counted``, ``family_hold`` ...), or None."""
        ...

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The stream's rolling-hour and rolling-day counts at ``now``."""
        ...

    def held_backlog(self) -> dict[str, int]:
        """Over-cap messages held and not yet released, per stream."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...
