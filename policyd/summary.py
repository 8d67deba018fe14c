"""The periodic per-stream summary line: what the daemon did, logged at INFO every few minutes.

A counted pass is logged at DEBUG only (it is most of the traffic); what an
operator reading the INFO log still needs is how busy each stream is and how
close to its caps, the way Postfix's anvil logs its peaks. So every
:data:`SUMMARY_INTERVAL` seconds each stream that had traffic gets one line::

    summary: stream trucking: 123 recipient(s) in 98 message(s) counted in the last 10 min,
    3 deferred, 1 held; hour 45/300, day 800/4000, warmup day 5

The clock is the ``now`` the decisions are given (tests drive it); the event
loop's once-a-second sweep calls :meth:`Summary.tick` too, so the last
interval before a quiet spell is logged on time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sendguard import logs
from sendguard_policyd.store import StoreError, WindowCounts
from sendguard_policyd.warmup import Caps, cap_text

log = logs.get("policyd")

#: Seconds between two summaries (the anvil-like rate log; Postfix's anvil_rate_time_unit is a minute,
#: its statistics every 10 minutes).
SUMMARY_INTERVAL = 600.0


@dataclass
class _Tally:
    recipients: int = 0
    messages: int = 0
    deferred: int = 0
    held: int = 0


class Summary:
    """Tallies per stream since the last summary, and the line that reports them."""

    def __init__(
        self,
        windows: Callable[[str, float], WindowCounts],
        caps: Callable[[str, float], Caps | None],
        interval: float = SUMMARY_INTERVAL,
    ) -> None:
        """``windows``: a stream's rolling counts at an instant; ``caps``: its caps (None: mail in no stream)."""
        self._windows = windows
        self._caps = caps
        self.interval = interval
        self._tallies: dict[str, _Tally] = {}
        self._since: float | None = None  # the start of the interval being tallied

    def _tally(self, stream: str, now: float) -> _Tally:
        if self._since is None:
            self._since = now
        tally = self._tallies.get(stream)
        if tally is None:
            tally = self._tallies[stream] = _Tally()
        return tally

    def counted(self, stream: str, recipients: int, now: float) -> None:
        """A message of ``recipients`` recipients was counted."""
        tally = self._tally(stream, now)
        tally.recipients += recipients
        tally.messages += 1

    def deferred(self, stream: str, now: float) -> None:
        """A message was deferred (over a cap, too large, the store failed, or in no stream)."""
        self._tally(stream, now).deferred += 1

    def held(self, stream: str, now: float) -> None:
        """A message was held for the family (counted once per message)."""
        self._tally(stream, now).held += 1

    def tick(self, now: float) -> None:
        """Log the summary when the interval has run out (cheap otherwise: one comparison)."""
        since = self._since
        if since is None or now < since + self.interval:
            return
        tallies, self._tallies, self._since = self._tallies, {}, None
        minutes = max(1, round((now - since) / 60))
        for stream in sorted(tallies):
            log.info("summary: %s", self._line(stream, tallies[stream], minutes, now))

    def _line(self, stream: str, tally: _Tally, minutes: int, now: float) -> str:
        text = (
            f"stream {stream}: {tally.recipients} recipient(s) in {tally.messages} message(s) counted"
            f" in the last {minutes} min, {tally.deferred} deferred, {tally.held} held"
        )
        caps = self._caps(stream, now)
        if caps is None:
            return text
        try:
            counts = self._windows(stream, now)
        except StoreError as exc:
            return f"{text}; rolling counts unreadable: {exc}"
        return (
            f"{text}; hour {counts.hour}/{cap_text(caps.hourly)}, day {counts.day}/{cap_text(caps.daily)},"
            f" warmup day {caps.warmup_day if caps.warmup_day is not None else '-'}"
        )
