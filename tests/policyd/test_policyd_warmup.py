"""Warmup days, ramps and the caps they put in force (brief, incident 3)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from sendguard.streams import MatchRule, Stream
from sendguard_policyd.store import DAY
from sendguard_policyd.warmup import RESTAT_INTERVAL, StampFile, Warmup, warmup_day

START = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.timezone.utc).timestamp()  # a Monday

TRUCKING_RAMP = ((0, 50), (2, 150), (4, 250), (7, 300))
HEALTHCARE_RAMP = ((0, 100), (2, 300), (5, 600), (10, 1000))


def stream(ramp=TRUCKING_RAMP, ceiling=None, daily=4000, start_file=None, start_epoch=START) -> Stream:
    return Stream(
        name="trucking",
        rule=MatchRule(server_port=frozenset({25})),
        ramp=ramp,
        hourly_ceiling=ceiling,
        daily_cap=daily,
        start_file=start_file,
        start_epoch=None if start_file else start_epoch,
    )


def test_warmup_day_is_whole_days_since_the_stamp():
    assert warmup_day(START, START) == 0
    assert warmup_day(START, START + DAY - 1) == 0
    assert warmup_day(START, START + DAY) == 1
    assert warmup_day(START, START + 10 * DAY + 5) == 10
    # A start in the future is day 0, the most careful step.
    assert warmup_day(START, START - 3 * DAY) == 0


@pytest.mark.parametrize(
    "day, trucking, healthcare",
    [(0, 50, 100), (1, 50, 100), (2, 150, 300), (3, 150, 300), (4, 250, 300), (5, 250, 600),
     (6, 250, 600), (7, 300, 600), (9, 300, 600), (10, 300, 1000), (400, 300, 1000)],
)  # fmt: skip
def test_brief_ramps_give_the_brief_caps(day, trucking, healthcare):
    now = START + day * DAY + 3600
    assert Warmup(stream(TRUCKING_RAMP)).caps(now).hourly == trucking
    assert Warmup(stream(HEALTHCARE_RAMP, daily=10000)).caps(now).hourly == healthcare
    assert Warmup(stream(HEALTHCARE_RAMP, daily=10000)).caps(now).daily == 10000


def test_weekend_days_count():
    # Start on a Friday: Saturday and Sunday are warmup days 1 and 2 like any other.
    friday = dt.datetime(2026, 3, 6, 8, 0, tzinfo=dt.timezone.utc).timestamp()
    monday = dt.datetime(2026, 3, 9, 8, 0, tzinfo=dt.timezone.utc).timestamp()
    caps = Warmup(stream(start_epoch=friday)).caps(monday)
    assert caps.warmup_day == 3 and caps.hourly == 150


def test_day_boundary_is_the_stamp_time_not_midnight():
    w = Warmup(stream())
    assert w.caps(START + 2 * DAY - 1).hourly == 50  # day 1, a second before the step
    assert w.caps(START + 2 * DAY).hourly == 150  # day 2 begins exactly 48 h after the stamp


def test_hourly_ceiling_caps_the_ramp():
    w = Warmup(stream(ceiling=200))
    assert w.caps(START + 8 * DAY).hourly == 200
    assert w.caps(START).hourly == 50
    no_ramp = Warmup(stream(ramp=(), ceiling=120))
    assert no_ramp.caps(START).hourly == 120


def test_stamp_file_is_reread_when_it_changes(tmp_path: Path):
    stamp = tmp_path / "trucking.start"
    stamp.write_text(f"{START:.0f}\n")
    w = Warmup(stream(start_file=stamp))
    now = START + 8 * DAY
    assert w.caps(now).warmup_day == 8
    # The operator restarts the warmup: the new stamp applies without a restart.
    stamp.write_text(f"{now - DAY:.0f}\n")
    assert w.caps(now).warmup_day == 1
    assert w.caps(now).hourly == 50


def test_paced_stamp_checks_see_a_change_within_the_interval(tmp_path: Path):
    stamp = tmp_path / "s"
    stamp.write_text(f"{START:.0f}")
    f = StampFile(stamp)
    assert f.epoch(clock=100.0) == START
    stamp.write_text(f"{START + DAY:.0f}")
    os.utime(stamp, ns=(1, 1))
    assert f.epoch(clock=100.0 + RESTAT_INTERVAL / 2) == START  # paced: not re-checked yet
    assert f.epoch(clock=100.0 + RESTAT_INTERVAL) == START + DAY


def test_a_broken_stamp_keeps_the_last_good_start(tmp_path: Path, policyd_log):
    stamp = tmp_path / "s"
    stamp.write_text(f"{START:.0f}")
    f = StampFile(stamp)
    assert f.epoch() == START
    stamp.write_text("not a number")
    assert f.epoch() == START
    assert f.epoch() == START
    assert len(policyd_log.matching("does not hold a Unix epoch")) == 1  # one line, not one per request
    stamp.unlink()
    assert f.epoch() == START
    assert policyd_log.matching("cannot be read")
