"""Bulk mail that would leave unsigned is refused with a text that says what to fix; the same
mail when not bulk passes; an internal error is a temporary failure, never a pass."""

from __future__ import annotations

import logging

import Milter
import pytest
from prometheus_client import REGISTRY

from sendguard_milter import end_of_message

LISTMONK = "172.18.0.5"
UNTRUSTED = "172.18.0.99"
BULK = "List-Unsubscribe: <mailto:unsub@send.example.net>"


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("sendguard_milter_refusals_total", {"reason": reason}) or 0.0


def test_bulk_from_untrusted_client_is_refused_with_the_documented_text(driver, make_msg, caplog):
    before = refusals("client_not_trusted")
    caplog.set_level(logging.INFO, logger="sendguard")
    out = driver().run(make_msg(extra_headers=BULK), client=UNTRUSTED, queue_id="3F2A1C0D12")
    assert out.rc == Milter.REJECT
    code, xcode, text = out.reply
    assert (code, xcode) == ("550", "5.7.1")
    assert text.startswith(f"bulk mail from {UNTRUSTED} would leave unsigned: client not in trusted_hosts")
    assert "trusted_hosts" in text and "SASL" in text
    assert out.added == []
    assert refusals("client_not_trusted") == before + 1
    assert any(r.getMessage().startswith("3F2A1C0D12: refuse: client_not_trusted") for r in caplog.records)


def test_refusal_code_451_is_configurable(driver, make_msg):
    out = driver(milter_extra="refusal_code = 451").run(make_msg(extra_headers=BULK), client=UNTRUSTED)
    assert out.rc == Milter.TEMPFAIL
    assert out.reply[:2] == ("451", "4.7.1")


@pytest.mark.parametrize(
    "extra",
    [
        "Precedence: bulk",
        "Precedence: list",
        "precedence:  JUNK",
        "X-Listmonk-Campaign: 42",
        "List-Unsubscribe: <https://send.example.net/u>",
    ],
)
def test_every_default_bulk_header_makes_mail_bulk(driver, make_msg, extra):
    out = driver().run(make_msg(extra_headers=extra), client=UNTRUSTED)
    assert out.rc == Milter.REJECT


def test_a_bulk_stream_makes_mail_bulk_without_any_header(driver, make_msg):
    d = driver(edit=lambda t: t.replace('"172.18.0.5/32", "172.18.0.25/32"', '"192.0.2.1/32"'))
    # Port 25 from 172.18.0.5 is the trucking stream, declared bulk = true.
    out = d.run(make_msg(), client=LISTMONK, daemon_port="25")
    assert out.rc == Milter.REJECT and "172.18.0.5 would leave unsigned" in out.reply[2]
    # Port 2526 from anywhere is the healthcare stream, also bulk.
    assert d.run(make_msg(), client="172.18.0.25", daemon_port="2526").rc == Milter.REJECT
    # The same client on a port no stream claims, without bulk headers, is ordinary inbound mail.
    assert d.run(make_msg(), client=LISTMONK, daemon_port="587").rc == Milter.CONTINUE


def test_configured_bulk_senders(driver, make_msg):
    d = driver(milter_extra='[milter.bulk]\nsenders = ["newsletter@example.net", "send.example.net"]')
    assert d.run(make_msg(from_="ops@example.net"), client=UNTRUSTED, sender="newsletter@example.net").rc == Milter.REJECT
    assert d.run(make_msg(), client=UNTRUSTED, sender="x@elsewhere.org").rc == Milter.REJECT  # From domain listed
    assert d.run(make_msg(from_="ops@example.net"), client=UNTRUSTED, sender="ops@example.net").rc == Milter.CONTINUE


def test_bulk_without_a_key_for_the_from_domain(driver, make_msg):
    out = driver().run(make_msg(from_="sales@other.org", extra_headers=BULK), client=LISTMONK)
    assert out.rc == Milter.REJECT
    assert "no [signing.table] row for From domain other.org" in out.reply[2]
    # Not bulk: in scope but not our domain, passes unsigned.
    assert driver().run(make_msg(from_="sales@other.org"), client=LISTMONK, daemon_port="587").added == []


def test_bulk_with_a_key_that_is_not_loaded(driver, make_msg):
    d = driver()
    d.keys._keys.pop("send")  # the state after a key never loaded
    out = d.run(make_msg(extra_headers=BULK), client=LISTMONK)
    assert out.rc == Milter.REJECT
    assert "signing key send for send.example.net is not loaded" in out.reply[2]


@pytest.mark.parametrize(
    "from_header, reason, words",
    [
        (None, "from_missing", "no From header"),
        ("two", "from_duplicated", "2 From headers"),
        ("undisclosed-recipients:;", "from_unparseable", "From header"),
        ("a@send.example.net, b@send.example.net", "from_unparseable", "2 addresses"),
        ("Trucking <noreply>", "from_unparseable", "no usable user@domain"),
    ],
)
def test_bad_from_headers(driver, make_msg, from_header, reason, words):
    message = make_msg(extra_headers=BULK)
    if from_header is None:
        message = message.replace(b"From: Trucking <noreply@send.example.net>\r\n", b"")
    elif from_header == "two":
        message = message.replace(b"To:", b"From: other@send.example.net\r\nTo:", 1)
    else:
        message = message.replace(b"Trucking <noreply@send.example.net>", from_header.encode())
    before = refusals(reason)
    out = driver().run(message, client=LISTMONK)
    assert out.rc == Milter.REJECT, out.reply
    assert words in out.reply[2]
    assert refusals(reason) == before + 1
    # The same message, not bulk: passes unsigned.
    plain = driver().run(message.replace(BULK.encode() + b"\r\n", b""), client=LISTMONK, daemon_port="587")
    assert plain.rc == Milter.CONTINUE and plain.added == []


def test_signing_error_refuses_bulk_and_passes_other_mail(driver, make_msg):
    # A header line dkimpy cannot parse (a space in the field name).
    message = make_msg(extra_headers=BULK + "\nBad Header: x")
    out = driver().run(message, client=LISTMONK)
    assert out.rc == Milter.REJECT
    assert "signing failed" in out.reply[2]
    plain = driver().run(make_msg(extra_headers="Bad Header: x"), client=LISTMONK, daemon_port="587")
    assert plain.rc == Milter.CONTINUE and plain.added == []


def test_internal_error_is_a_temporary_failure(driver, make_msg, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(end_of_message, "decide", boom)  # a unit test of the error path only
    before = REGISTRY.get_sample_value("sendguard_milter_internal_errors_total") or 0.0
    out = driver().run(make_msg(extra_headers=BULK), client=LISTMONK)
    assert out.rc == Milter.TEMPFAIL
    assert out.reply[:2] == ("451", "4.3.0")
    assert out.added == []
    assert REGISTRY.get_sample_value("sendguard_milter_internal_errors_total") == before + 1


def test_percent_in_a_from_domain_is_escaped_for_libmilter(driver, make_msg):
    out = driver().run(make_msg(from_="x@100%.example.org", extra_headers=BULK), client=LISTMONK)
    assert out.rc == Milter.REJECT
    assert "%" not in out.reply[2].replace("%%", "")
