"""Stream rules: matching, first match wins, overlap refused, ramps, stamp files."""

from __future__ import annotations

import time

import pytest

from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError
from sendguard.streams import match_stream, read_stamp

TWO_STREAMS = {
    "streams": {
        "trucking": {
            "match": {"server_port": [25], "client_address": ["172.18.0.5"]},
            "ramp": [[0, 50], [2, 150], [4, 250], [7, 300]],
            "hourly_ceiling": 300,
            "daily_cap": 4000,
            "start_date": __import__("datetime").date(2026, 11, 1),
            "bulk": True,
        },
        "healthcare": {
            "match": {"server_port": [2526], "client_address": ["172.18.0.25"]},
            "ramp": [[0, 100], [2, 300], [5, 600], [10, 1000]],
            "daily_cap": 10000,
            "start_date": __import__("datetime").date(2026, 11, 1),
            "bulk": True,
        },
    }
}


def request(**attrs: str) -> dict[str, str]:
    return attrs


def test_each_stream_matches_its_own_port_and_client():
    streams = parse(TWO_STREAMS).streams
    assert match_stream(streams, request(server_port="25", client_address="172.18.0.5")).name == "trucking"
    assert match_stream(streams, request(server_port="2526", client_address="172.18.0.25")).name == "healthcare"
    # Cron mail on loopback belongs to no stream: it is not capped.
    assert match_stream(streams, request(server_port="25", client_address="127.0.0.1")) is None
    # Missing attributes never match (Postfix before 3.2 sends no server_port).
    assert match_stream(streams, request(client_address="172.18.0.5")) is None


def test_client_address_forms_postfix_may_report_match_the_same_stream():
    streams = parse(TWO_STREAMS).streams
    for form in ("172.18.0.5", "::ffff:172.18.0.5", "IPv6:::ffff:172.18.0.5", "[172.18.0.5]"):
        assert match_stream(streams, request(server_port="25", client_address=form)).name == "trucking", form
    assert match_stream(streams, request(server_port="25", client_address="not-an-address")) is None


def test_sender_matches_address_or_domain_case_insensitively():
    config = parse(
        {
            "streams": {
                "a": {"match": {"sender": ["Noreply@Send.Example.net"]}},
                "b": {"match": {"sender": ["other.example.org"]}},
            }
        }
    )
    assert match_stream(config.streams, {"sender": "noreply@send.example.NET"}).name == "a"
    assert match_stream(config.streams, {"sender": "x@OTHER.example.org"}).name == "b"
    assert match_stream(config.streams, {"sender": "x@send.example.net"}) is None


@pytest.mark.parametrize(
    "a, b",
    [
        ({"server_port": [25]}, {"client_address": ["10.0.0.1"]}),  # port-25 mail from 10.0.0.1 matches both
        ({"client_address": ["172.16.0.0/12"]}, {"client_address": ["172.18.0.5"]}),
        ({"sender": ["example.net"]}, {"sender": ["a@example.net"]}),
        ({"server_port": [25, 587]}, {"server_port": [587]}),
    ],
)
def test_overlapping_streams_stop_start_up(a, b):
    with pytest.raises(ConfigError, match=r"streams\.second\.match: overlaps stream 'first'"):
        parse({"streams": {"first": {"match": a}, "second": {"match": b}}})


def test_disjoint_on_one_attribute_is_no_overlap():
    parse({"streams": {"a": {"match": {"server_port": [25], "sender": ["x.org"]}}, "b": {"match": {"server_port": [2526], "sender": ["x.org"]}}}})


def test_ramp_steps_and_ceiling():
    trucking = parse(TWO_STREAMS).streams[0]
    assert [trucking.ramp_cap(d) for d in (0, 1, 2, 3, 4, 6, 7, 30)] == [50, 50, 150, 150, 250, 250, 300, 300]
    capped = parse({"streams": {"s": {"match": {"server_port": [25]}, "ramp": [[0, 50], [7, 500]], "hourly_ceiling": 300, "start_date": TWO_STREAMS["streams"]["trucking"]["start_date"]}}}).streams[0]
    assert capped.ramp_cap(8) == 300


@pytest.mark.parametrize(
    "ramp, reason",
    [
        ([[1, 50]], "must start at warmup day 0"),
        ([[0, 50], [0, 60]], "warmup days must increase"),
        ([[0, "50"]], "two integers"),
        ([[0, -1]], "cannot be negative"),
    ],
)
def test_bad_ramps_are_refused(ramp, reason):
    with pytest.raises(ConfigError, match=reason):
        parse({"streams": {"s": {"match": {"server_port": [25]}, "ramp": ramp, "start_date": TWO_STREAMS["streams"]["trucking"]["start_date"]}}})


def test_ramp_needs_a_start():
    with pytest.raises(ConfigError, match=r"streams\.s\.start_file: a stream with a ramp needs"):
        parse({"streams": {"s": {"match": {"server_port": [25]}, "ramp": [[0, 5]]}}})


def test_empty_match_is_refused():
    with pytest.raises(ConfigError, match="at least one match attribute"):
        parse({"streams": {"s": {"match": {}}}})


def test_stamp_file_is_read_relative_to_the_config(tmp_path):
    (tmp_path / "trucking.start").write_text(f"{int(time.time())}\n")
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text('[streams.t]\nramp = [[0, 5]]\nstart_file = "trucking.start"\n[streams.t.match]\nserver_port = [25]\n')
    from sendguard.cli.settings import load

    stream = load(cfg).streams[0]
    assert stream.start_file == tmp_path / "trucking.start"


@pytest.mark.parametrize("content, reason", [(None, "does not exist"), ("yesterday", "does not hold a Unix epoch"), ("-5", "implausible")])
def test_unreadable_stamp_file_stops_start_up(tmp_path, content, reason):
    stamp = tmp_path / "s.start"
    if content is not None:
        stamp.write_text(content)
    with pytest.raises(ConfigError, match=rf"streams\.s\.start_file: .*{reason}"):
        parse({"streams": {"s": {"match": {"server_port": [25]}, "ramp": [[0, 5]], "start_file": str(stamp)}}})


def test_read_stamp_accepts_epoch_with_newline(tmp_path):
    stamp = tmp_path / "s"
    stamp.write_text("1763769600\n")
    assert read_stamp(stamp) == 1763769600.0
