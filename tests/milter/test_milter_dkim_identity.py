"""dkim_sign (OpenSSL RSA) produces byte-identical DKIM-Signature headers to dkimpy's own signer."""

from __future__ import annotations

import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard_milter import dkim_sign

MESSAGES = [
    b"From: a@send.example.net\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n",
    b"From: =?utf-8?q?J=C3=BCrgen?= <a@send.example.net>\r\nSubject: Gr\xc3\xbc\xc3\x9fe   aus\r\n K\xc3\xb6ln\r\n\r\n8-bit \xe9\xe8 body  \r\nwith  spaces\t\r\n\r\n\r\n",
    b"From: a@example.net\nTo: b@example.org\nSubject: lf only\n\nline\nline\n",
    b"From: a@example.net\r\nSubject: empty body\r\n\r\n",
    b"From: a@example.net\r\nFrom: b@example.net\r\nSubject: two from\r\nList-Unsubscribe: <mailto:x@y>\r\n\r\n" + b"x" * 5000 + b"\r\n",
    b"From: a@example.net\r\nSubject: no blank line, no body",
    b"From: a@example.net\r\nSubject: mixed\r\n\r\nline one\nline  two\r\n\r\r\nend \t\n\n",
    b"From a@example.net Sun Nov 22 07:00:00 2026\nFrom: a@example.net\nTo: b@example.org\n\r\n\nafter an empty first body line\r\n",
]


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("key_name", ["send", "mail"])
def test_identical_to_dkimpy(message, key_name, test_keys, monkeypatch):
    key = getattr(test_keys, key_name)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    domain = "send.example.net" if key_name == "send" else "example.net"
    headers, _ = dkim.rfc822_parse(message)
    include = dkim_sign.header_list([n for n, _ in headers], ["From", "To", "Subject", "Date", "List-Unsubscribe"], ["From", "Subject"])
    when = 1795000000
    ours = dkim_sign.sign(message, domain=domain, selector=key_name, private_key=key, include_headers=include, timestamp=when)
    monkeypatch.setattr(time, "time", lambda: when)
    theirs = dkim.sign(message, key_name.encode(), domain.encode(), pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=include)
    assert ours == theirs
    assert dkim.verify(ours + message, dnsfunc=test_keys.dnsfunc)


def test_header_list_counts_occurrences_and_oversigns():
    names = [b"Received", b"From", b"To", b"To", b"Subject"]
    assert dkim_sign.header_list(names, ["From", "To", "Subject", "Date"], ["From"]) == [
        b"from", b"to", b"to", b"subject", b"from",
    ]  # fmt: skip
    # An oversigned header missing from the signed list is signed too, then once more.
    assert dkim_sign.header_list([b"From", b"X-Campaign"], ["From"], ["From", "X-Campaign"]) == [
        b"from", b"x-campaign", b"from", b"x-campaign",
    ]  # fmt: skip


def test_from_must_be_signed(test_keys):
    with pytest.raises(dkim_sign.SigningError):
        dkim_sign.sign(MESSAGES[0], domain="example.net", selector="mail", private_key=test_keys.mail, include_headers=[b"subject"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\n", b"\r", b"a", b"b c", b"\xe9"]), max_size=40))
def test_relaxed_body_is_dkimpys_byte_for_byte(pieces):
    body = b"".join(pieces)
    assert dkim_sign.relaxed_body(body) == Relaxed.canonicalize_body(body)


def _outcome(parse, message):
    try:
        return parse(message)
    except Exception as exc:  # the same error as dkimpy, too
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"From: a@example.net", b"Subject: x", b" folded", b"\tfolded", b"body", b"From a"]), max_size=16))
def test_header_body_split_is_dkimpys(pieces):
    message = b"".join(pieces)
    assert _outcome(dkim_sign._parse, message) == _outcome(dkim.rfc822_parse, message)
