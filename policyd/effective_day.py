"""The effective warmup day: the calendar day, or the sending days, less the step-backs.

A stream's warmup runs in *ramp days*: 24-hour periods from its start stamp
(day 0 is the first 86,400 s after it, as the calendar warmup day has always
counted). Each ramp day is named by the UTC date it begins on, so the store
can keep a day's counts under a date whatever the stamp's time of day; a
stamp at 00:00 UTC (``start_date``) makes ramp days the UTC dates.

* ``warmup_days = "calendar"`` (the default): every ramp day that has ended
  advances the warmup, weekends included (brief, incident 3).
* ``warmup_days = "sending"``: a ramp day that has ended advances it only if
  the stream delivered at least ``sending_day_minimum`` messages that day
  (``status=sent`` in Postfix's log) and was not paused at any moment of it.
  A stalled schedule then stalls the ramp, instead of an operator realigning
  the stamp by hand.

In either mode a step-back (a stop signal's ``step_back_days``) lowers the day
by that many days, never below 0. A step-back counts from the ramp's *top*,
the day its last cap begins: a stream on day 30 of a ramp that tops out on day
7 goes back to day 6 for one day back, not to day 29, whose cap is the same.
The ramp then climbs again from there. Only one step-back per rule per ramp
day counts: a rule that fires again the same day (its threshold crossed once
more while the stream is paused anyway) records it, and is not applied twice.

The day never exceeds the calendar day and never falls with more deliveries:
``tests/policyd/test_policyd_effective_day.py`` checks both over generated histories.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

from sendguard_policyd.store import DAY, NO_HISTORY, RampHistory

CALENDAR = "calendar"
SENDING = "sending"
#: The values of ``warmup_days``.
MODES = (CALENDAR, SENDING)

_EPOCH = dt.date(1970, 1, 1)

#: Seconds a step-back may be stamped ahead of ``now`` and still count now (hosts' clocks differ).
CLOCK_TOLERANCE = 300.0


@dataclass(frozen=True)
class AppliedStepBack:
    """A step-back as it moved the day."""

    at: float
    rule: str
    #: The days the rule asked for.
    days: int
    #: The effective day just before and just after it.
    before: int
    after: int


@dataclass(frozen=True)
class RampDay:
    """The effective warmup day of a stream at one instant, and what made it."""

    day: int
    #: Whole days since the start: what the day would be in calendar mode with no step-back.
    calendar_day: int
    mode: str
    #: Deliveries a ramp day needs to count (sending mode).
    minimum: int
    #: Ended ramp days that advanced the warmup, that delivered fewer than ``minimum``, that were
    #: paused (sending mode; in calendar mode every ended day is counted).
    counted: int
    below_minimum: int
    paused: int
    step_backs: tuple[AppliedStepBack, ...]
    #: The first day of the ramp's last cap (where a step-back counts from).
    top: int
    #: The ramp day in progress and what it has delivered so far.
    today: dt.date
    today_sent: int
    #: The whole stream was paused at some moment of the ramp day in progress (it will not count).
    today_paused: bool = False

    def reason(self) -> str:
        """Why the day is what it is, in one line (``sendguard status``)."""
        if self.mode == SENDING:
            parts = [f"sending days: {self.counted} of {self.calendar_day} calendar days counted"]
            if self.below_minimum:
                parts.append(f"{self.below_minimum} below {self.minimum} delivered")
            if self.paused:
                parts.append(f"{self.paused} paused")
        else:
            parts = [f"calendar days: {self.calendar_day} since the start"]
        for s in self.step_backs:
            when = dt.datetime.fromtimestamp(s.at, dt.timezone.utc).strftime("%Y-%m-%d %H:%MZ")
            moved = f"day {s.before} -> {s.after}"
            if s.before > self.top:
                moved += f", counted from day {self.top} where the ramp tops out"
            parts.append(f"stepped back {s.days} day{'s' if s.days != 1 else ''} by {s.rule} on {when} ({moved})")
        return "; ".join(parts)


def ramp_day_index(start: float, at: float) -> int:
    """Which ramp day ``at`` falls in: 0 for the first 24 hours from ``start``, negative before it."""
    return int((at - start) // DAY)


def ramp_date(start: float, at: float) -> dt.date:
    """The name of the ramp day ``at`` falls in: the UTC date that ramp day begins on."""
    return nth_ramp_date(start, ramp_day_index(start, at))


def nth_ramp_date(start: float, n: int) -> dt.date:
    """The name of ramp day ``n`` (0: the first) of a warmup that started at ``start``.

    Every ramp day is exactly 86,400 s, so consecutive ramp days have consecutive dates.
    """
    return _EPOCH + dt.timedelta(days=int(start // DAY) + n)


def ramp_top(ramp: tuple[tuple[int, int], ...], cap_of: Callable[[int], int | None]) -> int:
    """The first day from which the hourly cap no longer changes (``cap_of``: the stream's ``ramp_cap``)."""
    if not ramp:
        return 0
    final = cap_of(ramp[-1][0])
    top = ramp[-1][0]
    for first_day, _ in reversed(ramp):
        if cap_of(first_day) != final:
            break
        top = first_day
    return top


def effective_day(
    start: float,
    now: float,
    mode: str = CALENDAR,
    minimum: int = 1,
    history: RampHistory = NO_HISTORY,
    top: int = 0,
) -> RampDay:
    """The effective warmup day at ``now`` of a warmup that started at ``start``.

    ``history``: the stream's sent deliveries and paused days per ramp day and its step-backs;
    ``top``: where a step-back counts from (:func:`ramp_top`). Step-backs before ``start`` belong
    to an earlier warmup and are left out; one recorded up to :data:`CLOCK_TOLERANCE` after ``now``
    (another host's clock a little ahead) applies at ``now``, a later one has not happened yet.
    """
    calendar = ramp_day_index(start, now) if now > start else 0  # as warmup.warmup_day counts
    first = nth_ramp_date(start, 0)
    day = counted = below = paused = 0
    applied: list[AppliedStepBack] = []
    seen: set[tuple[str, int]] = set()
    ended = 0  # ramp days whose end has been taken into account

    def end_days(until: float) -> None:
        # Every ramp day that ended by ``until`` (and by now) moves the day on, or does not.
        nonlocal ended, day, counted, below, paused
        while ended < min(calendar, ramp_day_index(start, until)):
            date = first + dt.timedelta(days=ended)
            ended += 1
            if mode == CALENDAR:
                day += 1
                counted += 1
            elif date in history.paused:
                paused += 1
            elif history.sent.get(date, 0) >= minimum:
                day += 1
                counted += 1
            else:
                below += 1

    for step in sorted(history.step_backs, key=lambda s: s.at):
        if step.at < start or step.days < 1 or step.at > now + CLOCK_TOLERANCE:
            continue
        at = min(step.at, now)
        key = (step.rule, ramp_day_index(start, at))
        if key in seen:
            continue
        seen.add(key)
        end_days(at)
        after = max(0, min(day, top) - step.days)
        applied.append(AppliedStepBack(step.at, step.rule, step.days, day, after))
        day = after
    end_days(now)
    today = first + dt.timedelta(days=calendar)
    return RampDay(
        day=day,
        calendar_day=calendar,
        mode=mode,
        minimum=minimum,
        counted=counted,
        below_minimum=below,
        paused=paused,
        step_backs=tuple(applied),
        top=top,
        today=today,
        today_sent=history.sent.get(today, 0),
        today_paused=today in history.paused,
    )
