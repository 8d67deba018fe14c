"""The effective warmup day (effective_day.py): calendar or sending days, paused days, step-backs."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard_policyd.effective_day import (
    CALENDAR,
    SENDING,
    effective_day,
    nth_ramp_date,
    ramp_date,
    ramp_top,
)
from sendguard_policyd.store import DAY, RampHistory, StepBack
from sendguard_policyd.warmup import warmup_day

# A start at 09:30 UTC: ramp days run from 09:30 to 09:30, as the calendar warmup day always has.
START = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.timezone.utc).timestamp()  # a Monday
TRUCKING_RAMP = ((0, 50), (2, 150), (4, 250), (7, 300))
TOP = 7


def cap(day: int) -> int:
    return [c for d, c in TRUCKING_RAMP if day >= d][-1]


def date(n: int) -> dt.date:
    return nth_ramp_date(START, n)


def history(sent: dict[int, int] | None = None, paused: set[int] = frozenset(), steps=()) -> RampHistory:
    return RampHistory(
        sent={date(n): v for n, v in (sent or {}).items()},
        paused=frozenset(date(n) for n in paused),
        step_backs=tuple(StepBack(START + at_days * DAY, days, rule) for at_days, days, rule in steps),
    )


def test_a_ramp_day_runs_from_the_stamps_time_of_day_and_is_named_by_the_date_it_begins():
    assert ramp_date(START, START) == dt.date(2026, 3, 2)
    assert ramp_date(START, START + DAY - 1) == dt.date(2026, 3, 2)  # Tuesday 09:29:59 is still day 0
    assert ramp_date(START, START + DAY) == dt.date(2026, 3, 3)
    assert ramp_date(START, START - 1) == dt.date(2026, 3, 1)  # before the start: an earlier name
    midnight = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc).timestamp()
    assert ramp_date(midnight, midnight + 23 * 3600) == dt.date(2026, 3, 2)  # start_date: the UTC dates
    assert [nth_ramp_date(START, n) for n in (0, 1, 30)] == [dt.date(2026, 3, 2), dt.date(2026, 3, 3), dt.date(2026, 4, 1)]


def test_calendar_mode_without_step_backs_is_the_calendar_day():
    for days in (0, 0.5, 1, 6.9, 400):
        now = START + days * DAY
        assert effective_day(START, now).day == warmup_day(START, now)
    assert effective_day(START, START - 3 * DAY).day == 0  # a start in the future is day 0


def test_sending_mode_counts_only_the_ended_days_that_delivered_the_minimum():
    # Weekdays only (the stall the brief's operators fixed by hand): Saturday and Sunday deliver nothing.
    sent = {0: 600, 1: 700, 2: 650, 3: 499, 4: 800, 5: 0, 6: 3, 7: 900}
    ramp = effective_day(START, START + 8 * DAY + 60, SENDING, 500, history(sent), TOP)
    assert (ramp.day, ramp.calendar_day, ramp.counted, ramp.below_minimum, ramp.paused) == (5, 8, 5, 3, 0)
    assert ramp.reason() == "sending days: 5 of 8 calendar days counted; 3 below 500 delivered"
    # The day in progress does not count yet, however much it has delivered.
    today = effective_day(START, START + 8 * DAY + 60, SENDING, 500, history({**sent, 8: 5000}), TOP)
    assert today.day == 5 and today.today_sent == 5000 and today.today == date(8)


def test_a_paused_day_never_advances_the_ramp_whatever_it_delivered():
    ramp = effective_day(START, START + 4 * DAY, SENDING, 100, history({0: 200, 1: 900, 2: 300, 3: 300}, {1}), TOP)
    assert (ramp.day, ramp.counted, ramp.paused, ramp.below_minimum) == (3, 3, 1, 0)
    assert "1 paused" in ramp.reason()
    # Calendar mode is today's behaviour: a pause does not stop the calendar.
    assert effective_day(START, START + 4 * DAY, CALENDAR, 1, history(paused={1}), TOP).day == 4
    assert effective_day(START, START + 4 * DAY, SENDING, 1, history({3: 1}, {3}), TOP).today_paused is False
    assert effective_day(START, START + 3 * DAY, SENDING, 1, history({3: 1}, {3}), TOP).today_paused is True


def test_a_step_back_lowers_the_day_and_the_ramp_climbs_again_from_there():
    steps = [(5.5, 2, "yahoo_tss04")]  # on day 5, two days back
    at = lambda d: effective_day(START, START + d * DAY, CALENDAR, 1, history(steps=steps), TOP)  # noqa: E731
    assert at(5.4).day == 5
    assert at(5.6).day == 3 and cap(at(5.6).day) == 150  # the cap resumes lower than where it burned
    assert at(6.1).day == 4 and at(9.1).day == 7
    ramp = at(5.6)
    assert ramp.reason() == "calendar days: 5 since the start; stepped back 2 days by yahoo_tss04 on 2026-03-07 21:30Z (day 5 -> 3)"


def test_a_step_back_never_goes_below_day_0():
    ramp = effective_day(START, START + 1.5 * DAY, CALENDAR, 1, history(steps=[(1.2, 5, "gmail_571")]), TOP)
    assert ramp.day == 0
    assert effective_day(START, START + 2.5 * DAY, CALENDAR, 1, history(steps=[(1.2, 5, "gmail_571")]), TOP).day == 1


def test_a_step_back_of_a_ramp_past_its_top_counts_from_the_top():
    # Day 30 of a ramp whose last cap begins on day 7: one day back is day 6 (cap 250), not day 29 (300).
    ramp = effective_day(START, START + 30.5 * DAY, CALENDAR, 1, history(steps=[(30.2, 1, "ms_s3150")]), TOP)
    assert ramp.day == 6 and cap(ramp.day) == 250
    assert "(day 30 -> 6, counted from day 7 where the ramp tops out)" in ramp.reason()


def test_one_step_back_per_rule_per_ramp_day_counts():
    repeated = [(5.1, 1, "yahoo_tss04"), (5.2, 1, "yahoo_tss04"), (5.3, 1, "yahoo_tss04")]
    assert effective_day(START, START + 5.5 * DAY, CALENDAR, 1, history(steps=repeated), TOP).day == 4
    other_rule = [*repeated, (5.4, 1, "gmail_571")]
    assert effective_day(START, START + 5.5 * DAY, CALENDAR, 1, history(steps=other_rule), TOP).day == 3
    next_day = [*repeated, (6.1, 1, "yahoo_tss04")]
    assert effective_day(START, START + 6.5 * DAY, CALENDAR, 1, history(steps=next_day), TOP).day == 4


def test_step_backs_of_an_earlier_warmup_are_left_out_and_a_future_one_applies_now():
    old = history(steps=[(-3, 2, "yahoo_tss04")])  # before this warmup's start (the stamp was rewritten)
    assert effective_day(START, START + 4.5 * DAY, CALENDAR, 1, old, TOP).day == 4
    ahead = history(steps=[(4.5 + 10 / DAY, 1, "yahoo_tss04")])  # another host's clock 10 s ahead
    assert effective_day(START, START + 4.5 * DAY, CALENDAR, 1, ahead, TOP).day == 3
    later = history(steps=[(4.6, 1, "yahoo_tss04")])  # hours later: not happened yet at that instant
    assert effective_day(START, START + 4.5 * DAY, CALENDAR, 1, later, TOP).day == 4


def test_the_status_line_of_the_brief():
    # 9 days: 6 counted, 2 below the minimum, 1 paused; stepped back 1 day during day 8, which then counted.
    sent = {0: 600, 1: 600, 2: 100, 3: 600, 4: 600, 5: 0, 6: 600, 7: 600, 8: 600}
    ramp = effective_day(START, START + 9.2 * DAY, SENDING, 500, history(sent, {4}, [(8.3, 1, "yahoo_tss04")]), TOP)
    assert ramp.day == 5
    assert ramp.reason() == (
        "sending days: 6 of 9 calendar days counted; 2 below 500 delivered; 1 paused;"
        " stepped back 1 day by yahoo_tss04 on 2026-03-10 16:42Z (day 5 -> 4)"
    )


def test_the_ramp_top_is_where_the_cap_stops_changing():
    assert ramp_top(TRUCKING_RAMP, cap) == 7
    with_ceiling = lambda d: min(cap(d), 150)  # noqa: E731  hourly_ceiling = 150: flat from day 2
    assert ramp_top(TRUCKING_RAMP, with_ceiling) == 2
    assert ramp_top(((0, 50),), lambda d: 50) == 0
    assert ramp_top((), lambda d: None) == 0


# -- properties over generated histories --------------------------------------------------------

DAYS = 40
sent_days = st.dictionaries(st.integers(-3, DAYS + 2), st.integers(0, 1000), max_size=DAYS)
paused_days = st.sets(st.integers(-3, DAYS + 2), max_size=10)
steps = st.lists(
    st.tuples(st.floats(-5, DAYS + 1, allow_nan=False), st.integers(1, 12), st.sampled_from(["a", "b", "manual"])),
    max_size=6,
)
instants = st.floats(-2, DAYS, allow_nan=False)
modes = st.sampled_from([CALENDAR, SENDING])
minimums = st.integers(1, 1000)
tops = st.integers(0, 12)


@settings(max_examples=400, deadline=None)
@given(sent_days, paused_days, steps, instants, modes, minimums, tops)
def test_the_day_is_between_0_and_the_calendar_day(sent, paused, step_backs, now_days, mode, minimum, top):
    now = START + now_days * DAY
    ramp = effective_day(START, now, mode, minimum, history(sent, paused, step_backs), top)
    assert 0 <= ramp.day <= ramp.calendar_day == warmup_day(START, now)
    if mode == SENDING:
        assert ramp.counted + ramp.below_minimum + ramp.paused == ramp.calendar_day
    if not ramp.step_backs:
        assert ramp.day == ramp.counted


@settings(max_examples=400, deadline=None)
@given(sent_days, paused_days, steps, instants, modes, minimums, tops, st.integers(-3, DAYS + 2), st.integers(1, 2000))
def test_more_deliveries_never_lower_the_day(sent, paused, step_backs, now_days, mode, minimum, top, extra_day, extra):
    now = START + now_days * DAY
    before = effective_day(START, now, mode, minimum, history(sent, paused, step_backs), top)
    more = {**sent, extra_day: sent.get(extra_day, 0) + extra}
    after = effective_day(START, now, mode, minimum, history(more, paused, step_backs), top)
    assert after.day >= before.day


@settings(max_examples=300, deadline=None)
@given(sent_days, paused_days, steps, st.floats(0, DAYS - 1, allow_nan=False), modes, minimums, tops)
def test_the_day_never_rises_by_more_than_one_per_ramp_day(sent, paused, step_backs, now_days, mode, minimum, top):
    h = history(sent, paused, step_backs)
    today = effective_day(START, START + now_days * DAY, mode, minimum, h, top)
    tomorrow = effective_day(START, START + (now_days + 1) * DAY, mode, minimum, h, top)
    assert tomorrow.day <= today.day + 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, DAYS), st.floats(0, 0.999, allow_nan=False), minimums)
def test_sending_mode_with_every_day_delivered_is_the_calendar(days, fraction, minimum):
    now = START + (days + fraction) * DAY
    full = {n: minimum for n in range(days + 1)}
    assert effective_day(START, now, SENDING, minimum, history(full), TOP).day == warmup_day(START, now)
