"""The daemon over a real socket follows the effective warmup day: a stalled sending ramp, a step-back.

The ramp history is written into the daemon's store file by a second store
object, as the watcher's consumers (another process, or another thread of
``sendguard run``) write it; the daemon reads it on its refresher thread.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from sendguard_policyd.effective_day import nth_ramp_date
from sendguard_policyd.sending_days import SendingDays
from sendguard_policyd.store import DAY
from sendguard_policyd.store.redis import RedisCounterStore
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.warmup import make_warmups
from sendguard_policyd.watch import Delivery
from sendguard_testing.policy_client import PolicyClient, postfix_message

RAMP = [[0, 2], [2, 4], [5, 8]]  # small caps, so a few messages reach them


def streams(start: float, trucking: dict | None = None, healthcare: dict | None = None) -> dict:
    when = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    return {
        "trucking": {"match": {"server_port": [25]}, "ramp": RAMP, "start_date": when, **(trucking or {})},
        "healthcare": {"match": {"server_port": [2526]}, "ramp": RAMP, "start_date": when, **(healthcare or {})},
    }


def send(handle, port: int, n: int, tag: str) -> list[str]:
    """Send ``n`` one-recipient messages on ``port``; the END-OF-MESSAGE answer of each."""
    answers = []
    with PolicyClient((handle.host, handle.port)) as client:
        for i in range(n):
            reqs = postfix_message(f"{tag}{i}", f"Q{tag.upper()}{i}", ["carrier@example.com"], server_port=str(port))
            answers.append([client.ask(r) for r in reqs][-1])
    return answers


def sent(at: float, stream: str) -> Delivery:
    return Delivery(at=at, queue_id="4B7C21A0F3", recipient="carrier@example.com", domain="example.com",
                    relay="mx.example.com", relay_ip="192.0.2.25", status="sent", dsn="2.0.0",
                    reply="250 2.0.0 OK", stream=stream, operator="other", reason="")  # fmt: skip


def database(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "policyd.sqlite")  # where the conftest's configs keep the store


def test_a_sending_ramp_that_stalled_keeps_the_lower_cap(start_daemon, make_config, tmp_path, policyd_log):
    start = time.time() - 5.5 * DAY  # calendar day 5: cap 8
    config = make_config(streams(start, trucking={"warmup_days": "sending", "sending_day_minimum": 3}))
    # What the watcher counted: days 0 and 1 delivered 3 each, days 2 to 4 (a weekend, a holiday) one each.
    writer = SQLiteCounterStore(database(tmp_path))
    consumer = SendingDays(make_warmups(config.config.streams, config.policyd), writer)
    for day in range(5):
        for i in range(3 if day < 2 else 1):
            consumer.delivered(sent(start + day * DAY + 3600 + i, "trucking"))
    writer.close()

    _, handle = start_daemon(streams(start, trucking={"warmup_days": "sending", "sending_day_minimum": 3}))
    trucking = send(handle, 25, 5, "t")
    healthcare = send(handle, 2526, 5, "h")
    # Sending days: 2 of 5 counted, so day 2 and its cap of 4; the calendar stream is on day 5 (cap 8).
    assert trucking[:4] == ["DUNNO"] * 4
    assert trucking[4].startswith("HOLD sendguard: stream trucking: it is at its hourly cap of 4 recipients")
    assert "(warmup day 2)" in trucking[4]
    assert healthcare == ["DUNNO"] * 5
    assert REGISTRY.get_sample_value("sendguard_policyd_warmup_day", {"stream": "trucking"}) == 2
    assert REGISTRY.get_sample_value("sendguard_policyd_warmup_calendar_day", {"stream": "trucking"}) == 5
    assert REGISTRY.get_sample_value("sendguard_policyd_warmup_day_info", {"stream": "trucking", "mode": "sending"}) == 1
    assert REGISTRY.get_sample_value("sendguard_policyd_warmup_day_info", {"stream": "healthcare", "mode": "calendar"}) == 1
    assert REGISTRY.get_sample_value("sendguard_policyd_warmup_day", {"stream": "healthcare"}) == 5
    held = policyd_log.matching("hold: stream trucking")
    assert held and "(warmup day 2)" in held[0]


def test_the_day_a_stalled_ramp_delivers_enough_it_counts_from_the_next_refresh(start_daemon, tmp_path):
    start = time.time() - 2.5 * DAY  # calendar day 2
    config, handle = start_daemon(streams(start, trucking={"warmup_days": "sending", "sending_day_minimum": 2}))
    assert send(handle, 25, 3, "a") == ["DUNNO", "DUNNO", "HOLD sendguard: stream trucking: it is at its hourly cap"
                                        " of 2 recipients per rolling 60 minutes (warmup day 0); held, released as the"
                                        " stream's window frees"]  # fmt: skip
    writer = SQLiteCounterStore(database(tmp_path))
    writer.add_sent("trucking", nth_ramp_date(start, 0), 2)
    writer.add_sent("trucking", nth_ramp_date(start, 1), 2)
    writer.close()
    assert handle.ramps.refresh()
    assert send(handle, 25, 3, "b") == ["DUNNO", "DUNNO", "HOLD sendguard: stream trucking: it is at its hourly cap"
                                        " of 4 recipients per rolling 60 minutes (warmup day 2); held, released as the"
                                        " stream's window frees"]  # fmt: skip


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_after_a_step_back_the_daemon_enforces_the_lower_cap(kind, start_daemon, tmp_path, policyd_log, request):
    start = time.time() - 5.5 * DAY  # calendar day 5: cap 8
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        _, handle = start_daemon(streams(start), store="redis", redis_url=url)
        writer = RedisCounterStore(url)
    else:
        _, handle = start_daemon(streams(start))
        writer = SQLiteCounterStore(database(tmp_path))
    assert send(handle, 25, 3, "a") == ["DUNNO"] * 3
    # A stop signal fired in the watcher: the pause's step_back_days = 3 goes into the shared store.
    writer.step_back("trucking", 3, "yahoo_tss04", time.time())
    writer.close()
    assert handle.ramps.refresh()
    answers = send(handle, 25, 2, "b")
    assert answers[0] == "DUNNO"  # 4 of the day-2 cap of 4
    assert answers[1].startswith("HOLD sendguard: stream trucking: it is at its hourly cap of 4 recipients")
    assert "(warmup day 2)" in answers[1]
    assert policyd_log.matching("stream trucking: warmup day 5 -> 2 (calendar days: 5 since the start;"
                                " stepped back 3 days by yahoo_tss04 on")  # fmt: skip
    assert send(handle, 2526, 5, "h") == ["DUNNO"] * 5  # the other stream keeps its own day
    assert REGISTRY.get_sample_value("sendguard_policyd_warmup_step_backs", {"stream": "trucking"}) == 1

    # The same through the stop signals' hook in this process: the refresher thread reads it back.
    handle.ramps.step_back("trucking", 2, "gmail_571", time.time())
    deadline = time.monotonic() + 10
    while handle.decider.warmups["trucking"].caps(time.time()).warmup_day != 0:
        assert time.monotonic() < deadline, "the refresher did not pick up the step-back"
        time.sleep(0.02)
    assert send(handle, 25, 1, "c")[0].startswith("HOLD sendguard: stream trucking: it is at its hourly cap of 2")
