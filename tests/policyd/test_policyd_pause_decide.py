"""The decision under pauses: a paused stream's (or operator's) new mail is held, recorded, never counted."""

from __future__ import annotations

import datetime as dt

import pytest

from sendguard_policyd import metrics
from sendguard_policyd.decide import Decider
from sendguard_policyd.store import HOLD_PAUSE, MANUAL, STATE_HELD, UNKNOWN_OPERATOR, Pause
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_testing.policy_client import postfix_message, postfix_request

NOW = dt.datetime(2026, 3, 2, 10, 59, 0, tzinfo=dt.timezone.utc).timestamp()
TRUCKING = {"match": {"server_port": [25]}, "ramp": [[0, 100]], "start_date": dt.date(2026, 1, 1)}


class CountingStore(SQLiteCounterStore):
    """The real store, counting how often the pauses are read from it."""

    reads = 0

    def pauses(self, now: float) -> list[Pause]:
        self.reads += 1
        return super().pauses(now)


@pytest.fixture
def decider(make_config):
    made: list[Decider] = []

    def build() -> Decider:
        config = make_config({"trucking": TRUCKING, "healthcare": {**TRUCKING, "match": {"server_port": [2526]}}})
        d = Decider(config.policyd, config.streams, CountingStore(config.policyd.database))
        made.append(d)
        return d

    yield build
    for d in made:
        d.close()
        d.store.close()


def eom(instance: str, recipient: str = "carrier@example.com", count: int = 1, **values: str) -> dict[str, str]:
    return dict(postfix_request(protocol_state="END-OF-MESSAGE", instance=instance, queue_id=f"Q{instance.upper()}",
                                recipient=recipient if count == 1 else "", recipient_count=str(count), **values))  # fmt: skip


def pause(d: Decider, operator: str = "", until: float | None = NOW + 3600, rule: str = "yahoo_tss04",
          reason: str = "1 reply within an hour matched yahoo_tss04: 421 4.7.0 [TSS04] Messages from 203.0.113.94 temporarily deferred") -> None:  # fmt: skip
    d.store.pause(Pause("trucking", operator, NOW - 60, until, reason, rule))
    d.pauses.refresh(NOW)


def test_a_paused_stream_holds_its_new_mail_naming_the_signal_and_counts_none(decider, policyd_log):
    d = decider()
    pause(d)
    held = d.decide(eom("a"), NOW)
    assert held.label == "hold"
    assert held.action == (
        "HOLD sendguard: stream trucking is paused (rule yahoo_tss04, until 2026-03-02T11:59:00Z): 1 reply within an"
        " hour matched yahoo_tss04: 421 4.7.0 [TSS04] Messages from 203.0.113.94 temporarily deferred;"
        " held, released when the pause ends"
    )
    [record] = d.store.held_messages("trucking")
    assert (record.queue_id, record.reason, record.state) == ("QA", HOLD_PAUSE, STATE_HELD)
    assert d.store.windows("trucking", NOW).hour == 0
    assert policyd_log.matching("QA: hold: stream trucking is paused (rule yahoo_tss04, until 2026-03-02T11:59:00Z)")
    assert d.store.held_backlog()["trucking"].paused == 1
    # Another stream is not paused; RCPT is not where a pause acts.
    assert d.decide(eom("b", server_port="2526"), NOW).action == "DUNNO"
    assert d.decide(dict(postfix_request()), NOW).action == "DUNNO"
    # Resumed: the next message passes and is counted.
    d.store.resume("trucking", "", NOW + 10)
    d.pauses.refresh(NOW + 10)
    assert d.decide(eom("c"), NOW + 11).action == "DUNNO"
    assert d.store.windows("trucking", NOW + 11).hour == 1


def test_a_pause_ends_on_time_between_two_reads_of_the_store(decider):
    d = decider()
    pause(d, until=NOW + 30)
    assert d.decide(eom("a"), NOW + 29).label == "hold"
    assert d.decide(eom("b"), NOW + 30).action == "DUNNO"  # no refresh in between


def test_the_pauses_are_never_read_from_the_store_per_request(decider):
    d = decider()
    pause(d)
    reads = d.store.reads
    for n in range(50):
        d.decide(eom(f"m{n}"), NOW)
    assert d.store.reads == reads


