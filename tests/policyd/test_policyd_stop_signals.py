"""Stop-signal rules: real deliveries counted per rolling hour into pauses in a real store, and their config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError
from sendguard_policyd import metrics
from sendguard_policyd.stop_signal_rules import BUILTIN, PAUSE_STREAM, Rule, reply_text
from sendguard_policyd.stop_signals import StopSignals
from sendguard_policyd.store import Pause
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.watch import Delivery

T0 = 1_772_000_000.0
STREAMS = ("trucking", "healthcare")

# Replies as Postfix logs them (a multi-line reply joined with spaces), from the brief and the anchors.
GMAIL_UNSOLICITED = (
    "host gmail-smtp-in.l.google.com[142.250.102.26] said: 550-5.7.1 [203.0.113.94] Gmail has detected that"
    " this message is 550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail, 550-5.7.1"
    " this message has been blocked. 550 5.7.1 https://support.google.com/mail/?p=UnsolicitedMessageError"
    " a1-20020a.5 - gsmtp (in reply to end of DATA command)"
)
GMAIL_SPLIT = (  # the same words broken across two lines in another place (a longer IP)
    "host gmail-smtp-in.l.google.com[142.250.102.26] said: 550-5.7.1 [2001:db8::94] Our system has detected that"
    " this message is likely 550-5.7.1 unsolicited mail. (in reply to end of DATA command)"
)
YAHOO_TSS04 = (
    "host mta6.am0.yahoodns.net[67.195.204.72] said: 421 4.7.0 [TSS04] Messages from 203.0.113.94 temporarily"
    " deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
    " (in reply to MAIL FROM command)"
)
MS_BUSY = (
    "host example-com.mail.protection.outlook.com[52.101.1.1] said: 451 4.7.500 Server busy. Please try again later"
    " from [203.0.113.94]. (S77719) [BN1NAM02FT012.eop-nam02.prod.protection.outlook.com] (in reply to MAIL FROM command)"
)
MS_S3150 = (
    "host outlook-com.olc.protection.outlook.com[52.101.2.2] said: 550 5.7.1 Unfortunately, messages from"
    " [203.0.113.94] weren't sent. Please contact your Internet service provider since part of their network is on"
    " our block list (S3150). (in reply to MAIL FROM command)"
)


def delivery(reply: str, at: float, *, stream: str = "trucking", operator: str = "google", status: str = "bounced",
             dsn: str = "5.7.1", qid: str = "4F2A1C0D13", domain: str = "gmail.com") -> Delivery:  # fmt: skip
    relay = {"google": "gmail-smtp-in.l.google.com", "yahoo": "mta6.am0.yahoodns.net"}.get(operator, "mx.example.org")
    return Delivery(at, qid, f"carrier@{domain}", domain, relay, "192.0.2.1", status, dsn, reply, stream, operator, "reputation")


class StepBacks:
    """A recording on_step_back hook (the warmup's side lives with the ramp)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str, float]] = []

    def __call__(self, stream: str, days: int, rule: str, now: float) -> None:
        self.calls.append((stream, days, rule, now))


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteCounterStore(str(tmp_path / "policyd.sqlite"))
    yield s
    s.close()


def engine(store, rules=None, step_back=None, now=T0) -> StopSignals:
    return StopSignals(rules or list(BUILTIN.values()), STREAMS, store, step_back, clock=lambda: now)


def test_reply_text_takes_out_the_continuation_codes():
    assert "likely unsolicited mail" in reply_text(GMAIL_UNSOLICITED)
    assert "likely unsolicited mail" in reply_text(GMAIL_SPLIT)
    assert reply_text(GMAIL_SPLIT).count("550-5.7.1") == 1  # the first code stays


def test_gmail_pauses_only_googles_mail_at_the_threshold_and_steps_the_ramp_back(store):
    steps = StepBacks()
    signals = engine(store, step_back=steps)
    before = metrics.STOP_SIGNAL_MATCHES.labels("trucking", "gmail_unsolicited")._value.get()
    for n in range(4):
        signals.delivered(delivery(GMAIL_UNSOLICITED if n % 2 else GMAIL_SPLIT, T0 + n * 60))
    assert store.pauses(T0 + 300) == []  # four in an hour: under the threshold of five
    signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + 600, qid="4F2A1C0D99"))
    [p] = store.pauses(T0 + 600)
    assert (p.stream, p.operator, p.rule, p.since, p.until) == ("trucking", "google", "gmail_unsolicited", T0 + 600, T0 + 600 + 2 * 86400)
    assert p.reason.startswith("5 replies within an hour matched gmail_unsolicited, the last from gmail-smtp-in.l.google.com:")
    assert "550-5.7.1 [203.0.113.94] Gmail has detected" in p.reason
    assert steps.calls == [("trucking", 2, "gmail_unsolicited", T0 + 600)]
    assert metrics.STOP_SIGNAL_MATCHES.labels("trucking", "gmail_unsolicited")._value.get() == before + 5
    # Five more extend the pause (from the last one) but start no new one: the ramp steps back once.
    for n in range(5):
        signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + 3600 + n))
    [p] = store.pauses(T0 + 3600)
    assert (p.since, p.until) == (T0 + 600, T0 + 3604 + 2 * 86400)
    assert len(steps.calls) == 1


