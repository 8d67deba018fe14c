"""``warmup_days`` and ``sending_day_minimum`` in ``[streams.NAME]``: defaults, and every error named."""

from __future__ import annotations

import datetime as dt

import pytest

from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError

FILE = "/etc/sendguard.toml"


def stream(port: int, **keys) -> dict:
    return {"match": {"server_port": [port]}, "ramp": [[0, 50], [2, 150]], "start_date": dt.date(2026, 3, 2), **keys}


def config(**streams):
    return parse({"streams": streams}, FILE)


def test_calendar_is_the_default_and_the_minimum_defaults_to_an_hour_at_the_first_step():
    s = config(trucking=stream(25), healthcare=stream(2526, warmup_days="sending"))
    assert s.policyd.policy_for("trucking").warmup_days == "calendar"
    healthcare = s.policyd.policy_for("healthcare")
    assert (healthcare.warmup_days, healthcare.sending_day_minimum) == ("sending", 50)
    s = config(trucking=stream(25, warmup_days="sending", sending_day_minimum=500))
    assert s.policyd.policy_for("trucking").sending_day_minimum == 500


@pytest.mark.parametrize(
    "keys, key, reason",
    [
        ({"warmup_days": "weekdays"}, "streams.trucking.warmup_days", "'weekdays' is not one of calendar, sending"),
        ({"warmup_days": True}, "streams.trucking.warmup_days", "expected a string"),
        ({"warmup_days": "sending", "sending_day_minimum": 0}, "streams.trucking.sending_day_minimum",
         "must be at least 1 delivery"),
        ({"warmup_days": "sending", "sending_day_minimum": "500"}, "streams.trucking.sending_day_minimum",
         "expected an integer"),
        ({"sending_day_minimum": 500}, "streams.trucking.sending_day_minimum",
         'applies only with warmup_days = "sending"'),
        ({"ramp": [], "hourly_ceiling": 100, "warmup_days": "sending"}, "streams.trucking.warmup_days",
         '"sending" needs a ramp'),
    ],
)  # fmt: skip
def test_bad_values_stop_start_up_with_file_key_and_reason(keys, key, reason):
    with pytest.raises(ConfigError) as info:
        config(trucking=stream(25, **keys))
    assert str(info.value).startswith(f"{FILE}: {key}: {reason}")


def test_every_stream_s_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        config(trucking=stream(25, warmup_days="daily"), healthcare=stream(2526, sending_day_minimum=10))
    assert [e.key for e in info.value.all()] == [
        "streams.trucking.warmup_days",
        "streams.healthcare.sending_day_minimum",
    ]
