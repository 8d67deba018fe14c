"""The decision for each request: stream choice, family hold, caps at END-OF-MESSAGE, wrong hooks."""

from __future__ import annotations

import datetime as dt

import pytest

from sendguard_policyd.decide import Decider
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_testing.policy_client import postfix_message, postfix_request

def trucking(cap: int = 3, daily: int = 4000, over_cap: str = "defer") -> dict:
    return {
        "match": {"server_port": [25], "client_address": ["172.18.0.5/32"]},
        "ramp": [[0, cap]],
        "daily_cap": daily,
        "start_date": dt.date(2026, 1, 1),
        "over_cap": over_cap,
    }


NOW = dt.datetime(2026, 3, 2, 10, 59, 0, tzinfo=dt.timezone.utc).timestamp()


@pytest.fixture
def decider(make_config):
    def build(streams=None, **policyd):
        config = make_config(streams if streams is not None else {"trucking": trucking(cap=3)}, **policyd)
        store = SQLiteCounterStore(config.policyd.database)
        return Decider(config.policyd, config.streams, store)

    return build


def eom(instance: str, count: int = 1, recipient: str = "carrier@example.com", **values: str) -> dict[str, str]:
    return dict(
        postfix_request(
            protocol_state="END-OF-MESSAGE",
            instance=instance,
            queue_id=f"Q{instance.upper()}",
            recipient_count=str(count),
            recipient=recipient if count == 1 else "",
            **values,
        )
    )


def test_rcpt_of_ordinary_mail_is_dunno(decider):
    d = decider()
    assert d.decide(dict(postfix_request()), NOW).action == "DUNNO"


def test_cap_at_end_of_message_names_stream_cap_and_when(decider, policyd_log):
    d = decider()
    for i in range(3):
        assert d.decide(eom(f"m{i}"), NOW + i).action == "DUNNO"
    action = d.decide(eom("m3"), NOW + 10).action
    assert action.startswith("DEFER_IF_PERMIT 4.7.1 ")
    assert "stream trucking" in action and "hourly cap of 3" in action
    assert "room frees at 2026-03-02T11:59:01Z" in action
    # A counted pass is traffic (DEBUG); a deferral is a decision (INFO).
    assert policyd_log.matching("DEBUG: QM0: pass: stream trucking: 1 recipient(s) counted, hour 1/3")
    assert not [line for line in policyd_log.lines if line.startswith("INFO: ") and ": pass: " in line]
    assert policyd_log.matching("INFO: QM3: defer: stream trucking")


def test_multi_recipient_message_counts_each_recipient(decider):
    d = decider({"trucking": trucking(cap=5)})
    assert d.decide(eom("a", count=4), NOW).action == "DUNNO"
    assert d.decide(eom("b", count=2), NOW + 1).action.startswith("DEFER_IF_PERMIT 4.7.1")
    assert d.decide(eom("c", count=1), NOW + 2).action == "DUNNO"
    assert d.store.windows("trucking", NOW + 3).hour == 5


def test_message_larger_than_the_cap_says_it_can_never_pass(decider):
    d = decider()
    action = d.decide(eom("big", count=4), NOW).action
    assert action.startswith("DEFER_IF_PERMIT 4.7.1") and "more than the cap of 3" in action


def test_rcpt_to_the_yahoo_family_is_held_whatever_the_stream(decider):
    d = decider()
    in_stream = d.decide(dict(postfix_request(recipient="bob@yahoo.co.uk", instance="y1")), NOW)
    assert in_stream.action.startswith("HOLD ") and "yahoo.*" in in_stream.action and in_stream.stream == "trucking"
    no_stream = d.decide(
        dict(postfix_request(recipient="bob@aol.com", client_address="127.0.0.1", instance="y2")), NOW
    )
    assert no_stream.action.startswith("HOLD ") and "aol.*" in no_stream.action and no_stream.stream == "none"