def test_an_operator_pause_holds_only_the_mail_to_that_operator(decider):
    d = decider()
    pause(d, operator="google", rule="gmail_unsolicited", reason="5 replies within an hour matched gmail_unsolicited")
    held = d.decide(eom("g", recipient="bob@gmail.com"), NOW)
    assert held.action.startswith(
        "HOLD sendguard: stream trucking's mail to google is paused (rule gmail_unsolicited, until 2026-03-02T11:59:00Z)"
    )
    assert d.decide(eom("m", recipient="bob@outlook.com"), NOW).action == "DUNNO"
    assert d.decide(eom("o", recipient="bob@example.org"), NOW).action == "DUNNO"  # no MX check: "other"
    [record] = d.store.held_messages("trucking")
    assert (record.queue_id, record.operators) == ("QG", ("google",))
    assert d.store.windows("trucking", NOW).hour == 2


def test_a_message_with_one_paused_recipient_among_several_is_held_whole(decider):
    d = decider()
    pause(d, operator="google", rule=MANUAL, reason="checking Postmaster Tools")
    requests = [dict(r) for r in postfix_message("multi", "QMULTI", ["a@outlook.com", "b@gmail.com", "c@example.org"])]
    assert [d.decide(r, NOW).action for r in requests[:3]] == ["DUNNO"] * 3  # RCPT: noted, not decided
    assert d.decide(requests[3], NOW).action.startswith("HOLD sendguard: stream trucking's mail to google is paused")
    [record] = d.store.held_messages("trucking")
    assert (record.recipients, record.operators) == (3, ("google", "microsoft", "other"))
    # Its recipients' operators unknown (its RCPT requests went to another daemon): held too, for any operator.
    held = d.decide(eom("elsewhere", count=2), NOW)
    assert "a recipient's operator is not known yet" in held.action
    assert {m.queue_id: m.operators for m in d.store.held_messages("trucking")}["QELSEWHERE"] == (UNKNOWN_OPERATOR,)


def test_the_family_hold_comes_first_and_retries_keep_their_answer(decider):
    d = decider()
    d.decide(eom("before"), NOW - 120)  # counted before the pause began
    pause(d)
    family = d.decide(eom("y", recipient="bob@yahoo.com"), NOW)
    assert "Yahoo/Verizon-Media family" in family.action  # held for ever, not until the pause ends
    assert [m.queue_id for m in d.store.held_messages("trucking")] == []
    assert d.decide(eom("a"), NOW).label == "hold"
    assert d.decide(eom("a"), NOW + 1).label == "hold"  # Postfix asks again: still held, recorded once
    assert len(d.store.held_messages("trucking")) == 1
    assert d.decide(eom("before"), NOW + 2).action == "DUNNO"  # its answer was lost: it was counted, it goes


def test_the_pause_metrics(decider):
    d = decider()
    holds = metrics.HOLDS.labels("pause")._value.get()
    started = metrics.PAUSES.labels("trucking", "google", "gmail_unsolicited")._value.get()
    d.pauses.refresh(NOW - 120)  # the daemon's first read: what is in force then was not begun now
    pause(d, operator="google", rule="gmail_unsolicited")
    assert metrics.PAUSED.labels("trucking", "google")._value.get() == 1
    assert metrics.PAUSED.labels("trucking", "all")._value.get() == 0
    assert metrics.PAUSED.labels("healthcare", "google")._value.get() == 0
    assert metrics.PAUSES.labels("trucking", "google", "gmail_unsolicited")._value.get() == started + 1
    d.decide(eom("g", recipient="bob@gmail.com"), NOW)
    assert metrics.HOLDS.labels("pause")._value.get() == holds + 1
    d.pauses.refresh(NOW + 5)
    assert metrics.PAUSES.labels("trucking", "google", "gmail_unsolicited")._value.get() == started + 1  # once
    d.store.resume("trucking", "google", NOW + 6)
    d.pauses.refresh(NOW + 6)
    assert metrics.PAUSED.labels("trucking", "google")._value.get() == 0
