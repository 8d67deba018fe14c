"""The window sendguard sets keeps Listmonk under the cap — checked against Listmonk's own counting.

``listmonk_pushes`` replays the loop of Listmonk's campaign manager
(internal/manager: one counter per instance, the first message of a window
uncounted, a sleep until the window ends once ``rate`` were counted); the
windows :func:`window_for` picks must keep every rolling hour and day of
its pushes under the caps, whatever the timing of the campaigns' mail.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard_policyd.cap_in_force import CapInForce
from sendguard_policyd.listmonk.window import (
    DAY,
    HOUR,
    Window,
    floor_window,
    parse_go_duration,
    window_for,
    window_in_force,
)


def listmonk_pushes(window: Window, offered: list[float]) -> list[float]:
    """When Listmonk pushes each message, the campaigns offering one at each ``offered`` time (ascending).

    In whole nanoseconds, as Go's clock counts: after sleeping ``duration - diff``
    the next look at the clock finds the window over, never a float's hair short.
    """
    duration = round(window.seconds * 1e9)
    start = count = now = 0
    pushed = []
    for t in offered:
        now = max(now, round(t * 1e9))
        pushed.append(now / 1e9)
        diff = now - start
        if diff >= duration:  # the window expired: this message opens the next one, uncounted
            start, count = now, 0
            continue
        count += 1
        if count >= window.rate:
            now += duration - diff  # sleeps until the window is over
            count = 0
    return pushed


def most_in_rolling(times: list[float], period: float) -> int:
    """The most of ``times`` in any rolling ``period`` (the policy daemon's window: the last ``period`` seconds)."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - period:
            first += 1
        most = max(most, last - first + 1)
    return most


def saturating(count: int) -> list[float]:
    return [0.0] * count


def test_the_naive_window_lets_twice_the_cap_through_a_rolling_hour():
    # Why sendguard does not set "rate = cap per 1h": Listmonk's windows are fixed, not rolling.
    naive = Window(50, 3600.0)
    offered = [3599.0 - i * 0.001 for i in range(51)][::-1] + [3600.0 + i * 0.001 for i in range(60)]
    assert most_in_rolling(listmonk_pushes(naive, offered), HOUR) > 50
    assert naive.worst_case(HOUR) == 102


def test_the_brief_ramps_get_a_window_whose_worst_case_is_under_each_cap():
    for hourly, daily in [(50, 4000), (150, 4000), (250, 4000), (300, 4000), (100, 10000), (600, 10000), (1000, 10000)]:
        choice = window_for(CapInForce(hourly, daily, False, "ramp"))
        window = choice.window
        assert window is not None and choice.exact
        assert window.worst_case(HOUR) <= hourly and window.worst_case(DAY) <= daily
        pushed = listmonk_pushes(window, saturating(3 * daily))
        assert most_in_rolling(pushed, HOUR) <= hourly
        assert most_in_rolling(pushed, DAY) <= daily


def test_the_window_uses_most_of_the_cap():
    # Day 0 of trucking: 50 an hour; Listmonk kept busy sends 48 of them (a window of 2 every 150 s).
    window = window_for(CapInForce(50, 4000, False, "day 0")).window
    assert window == Window(1, 150.0) and window.duration == "150s"
    sent = listmonk_pushes(window, saturating(200))
    assert len([t for t in sent if HOUR <= t < 2 * HOUR]) == 48
    # Day 7+: 300 an hour but 4,000 a day: the daily cap is spread over the day, none of it lost.
    spread = window_for(CapInForce(300, 4000, False, "day 7")).window
    per_day = len([t for t in listmonk_pushes(spread, saturating(8000)) if t < DAY])
    assert 3900 <= per_day <= 4000


def test_a_paused_stream_gets_the_floor_listmonk_applies():
    choice = window_for(CapInForce(300, 4000, True, "paused (gmail_unsolicited)"))
    assert choice.window == floor_window() == Window(1, 3600.0)
    assert choice.window.duration == "1h"
    assert "paused (gmail_unsolicited)" in choice.reason
    # The floor is 1: Listmonk switches a window with rate 0 off and sends unthrottled.
    assert window_in_force(True, 0, "1h") is None
    assert window_in_force(True, 1, "1h") == Window(1, 3600.0)


def test_a_cap_too_small_for_any_window_is_said_so():
    choice = window_for(CapInForce(3, None, False, "ramp step of 3"))
    assert not choice.exact and choice.window == floor_window()
    assert "holds the rest" in choice.reason


def test_no_cap_means_no_window():
    choice = window_for(CapInForce(None, None, False, "uncapped"))
    assert choice.window is None


def test_several_listmonk_instances_share_the_cap():
    alone = window_for(CapInForce(300, None, False, "x")).window
    halves = window_for(CapInForce(300, None, False, "x"), share=2).window
    assert halves.worst_case(HOUR) * 2 <= 300 < alone.worst_case(HOUR) * 2


def test_a_shortened_hour_scales_the_window():
    # The policy daemon's test_window_seconds: an "hour" of 60 s, a "day" of 24 min.
    window = window_for(CapInForce(50, None, False, "x"), hour=60).window
    assert window.seconds <= 60 and window.worst_case(60) <= 50


def test_durations_are_what_go_parses():
    assert Window(5, 86400.0).duration == "24h"  # never "1d": Go's parser refuses it and Listmonk runs unthrottled
    assert Window(5, 900.0).duration == "15m"
    assert Window(5, 675.0).duration == "675s"
    assert parse_go_duration("1h30m") == 5400
    assert parse_go_duration("1.5h") == 5400
    assert parse_go_duration("500ms") == 0.5
    assert parse_go_duration("1d") is None
    assert parse_go_duration("") is None
    assert window_in_force(True, 10, "1d") is None  # what Listmonk does with it: no window
    assert window_in_force(True, 10, "1s") is None  # a duration of 1 s or less is no window either
    assert window_in_force(False, 10, "1h") is None


@settings(max_examples=60, deadline=None)
@given(
    hourly=st.integers(4, 400),
    daily=st.one_of(st.none(), st.integers(40, 3000)),
    gaps=st.lists(st.floats(0, 900), max_size=300),
)
def test_whatever_the_campaigns_timing_listmonk_stays_under_the_caps(hourly, daily, gaps):
    choice = window_for(CapInForce(hourly, daily, False, "x"))
    window = choice.window
    assert window is not None and choice.exact
    offered, t = [], 0.0
    for gap in gaps:
        t += gap
        offered.append(t)
    # Then the campaigns keep Listmonk busy for more than a day.
    busy = math.ceil((DAY + 2 * HOUR) / window.seconds) * (window.rate + 1)
    offered += [t] * busy
    pushed = listmonk_pushes(window, offered)
    assert most_in_rolling(pushed, HOUR) <= hourly
    if daily is not None:
        assert most_in_rolling(pushed, DAY) <= daily
