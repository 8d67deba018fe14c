"""The default cap in force: the warmup ramp and ceilings of each stream, and a pause when one is wired in."""

from __future__ import annotations

import time

from sendguard.streams import MatchRule, Stream
from sendguard_policyd.cap_in_force import CapInForce, WarmupCapInForce

DAY = 86400


def trucking(start: float) -> Stream:
    return Stream("trucking", MatchRule(server_port=frozenset({25})), ramp=((0, 50), (2, 150)), hourly_ceiling=300,
                  daily_cap=4000, start_epoch=start)  # fmt: skip


def test_the_warmup_day_decides_the_hourly_cap():
    now = time.time()
    source = WarmupCapInForce([trucking(now - 3 * DAY - 60)])
    assert source("trucking", now) == CapInForce(150, 4000, False, "warmup day 3: hourly cap 150, daily cap 4000")
    assert source("trucking", now - 2 * DAY).hourly == 50


def test_a_pause_lookup_pauses_the_stream_and_says_why():
    now = time.time()
    paused = {"trucking": "gmail_unsolicited"}
    source = WarmupCapInForce([trucking(now)], paused=lambda stream, at: paused.get(stream))
    cap = source("trucking", now)
    assert cap.paused and cap.reason == "paused (gmail_unsolicited); warmup day 0: hourly cap 50, daily cap 4000"
    del paused["trucking"]
    assert not source("trucking", now).paused


def test_an_unknown_stream_has_no_cap_and_says_so():
    cap = WarmupCapInForce([])("marketing", time.time())
    assert (cap.hourly, cap.daily, cap.paused, cap.reason) == (None, None, False, "unknown stream")
