"""Postfix's delivery lines and what the watcher reads in them: fields, outcome, reason.

The lines of ``data/postfix-3.7-maillog.txt`` were written by the real Postfix
3.7 of the container suite (tests/e2e/test_watch_log.py); the other lines here
are the formats that suite cannot produce (syslog stamps of other set-ups,
IPv6 relays, receivers' replies on the public Internet).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sendguard_policyd.watch.classify import classify
from sendguard_policyd.watch.parse import DELIVERY, OTHER, UNPARSED, parse_line

DATA = Path(__file__).parent / "data" / "postfix-3.7-maillog.txt"
NOW = time.mktime((2024, 3, 1, 12, 0, 0, 0, 0, -1))


def parse(line: str):
    return parse_line(line, lambda: NOW)


def attempt(line: str):
    p = parse(line)
    assert p.kind == DELIVERY, p
    assert p.attempt is not None
    return p.attempt


def test_a_sent_smtp_line():
    a = attempt(
        "Mar  1 10:00:00 mail postfix/smtp[4242]: 4F1A22C3B1: to=<Carrier@Example.com>, relay=gmail-smtp-in.l.google.com"
        "[142.250.27.26]:25, delay=1.2, delays=0.1/0.01/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 OK  1709287200"
        " a1-20020a05600c - gsmtp)"
    )
    assert (a.queue_id, a.recipient, a.relay, a.relay_ip, a.status, a.dsn) == (
        "4F1A22C3B1", "carrier@example.com", "gmail-smtp-in.l.google.com", "142.250.27.26", "sent", "2.0.0",
    )  # fmt: skip
    assert a.reply.startswith("250 2.0.0 OK") and a.reply.endswith("gsmtp")
    assert a.program == "postfix/smtp"
    assert a.at == time.mktime((2024, 3, 1, 10, 0, 0, 0, 0, -1))


def test_yahoo_tss04_in_reply_to_mail_from():
    a = attempt(
        "Mar  1 10:00:01 mail postfix-bulk/smtp[77]: 5B2C33D4C2: to=<x@yahoo.com>, relay=mta7.am0.yahoodns.net"
        "[67.195.204.72]:25, delay=0.9, delays=0.1/0/0.4/0.4, dsn=4.7.0, status=deferred (host mta7.am0.yahoodns.net"
        "[67.195.204.72] said: 421 4.7.0 [TSS04] Messages from 203.0.113.94 temporarily deferred due to unexpected"
        " volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes (in reply to MAIL"
        " FROM command))"
    )
    assert a.status == "deferred" and a.program == "postfix-bulk/smtp"
    assert a.reply.endswith("(in reply to MAIL FROM command)")
    assert classify(a.status, a.dsn, a.reply) == "reputation"


def test_gmail_multi_line_550_5_7_1_joined_by_postfix():
    a = attempt(
        "2024-03-01T10:00:02.123456+00:00 mail postfix/smtp[78]: 6C3D44E5D3: to=<a@gmail.com>, relay=gmail-smtp-in.l."
        "google.com[2a00:1450:400c:c0b::1a]:25, delay=2, delays=0.1/0/1/0.9, dsn=5.7.1, status=bounced (host "
        "gmail-smtp-in.l.google.com[2a00:1450:400c:c0b::1a] said: 550-5.7.1 [2001:db8::94] Gmail has detected that"
        " this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been"
        " blocked. Please visit 550-5.7.1 https://support.google.com/mail/?p=UnsolicitedMessageError 550 5.7.1 for"
        " more information. a1-20020a05 - gsmtp (in reply to end of DATA command))"
    )
    assert a.relay_ip == "2a00:1450:400c:c0b::1a"  # IPv6 relay
    assert a.status == "bounced" and a.dsn == "5.7.1"
    assert classify(a.status, a.dsn, a.reply) == "reputation"
    assert a.at == pytest.approx(1709287202.123456)


def test_connection_refused_and_suspended_have_no_relay():
    refused = attempt(
        "Mar  1 10:00:03 mail postfix/smtp[79]: 7D4E55F6E4: to=<b@example.org>, relay=none, delay=30, "
        "delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to mx.example.org[192.0.2.25]:25: Connection refused)"
    )
    suspended = attempt(
        "Mar  1 10:00:04 mail postfix/error[80]: 8E5F66A7F5: to=<c@example.org>, relay=none, delay=0.01, "
        "delays=0/0/0/0, dsn=4.4.1, status=deferred (delivery temporarily suspended: connect to mx.example.org"
        "[192.0.2.25]:25: Connection refused)"
    )
    for a in (refused, suspended):
        assert (a.relay, a.relay_ip, a.status) == ("", "", "deferred")
        assert classify(a.status, a.dsn, a.reply) == "other"


def test_local_virtual_lmtp_and_orig_to_conn_use():
    local = attempt("Mar  1 10:00:05 mail postfix/local[81]: 9F6A77B8A6: to=<root@mail.example.net>, orig_to=<postmaster>, "
                    "relay=local, delay=0.02, delays=0/0/0/0.02, dsn=2.0.0, status=sent (delivered to mailbox)")  # fmt: skip
    virtual = attempt("Mar  1 10:00:06 mail postfix/virtual[82]: A07B88C9B7: to=<u@virtual.test>, relay=virtual, delay=0.1,"
                      " delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to maildir)")  # fmt: skip
    lmtp = attempt("Mar  1 10:00:07 mail postfix/lmtp[83]: B18C99DAC8: to=<u@example.net>, relay=mail.example.net"
                   "[private/dovecot-lmtp], conn_use=2, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0"
                   " <u@example.net> Saved)")  # fmt: skip
    assert (local.relay, local.recipient) == ("local", "root@mail.example.net")
    assert virtual.relay == "virtual"
    assert (lmtp.relay, lmtp.relay_ip) == ("mail.example.net", "")  # a unix socket is no address


def test_qmgr_expired_names_no_recipient():
    p = parse("Mar  6 10:00:08 mail postfix/qmgr[84]: C29DAAEBD9: from=<bounces@send.example.net>, status=expired, "
              "returned to sender")  # fmt: skip
    assert p.kind == DELIVERY and p.attempt is not None
    assert (p.attempt.status, p.attempt.recipient, p.attempt.reply) == ("expired", "", "returned to sender")


def test_other_and_unparsed_lines():
    assert parse("Mar  1 10:00:09 mail postfix/qmgr[84]: C29DAAEBD9: removed").kind == OTHER
    assert parse("Mar  1 10:00:09 mail postfix/smtpd[85]: connect from unknown[172.18.0.5]").kind == OTHER
    assert parse("Mar  1 10:00:09 mail postfix/cleanup[86]: D3AEBBFCEA: message-id=<x@example.net>").kind == OTHER
    assert parse("not a syslog line at all").kind == UNPARSED
    # A delivery line whose fields do not read is unparsed, not silently "other".
    assert parse("Mar  1 10:00:09 mail postfix/smtp[87]: E4BFCC0DFB: to=<d@example.org>, relay=x, garbage").kind == UNPARSED
    assert parse("Feb 30 10:00:09 mail postfix/smtp[87]: E4BFCC0DFB: removed").kind == UNPARSED  # no such day


def test_a_stamp_without_a_year_from_last_december():
    january = time.mktime((2025, 1, 1, 0, 5, 0, 0, 0, -1))
    p = parse_line("Dec 31 23:59:59 mail postfix/qmgr[1]: F5C0DD1E0C: removed", lambda: january)
    assert p.at == time.mktime((2024, 12, 31, 23, 59, 59, 0, 0, -1))


@pytest.mark.parametrize(
    ("status", "dsn", "reply", "reason"),
    [
        ("deferred", "4.7.28", "host x said: 421-4.7.28 [203.0.113.94] Gmail has detected an unusual rate of unsolicited mail", "rate_limited"),
        ("deferred", "4.7.500", "host x said: 451 4.7.500 Server busy. Please try again later from [203.0.113.94]. (S77714)", "rate_limited"),
        ("bounced", "5.7.1", "host x said: 550 5.7.1 Unfortunately, messages from [203.0.113.94] weren't sent. ... part of their network is on our block list (S3150).", "reputation"),
        ("bounced", "5.7.1", "host x said: 550-5.7.1 ... The sending domain has a low reputation", "reputation"),
        ("deferred", "4.7.0", "host x said: 421 4.7.0 [TSS05] Messages from 203.0.113.94 temporarily deferred due to user complaints", "reputation"),
        ("deferred", "4.4.4", "host x said: 451 4.4.4 Mail received as unauthenticated, incoming to a recipient domain configured in a hosted tenant", "dead_tenant"),
        ("bounced", "5.1.1", "host x said: 550 5.1.1 <a@b>: Recipient address rejected: User unknown in virtual mailbox table", "user_unknown"),
        ("bounced", "5.1.10", "host x said: 550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "user_unknown"),
        ("deferred", "4.2.2", "host x said: 452 4.2.2 The email account that you tried to reach is over quota", "mailbox_full"),
        ("bounced", "5.2.2", "host x said: 552 5.2.2 Mailbox full", "mailbox_full"),
        ("deferred", "4.4.1", "connect to mx.example.org[192.0.2.25]:25: Connection timed out", "other"),
        ("deferred", "4.4.3", "Host or domain name not found. Name service error for name=x type=MX: Host not found, try again", "other"),
        ("expired", "", "returned to sender", "other"),
        ("sent", "2.0.0", "250 2.0.0 OK", ""),
    ],
)
def test_classify(status: str, dsn: str, reply: str, reason: str):
    assert classify(status, dsn, reply) == reason


def test_every_line_postfix_3_7_wrote_in_the_container_suite_reads():
    lines = DATA.read_text().splitlines()
    parsed = [parse_line(line) for line in lines]
    assert [line for line, p in zip(lines, parsed) if p.kind == UNPARSED] == []
    deliveries = [p.attempt for p in parsed if p.kind == DELIVERY and p.attempt is not None]
    statuses = {a.status for a in deliveries}
    assert {"sent", "deferred", "bounced", "expired"} <= statuses
    programs = {a.program for a in deliveries}
    assert {"postfix/smtp", "postfix/lmtp", "postfix/error", "postfix/qmgr"} <= programs
    assert {classify(a.status, a.dsn, a.reply) for a in deliveries} >= {
        "reputation", "rate_limited", "user_unknown", "mailbox_full", "dead_tenant", "other",
    }  # fmt: skip
    # Every line of a delivery agent with "status=" is a delivery: none is mistaken for "other".
    assert all(p.kind == DELIVERY for line, p in zip(lines, parsed) if " status=" in line)
