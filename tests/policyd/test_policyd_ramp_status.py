"""``sendguard status`` shows the effective warmup day and why, as an operator runs it."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from sendguard.cli.settings import load
from sendguard_policyd import status
from sendguard_policyd.effective_day import nth_ramp_date
from sendguard_policyd.store import DAY
from sendguard_policyd.store.redis import RedisCounterStore
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_testing.command import sendguard_command
from sendguard_testing.policyd_processes import write_policyd_config

# A start at 00:00 UTC nine days and some hours ago: ramp days are the UTC dates.
START = (dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
         - dt.timedelta(days=9)).timestamp()  # fmt: skip


def config_file(tmp_path: Path, database: Path, store: str = "") -> Path:
    """The brief's two streams, trucking in sending mode; ``store``: ``[policyd]`` lines (default: ``database``)."""
    stamp = tmp_path / "trucking.start"
    stamp.write_text(f"{START:.0f}\n")
    streams = f"""[streams.trucking]
ramp = [[0, 50], [2, 150], [4, 250], [7, 300]]
daily_cap = 4000
start_file = "{stamp}"
warmup_days = "sending"
sending_day_minimum = 500

[streams.trucking.match]
server_port = [25]

[streams.healthcare]
ramp = [[0, 100], [2, 300], [5, 600], [10, 1000]]
start_date = {dt.datetime.fromtimestamp(START, dt.timezone.utc).date().isoformat()}

[streams.healthcare.match]
server_port = [2526]
"""
    path, _ = write_policyd_config(tmp_path, "s", store or f'database = "{database}"', streams)
    return path


def write_history(store) -> float:
    """Nine ended days: six deliver 500 or more, two fewer, one paused; a step-back during day 8."""
    for n, count in enumerate([600, 640, 120, 700, 800, 0, 550, 510, 900]):
        if count:
            store.add_sent("trucking", nth_ramp_date(START, n), count)
    store.mark_paused_day("trucking", nth_ramp_date(START, 4))
    store.add_sent("trucking", nth_ramp_date(START, 9), 230)  # today so far
    step_at = START + 8 * DAY + 14 * 3600 + 5 * 60
    store.step_back("trucking", 1, "yahoo_tss04", step_at)
    store.step_back("healthcare", 2, "gmail_571", step_at)
    return step_at


def test_status_shows_the_effective_day_and_why(tmp_path: Path):
    database = tmp_path / "policyd.sqlite"
    store = SQLiteCounterStore(str(database))
    step_at = write_history(store)
    store.close()
    result = subprocess.run([sendguard_command(), "status", "--config", str(config_file(tmp_path, database))],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    trucking, healthcare = result.stdout.split("stream trucking:")[1].split("stream healthcare:")
    when = dt.datetime.fromtimestamp(step_at, dt.timezone.utc).strftime("%Y-%m-%d 14:05Z")
    start = dt.datetime.fromtimestamp(START, dt.timezone.utc).strftime("%Y-%m-%d 00:00:00Z")
    assert f"  warmup day      5 (start {start})\n" in trucking
    assert (
        "  why             sending days: 6 of 9 calendar days counted; 2 below 500 delivered; 1 paused;"
        f" stepped back 1 day by yahoo_tss04 on {when} (day 5 -> 4)\n"
    ) in trucking
    today = nth_ramp_date(START, 9)
    assert f"  today           230 delivered so far in ramp day {today} (500 needed to count)\n" in trucking
    assert "  cap in force    250/rolling hour, 4000/rolling 24 h\n" in trucking  # day 5 of the trucking ramp
    # Calendar mode: every day counts; the step-back during day 8 took it from 8 to 6.
    assert "  warmup day      7 (start" in healthcare
    assert f"  why             calendar days: 9 since the start; stepped back 2 days by gmail_571 on {when} (day 8 -> 6)\n" in healthcare
    assert "  today " not in healthcare  # nothing to reach in calendar mode
    assert "  cap in force    600/rolling hour" in healthcare


def test_status_on_redis_reads_the_same_history(redis_url, tmp_path: Path):
    store = RedisCounterStore(redis_url)
    write_history(store)
    store.close()
    settings = load(str(config_file(tmp_path, Path(), f'store = "redis"\nredis_url = "{redis_url}"')))
    out, code = status.report(settings.config, settings.policyd)
    assert code == status.EXIT_OK
    assert "  warmup day      5 (start" in out
    assert "sending days: 6 of 9 calendar days counted; 2 below 500 delivered; 1 paused;" in out


def test_status_without_the_store_cannot_know_a_sending_day(tmp_path: Path):
    database = tmp_path / "policyd.sqlite"
    database.write_bytes(b"this is not a SQLite file" * 100)
    result = subprocess.run([sendguard_command(), "status", "--config", str(config_file(tmp_path, database))],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == status.EXIT_STORE_UNREADABLE, result.stdout
    trucking, healthcare = result.stdout.split("stream trucking:")[1].split("stream healthcare:")
    assert "  warmup day      unknown (start" in trucking and "calendar day 9)" in trucking
    assert "  why             unknown: the sending days and step-backs are kept in the store" in trucking
    assert "  cap in force    unknown/rolling hour" in trucking
    assert "  warmup day      9 (start" in healthcare  # calendar mode: the calendar day, step-backs unknown
    assert "  why             unknown: the step-backs are kept in the store" in healthcare


def test_a_fresh_sending_stream_is_on_day_0_until_it_delivers(tmp_path: Path):
    database = tmp_path / "policyd.sqlite"  # absent: nothing counted yet
    result = subprocess.run([sendguard_command(), "status", "--config", str(config_file(tmp_path, database))],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "  warmup day      0 (start" in result.stdout
    assert "  why             sending days: 0 of 9 calendar days counted; 9 below 500 delivered\n" in result.stdout
