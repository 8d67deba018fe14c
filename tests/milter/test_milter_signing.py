"""Signing through the milter (pymilter's TestCtx harness): each domain with its own key and
selector, the trusted scope (addresses, SASL, local submission), raw 8-bit bytes, CRLF and
LF bodies, existing signatures — every signature verified with dkimpy against the test key."""

from __future__ import annotations

import dkim
import Milter

UNTRUSTED = "172.18.0.99"


def verify(outcome, test_keys) -> bool:
    return dkim.verify(outcome.message, dnsfunc=test_keys.dnsfunc)


def test_bulk_subdomain_signs_with_its_own_selector(driver, make_msg, test_keys):
    out = driver().run(make_msg(extra_headers="List-Unsubscribe: <mailto:unsub@send.example.net>"), client="172.18.0.5")
    assert out.rc == Milter.CONTINUE
    tags = out.tags()
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == ("send.example.net", "send", "rsa-sha256", "relaxed/relaxed")
    assert "l" not in tags
    assert verify(out, test_keys)


def test_root_domain_signs_with_selector_mail(driver, make_msg, test_keys):
    out = driver().run(make_msg(from_="Ops <ops@example.net>"), client="127.0.0.1")
    assert (out.tags()["d"], out.tags()["s"]) == ("example.net", "mail")
    assert verify(out, test_keys)


def test_subdomain_without_own_row_uses_the_wildcard_row(driver, make_msg, test_keys):
    out = driver().run(make_msg(from_="alerts@app.example.net"), client="127.0.0.1")
    assert (out.tags()["d"], out.tags()["s"]) == ("example.net", "mail")
    assert verify(out, test_keys)


def test_signature_goes_on_top_and_oversigns_from(driver, make_msg, test_keys):
    out = driver().run(make_msg(), client="172.18.0.5")
    assert out.added[0][0] == "DKIM-Signature" and out.added[0][2] == 0
    h = out.tags()["h"].split(":")
    assert h.count("from") == 2
    assert {"subject", "date", "to", "message-id", "mime-version", "content-type"} <= set(h)
    assert "received" not in h and "return-path" not in h
    # A From added after signing (above or below) breaks the signature.
    tampered = out.message.replace(b"From: Trucking", b"From: Evil <ceo@example.net>\r\nFrom: Trucking", 1)
    assert not dkim.verify(tampered, dnsfunc=test_keys.dnsfunc)


def test_untrusted_non_bulk_mail_passes_untouched(driver, make_msg):
    out = driver().run(make_msg(), client=UNTRUSTED)
    assert out.rc == Milter.CONTINUE
    assert out.added == [] and out.new_body is None and out.reply is None


def test_sasl_authenticated_client_is_in_scope(driver, make_msg, test_keys):
    out = driver().run(make_msg(extra_headers="Precedence: bulk"), client="198.51.100.7", sasl="listmonk")
    assert out.tags()["s"] == "send"
    assert verify(out, test_keys)


def test_sasl_trust_can_be_switched_off(driver, make_msg):
    out = driver(milter_extra="trust_sasl = false").run(make_msg(), client="198.51.100.7", sasl="listmonk")
    assert out.added == []


def test_local_submission_is_signed_even_without_loopback_in_trusted_hosts(driver, make_msg, test_keys):
    d = driver(edit=lambda text: text.replace('trusted_hosts = ["127.0.0.1/8", "::1/128", ', "trusted_hosts = ["))
    # How Postfix's cleanup presents sendmail(1) mail to non_smtpd_milters: localhost, 127.0.0.1, port 0.
    out = d.run(make_msg(from_="cron@example.net"), client="127.0.0.1", hostname="localhost", client_port="0", daemon_port="")
    assert out.tags()["s"] == "mail"
    assert dkim.verify(out.message, dnsfunc=test_keys.dnsfunc)
    # The same address over SMTP (a real port) is not local submission, and loopback is not trusted here.
    out = d.run(make_msg(from_="cron@example.net"), client="127.0.0.1", hostname="localhost", client_port="40000")
    assert out.added == []