def test_held_message_is_not_counted_at_end_of_message(decider):
    from sendguard_policyd import metrics

    holds = metrics.HOLDS.labels("family")
    before = holds._value.get()
    d = decider()
    requests = postfix_message("held", "QHELD", ["a@example.com", "bob@yahoo.com", "eve@ymail.com"])
    answers = [d.decide(dict(r), NOW).action for r in requests]
    assert answers[0] == "DUNNO" and answers[1].startswith("HOLD ") and answers[2].startswith("HOLD ")
    # END-OF-MESSAGE names no recipient (there are three): the store knows it was held, so it is
    # not counted, and DUNNO leaves Postfix's hold in place.
    assert answers[3] == "DUNNO"
    assert holds._value.get() == before + 1  # one message held, whatever the number of family recipients
    # Single recipient seen at RCPT: END-OF-MESSAGE passes it uncounted too.
    single = [d.decide(dict(r), NOW).action for r in postfix_message("one", "QONE", ["x@att.net"])]
    assert single[0].startswith("HOLD ") and single[1] == "DUNNO"
    # No RCPT hook at all: END-OF-MESSAGE names the single recipient and holds it itself.
    assert d.decide(eom("solo", recipient="x@sbcglobal.net"), NOW).action.startswith("HOLD ")
    assert holds._value.get() == before + 3
    assert d.store.windows("trucking", NOW + 1).hour == 0


def test_postfix_retry_of_a_counted_request_passes_without_counting(decider):
    d = decider({"trucking": trucking(cap=2)})
    assert d.decide(eom("r"), NOW).action == "DUNNO"
    assert d.decide(eom("r"), NOW + 5).action == "DUNNO"
    assert d.decide(eom("s"), NOW + 6).action == "DUNNO"
    assert d.store.windows("trucking", NOW + 7).hour == 2


def test_unmatched_mail_is_not_capped_by_default_and_can_be_deferred(decider):
    local = {"client_address": "127.0.0.1"}
    d = decider()
    for i in range(10):
        assert d.decide(eom(f"u{i}", **local), NOW).action == "DUNNO"
    strict = decider(unmatched="defer")
    assert strict.decide(eom("u", **local), NOW).action.startswith("DEFER_IF_PERMIT 4.7.1")


def test_stream_chosen_by_port_context_sender_and_sasl(decider):
    streams = {
        "healthcare": {"match": {"server_port": [2526]}, "ramp": [[0, 1]], "start_date": dt.date(2026, 1, 1),
                       "over_cap": "defer"},
        "bulk": {"match": {"policy_context": ["bulk"], "server_port": [10025]}, "hourly_ceiling": 1, "over_cap": "defer"},
        "app": {"match": {"sender": ["app.example.net"], "server_port": [587]}, "hourly_ceiling": 1, "over_cap": "defer"},
        "sasl": {"match": {"sasl_username": ["cron"], "server_port": [465]}, "hourly_ceiling": 1, "over_cap": "defer"},
    }
    d = decider(streams)
    cases = [
        ("healthcare", {"server_port": "2526"}),
        ("bulk", {"policy_context": "bulk", "server_port": "10025"}),
        ("app", {"sender": "Alerts@APP.example.net", "server_port": "587"}),
        ("sasl", {"sasl_username": "cron", "server_port": "465"}),
    ]
    for i, (name, values) in enumerate(cases):
        assert d.decide(eom(f"first{i}", **values), NOW).stream == name
        second = d.decide(eom(f"second{i}", **values), NOW)
        assert second.action.startswith(f"DEFER_IF_PERMIT 4.7.1 sendguard: stream {name} ")


def test_unexpected_protocol_state_is_warned_once_and_counted(decider, policyd_log):
    from sendguard_policyd import metrics

    before = metrics.UNEXPECTED_STATES.labels("DATA")._value.get()
    d = decider()
    for i in range(5):
        assert d.decide(dict(postfix_request(protocol_state="DATA", instance=f"d{i}")), NOW).action == "DUNNO"
    assert metrics.UNEXPECTED_STATES.labels("DATA")._value.get() == before + 5
    warnings = policyd_log.matching("protocol_state DATA")
    assert len(warnings) == 1 and "unexpected restriction list" in warnings[0]
    # A hook listed in expected_states is not warned about.
    quiet = decider(expected_states=["RCPT", "END-OF-MESSAGE", "DATA"])
    quiet.decide(dict(postfix_request(protocol_state="DATA")), NOW)
    assert len(policyd_log.matching("protocol_state DATA")) == 1