def test_the_hour_rolls(store):
    signals = engine(store)
    for n in range(4):
        signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + n * 900))  # 0, 15, 30, 45 min
    signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + 3600))  # the first has left the hour: four in it
    assert store.pauses(T0 + 3600) == []
    signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + 3700))  # five in the hour from 15 min on
    assert [p.operator for p in store.pauses(T0 + 3700)] == ["google"]


def test_counts_are_per_stream_and_per_operator(store):
    rule = Rule("any_5_7_1", r"5\.7\.1", 2, "pause_operator", 3600.0, dsn="5.7.1")
    signals = engine(store, [rule])
    signals.delivered(delivery("550 5.7.1 no", T0, operator="google"))
    signals.delivered(delivery("550 5.7.1 no", T0 + 1, operator="microsoft"))
    signals.delivered(delivery("550 5.7.1 no", T0 + 2, operator="google", stream="healthcare"))
    assert store.pauses(T0 + 3) == []  # one each: no pair reached two
    signals.delivered(delivery("550 5.7.1 no", T0 + 4, operator="microsoft"))
    assert [(p.stream, p.operator) for p in store.pauses(T0 + 5)] == [("trucking", "microsoft")]


def test_yahoo_tss04_pauses_the_whole_stream_at_once(store):
    signals = engine(store)
    signals.delivered(delivery(YAHOO_TSS04, T0, operator="yahoo", status="deferred", dsn="4.7.0", domain="yahoo.com"))
    [p] = store.pauses(T0)
    assert (p.stream, p.operator, p.rule, p.until) == ("trucking", "", "yahoo_tss04", T0 + 3 * 86400)


def test_microsoft_rules(store):
    signals = engine(store)
    for n in range(19):
        signals.delivered(delivery(MS_BUSY, T0 + n, operator="microsoft", status="deferred", dsn="4.7.500", domain="outlook.com"))
    assert store.pauses(T0 + 20) == []
    signals.delivered(delivery(MS_BUSY, T0 + 20, operator="microsoft", status="deferred", dsn="4.7.500", domain="outlook.com"))
    [p] = store.pauses(T0 + 20)
    assert (p.operator, p.rule, p.until) == ("microsoft", "microsoft_server_busy", T0 + 20 + 7200)
    # S3150 matches two rules (its code and its words): each counts and fires at the third; one pause
    # results, the second rule's (a pause that lasts as long takes the place of the one in force).
    for n in range(3):
        signals.delivered(delivery(MS_S3150, T0 + 100 + n, stream="healthcare", operator="microsoft", domain="hotmail.com"))
    [p] = [p for p in store.pauses(T0 + 103) if p.stream == "healthcare"]
    assert (p.operator, p.rule, p.since, p.until) == ("microsoft", "microsoft_block_list", T0 + 102, T0 + 102 + 86400)


def test_what_is_not_a_signal_is_not_counted(store):
    signals = engine(store)
    sent = dataclasses.replace(delivery(GMAIL_UNSOLICITED, T0), status="sent")
    for n in range(10):
        signals.delivered(dataclasses.replace(sent, at=T0 + n))  # sent: never a stop signal
        signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + n, stream="none"))  # mail in no stream: never paused
        signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + n, operator="microsoft"))  # the Gmail rule is Google's
        signals.delivered(delivery(YAHOO_TSS04, T0 + n, operator="yahoo", status="bounced"))  # TSS04 rules: deferrals
    assert store.pauses(T0 + 10) == []


def test_a_rule_overridden_in_the_config_and_one_disabled(store, tmp_path):
    settings = parse(
        {"stop_signals": {"yahoo_tss04": {"threshold": 3, "duration": "6h"}, "gmail_unsolicited": {"enabled": False},
                          "dead_tenant": {"pattern": r"4\.4\.4", "threshold": 2, "action": "pause_stream",
                                          "duration": "until_resumed", "status": ["deferred"]}}},
        str(tmp_path / "sendguard.toml"),
    )  # fmt: skip
    rules = {r.name: r for r in settings.stop_signals.rules}
    assert rules["yahoo_tss04"].pattern == BUILTIN["yahoo_tss04"].pattern  # what the table does not give stays
    signals = engine(store, list(rules.values()))
    for n in range(10):
        signals.delivered(delivery(GMAIL_UNSOLICITED, T0 + n))
    assert store.pauses(T0 + 10) == []  # disabled
    yahoo = dict(operator="yahoo", status="deferred", dsn="4.7.0", domain="yahoo.com")
    signals.delivered(delivery(YAHOO_TSS04, T0 + 20, **yahoo))
    signals.delivered(delivery(YAHOO_TSS04, T0 + 21, **yahoo))
    assert store.pauses(T0 + 21) == []  # the built-in's one is three now
    signals.delivered(delivery(YAHOO_TSS04, T0 + 22, **yahoo))
    [p] = store.pauses(T0 + 22)
    assert (p.rule, p.until) == ("yahoo_tss04", T0 + 22 + 6 * 3600)
    store.resume("trucking", "", T0 + 30)
    for n in range(2):
        signals.delivered(delivery("451 4.4.4 dead tenant", T0 + 40 + n, stream="healthcare", status="deferred", dsn="4.4.4"))
    [p] = store.pauses(T0 + 50)
    assert (p.stream, p.rule, p.until) == ("healthcare", "dead_tenant", None)


