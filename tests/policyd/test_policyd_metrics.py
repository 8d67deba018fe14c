"""The Prometheus metrics, scraped for real over HTTP from the shared endpoint."""

from __future__ import annotations

import datetime as dt
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sendguard import metrics_http
from sendguard_policyd import service
from sendguard_testing.policy_client import PolicyClient, postfix_message, postfix_request


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def endpoint(port):
    server = metrics_http.serve(f"127.0.0.1:{port}")
    yield port
    server.shutdown()
    server.server_close()


def test_metrics_answer_the_operators_questions(make_config, endpoint):
    start = time.time() - 2.5 * 86400  # warmup day 2
    config = make_config(
        {
            "trucking": {
                "match": {"server_port": [25]},
                "ramp": [[0, 50], [2, 3]],
                "daily_cap": 4000,
                "start_date": dt.datetime.fromtimestamp(start, dt.timezone.utc),
                "over_cap": "defer",
            },
            "healthcare": {"match": {"server_port": [2526]}, "hourly_ceiling": 1000, "daily_cap": 10000},
        }
    )
    before = scrape(endpoint)
    handle = service.start(config.config, config.policyd)
    try:
        with PolicyClient((handle.host, handle.port)) as client:
            for i in range(4):
                for req in postfix_message(f"t{i}", f"QT{i}", ["a@example.com", "b@example.com"] if i == 0 else ["a@example.com"]):
                    client.ask(req)
            for req in postfix_message("y", "QY", ["x@yahoo.fr"]):
                client.ask(req)
            client.ask(postfix_request(protocol_state="DATA"))
            client.send_raw(b"junk\n\n")
            client.read_reply()
        after = scrape(endpoint)
    finally:
        handle.stop()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # Live per-stream gauges, read from the store at scrape time.
    assert value(after, "sendguard_policyd_rolling_hour_recipients", stream="trucking") == 3
    assert value(after, "sendguard_policyd_rolling_day_recipients", stream="trucking") == 3
    assert value(after, "sendguard_policyd_hourly_cap_recipients", stream="trucking") == 3
    assert value(after, "sendguard_policyd_daily_cap_recipients", stream="trucking") == 4000
    assert value(after, "sendguard_policyd_warmup_day", stream="trucking") == 2
    assert value(after, "sendguard_policyd_hourly_cap_recipients", stream="healthcare") == 1000
    assert value(after, "sendguard_policyd_rolling_hour_recipients", stream="healthcare") == 0
    assert value(after, "sendguard_policyd_store_up") == 1
    # Counters.
    assert delta("sendguard_policyd_decisions_total", stream="trucking", action="dunno") == 3 + 2 + 1 + 1 + 1 + 1  # t0 (2 rcpt), t1, t2/t3 RCPT, DATA, yahoo EOM
    assert delta("sendguard_policyd_decisions_total", stream="trucking", action="defer_if_permit") == 2
    assert delta("sendguard_policyd_decisions_total", stream="trucking", action="hold") == 1
    assert delta("sendguard_policyd_holds_total", reason="family") == 1  # messages held
    assert delta("sendguard_policyd_counted_recipients_total", stream="trucking") == 3
    assert delta("sendguard_policyd_bad_requests_total", reason="garbage") == 1
    assert delta("sendguard_policyd_unexpected_protocol_state_total", protocol_state="DATA") == 1
    assert delta("sendguard_policyd_request_duration_seconds_count") == 8 + 2 + 1 + 1 + 1 - 1
    # Once stopped, this process no longer exports the per-stream gauges.
    assert ("sendguard_policyd_store_up", ()) not in scrape(endpoint)


def test_the_held_backlog_is_exported_per_stream(make_config, endpoint):
    config = make_config({"trucking": {"match": {"server_port": [25]}, "hourly_ceiling": 1}})
    handle = service.start(config.config, config.policyd)
    try:
        with PolicyClient((handle.host, handle.port)) as client:
            answers = [[client.ask(r) for r in postfix_message(f"h{i}", f"QH{i}", ["a@example.com"])][-1]
                       for i in range(3)]  # fmt: skip
        after = scrape(endpoint)
    finally:
        handle.stop()
    assert answers[0] == "DUNNO" and all(a.startswith("HOLD sendguard: stream trucking:") for a in answers[1:])
    assert value(after, "sendguard_policyd_held_backlog_messages", stream="trucking") == 2
    assert value(after, "sendguard_policyd_held_backlog_recipients", stream="trucking") == 2
    assert 0 <= value(after, "sendguard_policyd_held_oldest_age_seconds", stream="trucking") < 60
    assert value(after, "sendguard_policyd_rolling_hour_recipients", stream="trucking") == 1  # holds spend nothing


def test_pauses_are_exported_per_stream_and_operator(make_config, endpoint):
    from sendguard_policyd.store import Pause

    config = make_config({"trucking": {"match": {"server_port": [25]}, "hourly_ceiling": 100},
                          "healthcare": {"match": {"server_port": [2526]}, "hourly_ceiling": 100}})  # fmt: skip
    handle = service.start(config.config, config.policyd)
    try:
        before = scrape(endpoint)
        handle.store.pause(Pause("trucking", "google", time.time(), None, "5 replies matched gmail_unsolicited",
                                 "gmail_unsolicited"))  # fmt: skip
        handle.decider.pauses.refresh()  # what its refresher does every second
        with PolicyClient((handle.host, handle.port)) as client:
            answers = [[client.ask(r) for r in postfix_message(f"p{i}", f"QP{i}", [rcpt])][-1]
                       for i, rcpt in enumerate(["a@gmail.com", "b@gmail.com", "c@outlook.com"])]  # fmt: skip
        after = scrape(endpoint)
    finally:
        handle.stop()
    assert [a.split(" ")[0] for a in answers] == ["HOLD", "HOLD", "DUNNO"]
    assert value(after, "sendguard_policyd_paused", stream="trucking", operator="google") == 1
    assert value(after, "sendguard_policyd_paused", stream="trucking", operator="all") == 0
    assert ("sendguard_policyd_paused", (("operator", "microsoft"), ("stream", "healthcare"))) in after  # 0, exported
    assert value(after, "sendguard_policyd_paused_held_messages", stream="trucking") == 2
    assert value(after, "sendguard_policyd_held_backlog_messages", stream="trucking") == 2
    labels = dict(stream="trucking", operator="google", rule="gmail_unsolicited")
    assert value(after, "sendguard_policyd_pauses_total", **labels) - value(before, "sendguard_policyd_pauses_total", **labels) == 1
    assert value(after, "sendguard_policyd_holds_total", reason="pause") - value(before, "sendguard_policyd_holds_total", reason="pause") == 2
