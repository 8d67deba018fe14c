"""dkim_sign (OpenSSL RSA) produces byte-identical DKIM-Signature headers to dkimpy's own signer.

dkim_sign calls names outside dkimpy's public API (see the comment at its top);
these tests are what keeps that safe: they fail if a dkimpy release drops one of
those names or changes what it gives, and pyproject.toml admits only the tested series.
"""

from __future__ import annotations

import hashlib
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

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


#: (signed, oversigned) header lists: the smallest, the deployment's, and a long one naming
#: fields that are absent or repeated in some messages (h= then folds over several lines).
HEADER_SETS = {
    "from only": (["From"], []),
    "deployment": (["From", "To", "Subject", "Date", "List-Unsubscribe"], ["From", "Subject"]),
    "long, absent and repeated": (
        ["From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
         "Content-Transfer-Encoding", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"],
        ["From", "To", "Subject", "Reply-To", "List-Unsubscribe"],
    ),
}

#: (domain, selector): the deployment's two, and names long enough to move every fold.
IDENTITIES = {
    "send": ("send.example.net", "send"),
    "mail": ("example.net", "mail"),
    "long names": ("transactional-notifications.eu-west.mail.example.net", "rotation-2026-11-rsa2048-primary"),
}


def _dkimpy_sign(message, key, domain, selector, include, when, monkeypatch):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    monkeypatch.setattr(time, "time", lambda: when)
    return dkim.sign(message, selector.encode(), domain.encode(), pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=include)


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("header_set", HEADER_SETS)
@pytest.mark.parametrize("identity", IDENTITIES)
def test_identical_to_dkimpy(message, header_set, identity, test_keys, dns_txt, monkeypatch):
    domain, selector = IDENTITIES[identity]
    key = test_keys.mail if identity == "mail" else test_keys.send
    headers, _ = dkim.rfc822_parse(message)
    include = dkim_sign.header_list([n for n, _ in headers], *HEADER_SETS[header_set])
    when = 1795000000
    ours = dkim_sign.sign(message, domain=domain, selector=selector, private_key=key, include_headers=include, timestamp=when)
    assert ours == _dkimpy_sign(message, key, domain, selector, include, when, monkeypatch)
    record = dns_txt(key)
    assert dkim.verify(ours + message, dnsfunc=lambda name, timeout=5: record)


def test_dkimpy_is_the_tested_series():
    """The installed dkimpy is one pyproject.toml admits, so the tests above speak for it."""
    from importlib.metadata import requires, version

    spec = next(Requirement(r) for r in requires("sendguard") if Requirement(r).name == "dkimpy")
    assert spec.specifier.contains(version("dkimpy")), (spec, version("dkimpy"))
    assert spec.specifier.contains("1.1.8") and not spec.specifier.contains("1.2.0"), spec


def test_the_private_dkimpy_names_dkim_sign_uses_still_exist():
    """One clear failure (instead of an AttributeError deep in sign) when a release renames one."""
    import dkim.canonicalization as canonicalization

    for module, name in [
        (dkim, "fold"), (dkim, "RE_BTAG"), (dkim, "hash_headers"), (dkim, "rfc822_parse"),
        (canonicalization, "CanonicalizationPolicy"), (canonicalization, "correct_empty_body"),
        (canonicalization, "strip_trailing_lines"),
    ]:  # fmt: skip
        assert hasattr(module, name), f"dkimpy {module.__name__}.{name} is gone: dkim_sign needs a new look"


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


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from([b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"a", b"b c", b"\xe9"]), max_size=60),
    st.integers(1, 12),
)
def test_the_body_hash_in_pieces_is_the_hash_of_dkimpys_canonical_body(pieces, piece):
    # Small pieces put every cut (inside a space run, between empty lines, before a CR) to the test.
    body = b"".join(pieces)
    assert dkim_sign.relaxed_body_hash(body, piece=piece) == hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.sampled_from(MESSAGES), body=st.binary(max_size=300) | st.sampled_from([b"", b"\r\n", b"a\nb\r\n\r\n", b"x" * 3000 + b"\r\n"]))
def test_signing_header_block_and_body_apart_is_signing_the_message(message, body, test_keys):
    headers, _ = dkim.rfc822_parse(message)
    block = b"".join(name + b":" + value for name, value in headers)
    include = [b"from", b"subject"]
    whole = dkim_sign.sign(block + b"\r\n" + body, domain="example.net", selector="mail", private_key=test_keys.mail, include_headers=include, timestamp=1700000000)
    apart = dkim_sign.sign_parts(block, body, domain="example.net", selector="mail", private_key=test_keys.mail, include_headers=include, timestamp=1700000000)
    assert apart == whole