def test_a_signal_older_than_its_pause_pauses_nothing(store, policyd_log):
    # The log is read two days late (the watcher was down): a 2-hour pause would be over already.
    signals = engine(store, now=T0 + 2 * 86400)
    for n in range(20):
        signals.delivered(delivery(MS_BUSY, T0 + n, operator="microsoft", status="deferred", dsn="4.7.500"))
    assert store.pauses(T0 + 20) == []
    assert policyd_log.matching("stop signal microsoft_server_busy for stream trucking's mail to microsoft at")


def test_a_store_that_cannot_take_the_pause_tries_again_at_the_next_match(policyd_log):
    class Refusing:
        def __init__(self) -> None:
            self.refuse = True
            self.paused: list[Pause] = []

        def pauses(self, now: float) -> list[Pause]:
            return []

        def pause(self, p: Pause) -> None:
            from sendguard_policyd.store import StoreError

            if self.refuse:
                raise StoreError("counter store /x: disk I/O error")
            self.paused.append(p)

    refusing = Refusing()
    signals = StopSignals([BUILTIN["yahoo_tss04"]], STREAMS, refusing, clock=lambda: T0)
    yahoo = dict(operator="yahoo", status="deferred", dsn="4.7.0")
    signals.delivered(delivery(YAHOO_TSS04, T0, **yahoo))
    assert policyd_log.matching("stop signal yahoo_tss04: cannot pause stream trucking: counter store /x: disk I/O error")
    refusing.refuse = False
    signals.delivered(delivery(YAHOO_TSS04, T0 + 1, **yahoo))
    assert [p.rule for p in refusing.paused] == ["yahoo_tss04"]


def test_config_errors_name_file_key_and_reason_all_at_once(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse(
            {"stop_signals": {
                "mine": {"pattern": "[TSS04", "threshold": 2, "action": "stop_everything", "duration": "3 days"},
                "yahoo_tss04": {"duration": "forever", "operator": "gogle"},
                "other": {"threshold": 1},
            }},
            "/etc/sendguard.toml",
        )  # fmt: skip
    lines = [str(e) for e in caught.value.all()]
    assert "/etc/sendguard.toml: stop_signals.mine.pattern: '[TSS04' is not a regular expression:" in lines[0]
    assert lines[1] == "/etc/sendguard.toml: stop_signals.mine.action: 'stop_everything' is not one of pause_stream, pause_operator"
    assert lines[2].startswith("/etc/sendguard.toml: stop_signals.mine.duration: '3 days' is not a duration")
    assert lines[3].startswith("/etc/sendguard.toml: stop_signals.yahoo_tss04.duration: 'forever' is not a duration")
    assert lines[4].startswith("/etc/sendguard.toml: stop_signals.yahoo_tss04.operator: 'gogle' is not a receiving operator")
    assert "/etc/sendguard.toml: stop_signals.other.pattern: is required" in lines
    assert len(lines) == 8  # other: pattern, action, duration required too


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_builtin_rules_are_the_documented_table():
    from sendguard.timetext import format_duration

    rows = {}
    for line in (DOCS / "policyd.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 9 and cells[0].strip("`") in BUILTIN:
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(BUILTIN)
    for name, rule in BUILTIN.items():
        _, operator, _, pattern, threshold, action, duration, step_back, _ = rows[name]
        assert operator == rule.operator
        assert pattern.strip("`").replace("\\|", "|") == rule.pattern
        assert (int(threshold), action.strip("`"), duration, int(step_back)) == (
            rule.threshold, rule.action, format_duration(rule.duration), rule.step_back_days
        )


def test_the_documented_config_example_is_valid(tmp_path):
    import tomllib

    text = (DOCS / "config.md").read_text().split("## `[stop_signals.NAME]`")[1]
    example = text.split("```toml")[1].split("```")[0]
    rules = {r.name: r for r in parse(tomllib.loads(example), str(tmp_path / "x.toml")).stop_signals.rules}
    assert rules["yahoo_tss04"].threshold == 3 and not rules["microsoft_server_busy"].enabled
    assert rules["dead_tenant"].matches(
        delivery("451 4.4.4 tenant has been disabled", T0, operator="microsoft", status="deferred", dsn="4.4.4"),
        reply_text("451 4.4.4 tenant has been disabled"),
    )