def test_non_ascii_headers_and_8bit_body_sign_and_verify(driver, make_msg, test_keys):
    body = "Grüße aus Köln — ½ price\nZeile zwei\n".encode("utf-8")
    message = make_msg(from_="Jürgen Müller <noreply@send.example.net>", extra_headers="X-Note: ünïcödé", raw_body=body)
    message = message.replace(b"Subject: Loads this week", "Subject: Ladungen für Sie".encode())
    out = driver().run(message, client="172.18.0.5")
    assert "Jürgen".encode() in out.message and "Grüße".encode() in out.message
    assert verify(out, test_keys)


def test_latin1_bytes_are_signed_as_is(driver, make_msg, test_keys):
    out = driver().run(make_msg(raw_body=b"caf\xe9 cr\xe8me\r\n"), client="172.18.0.5")
    assert b"caf\xe9" in out.message
    assert verify(out, test_keys)


def test_crlf_and_lf_bodies_give_the_same_body_hash(driver, make_msg):
    d = driver()
    crlf = d.run(make_msg(body="line one\nline two\n"), client="172.18.0.5")
    lf = d.run(make_msg(body="line one\nline two\n").replace(b"\r\n", b"\n"), client="172.18.0.5", crlf_body=False)
    assert crlf.tags()["bh"] == lf.tags()["bh"]


def test_existing_signature_is_kept_and_ours_added_on_top(driver, make_msg, test_keys):
    d = driver()
    first = d.run(make_msg(from_="ops@example.net"), client="127.0.0.1")
    again = d.run(first.message, client="127.0.0.1")
    assert len(again.added) == 1
    assert again.message.count(b"DKIM-Signature:") == 2
    assert "dkim-signature" not in again.tags()["h"].split(":")
    # Both signatures verify (dkimpy checks the first; check the second by dropping the first).
    assert dkim.verify(again.message, dnsfunc=test_keys.dnsfunc)
    assert dkim.verify(first.message, dnsfunc=test_keys.dnsfunc)


def test_multiline_headers_sign_and_verify(driver, make_msg, test_keys):
    extra = "List-Unsubscribe: <mailto:u@send.example.net?subject=unsub>,\n\t<https://send.example.net/u/abc>\nList-Unsubscribe-Post: List-Unsubscribe=One-Click"
    out = driver().run(make_msg(extra_headers=extra), client="172.18.0.5")
    h = out.tags()["h"].split(":")
    assert "list-unsubscribe" in h and "list-unsubscribe-post" in h
    assert verify(out, test_keys)


def test_extra_oversigned_headers(driver, make_msg, test_keys):
    d = driver(extra='[signing]\noversign_headers = ["Subject", "List-Unsubscribe"]\n')
    out = d.run(make_msg(), client="172.18.0.5")
    h = out.tags()["h"].split(":")
    assert h.count("from") == 2 and h.count("subject") == 2 and h.count("list-unsubscribe") == 1
    assert verify(out, test_keys)


def test_a_sample_verifies_with_opendkim(driver, make_msg, opendkim):
    d = driver()
    for message, client in (
        (make_msg(extra_headers="List-Unsubscribe: <mailto:u@send.example.net>"), "172.18.0.5"),
        (make_msg(from_="ops@example.net", raw_body="Grüße\n".encode()), "127.0.0.1"),
    ):
        out = d.run(message, client=client)
        result = opendkim(out.message)
        assert result.returncode == 0, result.stderr
        broken = opendkim(out.message.replace(b"Loads this week", b"Loads this month"))
        assert broken.returncode != 0 and b"Bad signature" in broken.stderr


def test_counts_signed_and_passed_messages(driver, make_msg):
    from prometheus_client import REGISTRY

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        value("sendguard_milter_signatures_total", domain="example.net", selector="mail"),
        value("sendguard_milter_messages_total", outcome="signed"),
        value("sendguard_milter_passed_unsigned_total", reason="not_in_scope"),
        value("sendguard_milter_eom_seconds_count"),
    )
    d = driver()
    d.run(make_msg(from_="ops@example.net"), client="127.0.0.1")
    d.run(make_msg(), client=UNTRUSTED)
    after = (
        value("sendguard_milter_signatures_total", domain="example.net", selector="mail"),
        value("sendguard_milter_messages_total", outcome="signed"),
        value("sendguard_milter_passed_unsigned_total", reason="not_in_scope"),
        value("sendguard_milter_eom_seconds_count"),
    )
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1, 2]