def test_missing_recipient_count_counts_one(decider, policyd_log):
    d = decider({"trucking": trucking(cap=1)})
    req = eom("nc")
    req["recipient_count"] = ""
    assert d.decide(req, NOW).action == "DUNNO"
    assert d.store.windows("trucking", NOW).hour == 1
    assert policyd_log.matching("counting 1 recipient")


def test_store_failure_defers_and_is_counted_in_the_metric(decider, policyd_log, monkeypatch):
    import fcntl
    import os

    from sendguard_policyd import metrics
    from sendguard_policyd.store import sqlite_lock

    d = decider()
    monkeypatch.setattr(sqlite_lock, "LOCK_TIMEOUT", 0.1)
    before = metrics.STORE_ERRORS._value.get()
    other = os.open(d.store.path + ".lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        action = d.decide(eom("x"), NOW).action
        # The family hold needs no store to be answered.
        held = d.decide(dict(postfix_request(recipient="a@yahoo.com", instance="h")), NOW).action
    finally:
        os.close(other)
    assert action == "DEFER_IF_PERMIT 4.3.0 sendguard: counter store unavailable, try again later"
    assert held.startswith("HOLD ")
    assert metrics.STORE_ERRORS._value.get() == before + 2
    assert policyd_log.matching("QX: defer: stream trucking: counter store failed")


def test_one_summary_line_per_busy_stream_per_interval(decider, policyd_log):
    streams = {"trucking": trucking(cap=3), "healthcare": {"match": {"server_port": [2526]}, "hourly_ceiling": 100}}
    d = decider(streams)
    for i in range(3):
        assert d.decide(eom(f"m{i}", count=1), NOW + i).action == "DUNNO"
    assert d.decide(eom("m3"), NOW + 10).action.startswith("DEFER_IF_PERMIT")
    for rcpt in ("bob@yahoo.com", "eve@yahoo.com"):  # one held message, two family recipients
        assert d.decide(dict(postfix_request(recipient=rcpt, instance="y")), NOW + 20).action.startswith("HOLD ")
    d.tick(NOW + 599)  # the interval runs from the first request on
    assert not policyd_log.matching("summary:")
    d.tick(NOW + 600)
    assert policyd_log.matching("summary:") == [
        "INFO: summary: stream trucking: 3 recipient(s) in 3 message(s) counted in the last 10 min,"
        " 1 deferred, 1 held; hour 3/3, day 3/4000, warmup day 60"
    ]  # and no line for healthcare, which had no traffic
    d.tick(NOW + 1800)  # a quiet interval logs nothing
    assert len(policyd_log.matching("summary:")) == 1
    # The next interval starts with the next request, and the request after it ends that interval
    # (a daemon's sweep ticks every second; a test's clock only moves with its requests).
    assert d.decide(eom("h1", count=2, server_port="2526", client_address="10.0.0.1"), NOW + 2000).action == "DUNNO"
    assert d.decide(eom("h2", server_port="2526", client_address="10.0.0.1"), NOW + 2000 + 900).action == "DUNNO"
    assert policyd_log.matching("summary: stream healthcare") == [
        "INFO: summary: stream healthcare: 2 recipient(s) in 1 message(s) counted in the last 15 min,"
        " 0 deferred, 0 held; hour 2/100, day 2/unlimited, warmup day -"
    ]


def test_the_held_message_is_named_by_queue_id_at_info_its_counted_neighbours_at_debug(decider, policyd_log):
    d = decider()
    for request in postfix_message("h", "QHELD1", ["a@example.com", "bob@yahoo.com"]):
        d.decide(dict(request), NOW)
    assert d.decide(eom("c"), NOW + 1).action == "DUNNO"
    assert policyd_log.matching("INFO: QHELD1: pass: stream trucking: held for the yahoo family at RCPT, not counted")
    assert policyd_log.matching("DEBUG: QC: pass: stream trucking: 1 recipient(s) counted")
