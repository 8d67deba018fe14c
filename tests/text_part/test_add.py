"""The MIME surgery that adds the text part: which mail gets one, and that nothing else changes."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy

from hypothesis import HealthCheck, event, given, settings, strategies as st

from sendguard_milter.text_part.add import add_text_part, changed_headers
from sendguard_testing.milter_client import split_message

CRLF = b"\r\n"


def _apply(message: bytes):
    headers, body = split_message(message)
    result = add_text_part(headers, body)
    return headers, body, result


def _as_bytes(headers, body: bytes) -> bytes:
    return b"".join(n.encode() + b": " + v.replace(b"\n", CRLF) + CRLF for n, v in headers) + CRLF + body


def _leaves(raw: bytes) -> list[tuple[str, bytes]]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.walk() if not p.is_multipart()]


def _parent_of_new_part(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in msg.walk():
        if part.is_multipart():
            for child in part.get_payload():
                if child.get("Content-Type", "") == 'text/plain; charset="utf-8"':
                    return part.get_content_type()
    raise AssertionError("no added text part")


def test_a_top_level_html_message_becomes_multipart_alternative():
    message = (
        b"From: a@send.example.net\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\nSubject: s\r\n\r\n" + base64.encodebytes(b"<p>Hello <b>you</b></p>").replace(b"\n", CRLF)
    )
    headers, body, result = _apply(message)
    assert result.outcome == "added"
    assert [c.name for c in result.header_changes] == ["Content-Type", "Content-Transfer-Encoding"]
    assert result.header_changes[1].value is None  # base64 is not allowed on a multipart: deleted
    assert result.header_additions == []  # MIME-Version was there
    out = _as_bytes(changed_headers(headers, result), result.body)
    assert _leaves(out) == [("text/plain", b"Hello you"), ("text/html", b"<p>Hello <b>you</b></p>")]
    # The other header fields stay, in order.
    assert [n for n, _ in changed_headers(headers, result)] == ["From", "MIME-Version", "Content-Type", "Subject"]


def test_an_8bit_html_message_keeps_its_encoding_header_and_gains_mime_version():
    message = "From: a@send.example.net\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n<p>Grüße</p>\r\n".encode()
    headers, body, result = _apply(message)
    assert [c.name for c in result.header_changes] == ["Content-Type"]
    assert result.header_additions == [("MIME-Version", "1.0")]
    assert body in result.body  # the HTML content, byte for byte


def test_an_alternative_with_only_html_gets_the_text_part_first():
    body = b"preamble\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>Hi</p>\r\n--b1--\r\nepilogue\r\n"
    message = b'From: a@send.example.net\r\nContent-Type: multipart/alternative; boundary="b1"\r\n\r\n' + body
    headers, _, result = _apply(message)
    assert result.outcome == "added" and result.header_changes == []
    new_part = b'--b1\r\nContent-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nHi\r\n'
    assert result.body == body.replace(b"--b1\r\nContent-Type: text/html", new_part + b"--b1\r\nContent-Type: text/html", 1)


def test_html_inside_mixed_with_an_attachment_is_wrapped_and_the_attachment_untouched():
    pdf = base64.encodebytes(bytes(range(256))).replace(b"\n", CRLF)
    body = (
        b"--m\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<p>See attached</p>\r\n"
        b"--m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + pdf + b"--m--\r\n"
    )
    message = b'From: a@send.example.net\r\nContent-Type: multipart/mixed; boundary="m"\r\n\r\n' + body
    headers, _, result = _apply(message)
    assert result.outcome == "added" and result.header_changes == []
    assert result.body.endswith(body[body.index(b"\r\n--m\r\nContent-Type: application/pdf") :])
    out = _as_bytes(headers, result.body)
    assert _parent_of_new_part(out) == "multipart/alternative"
    assert _leaves(out) == [("text/plain", b"See attached"), ("text/html", b"<p>See attached</p>"), ("application/pdf", bytes(range(256)))]


def test_mail_that_has_text_or_no_html_is_left_alone():
    plain = b"From: a@send.example.net\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    both = (
        b'From: a@send.example.net\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b--\r\n"
    )
    attachment = (
        b'From: a@send.example.net\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/html\r\nContent-Disposition: attachment\r\n\r\n<p>hi</p>\r\n--b--\r\n"
    )
    for message in (plain, both, attachment):
        assert _apply(message)[2].outcome == "not_html_only"
        assert _apply(message)[2].body is None


def test_broken_mime_and_empty_html_are_left_alone_with_a_reason():
    broken = b'From: a@send.example.net\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>hi'
    assert _apply(broken)[2].outcome == "broken_mime"
    empty = b"From: a@send.example.net\r\nContent-Type: text/html\r\n\r\n<img src=pixel.gif>\r\n"
    assert _apply(empty)[2].outcome == "empty"


def test_long_or_non_ascii_text_goes_quoted_printable():
    message = "From: a@send.example.net\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Grüße</p>\r\n".encode()
    _, _, result = _apply(message)
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe" in result.body


# -- property: for arbitrary MIME trees, the only change is the new part and its container ---------

_WORDS = st.text(alphabet="abcdefghij XYZ<>&;é.", min_size=0, max_size=40)
_LEAF_TYPES = ("text/html", "text/plain", "image/png", "application/pdf")


@st.composite
def _leaf(draw) -> bytes:
    ctype = draw(st.sampled_from(_LEAF_TYPES))
    cte = draw(st.sampled_from(("7bit", "8bit", "base64", "quoted-printable")))
    attach = draw(st.booleans()) and ctype != "text/html" or draw(st.integers(0, 9)) == 0
    content = draw(_WORDS).encode()
    if ctype == "text/html":
        content = b"<p>" + content.replace(b"<", b"") + b" <a href='https://x.example/'>go</a></p>"
    if cte == "base64":
        data = base64.encodebytes(content).replace(b"\n", CRLF)
    elif cte == "quoted-printable":
        data = binascii.b2a_qp(content, istext=False).replace(b"\n", CRLF) + CRLF
    else:
        data = content + CRLF if cte == "8bit" else content.decode().encode("ascii", "replace") + CRLF
    head = f"Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n"
    if attach:
        head += "Content-Disposition: attachment; filename=f\r\n"
    return head.encode() + CRLF + data


@st.composite
def _multipart(draw, children) -> bytes:
    kind = draw(st.sampled_from(("mixed", "alternative", "related")))
    boundary = f"b{draw(st.integers(0, 10**9))}"
    parts = draw(st.lists(children, min_size=1, max_size=3))
    preamble = draw(st.sampled_from((b"", b"This is MIME.\r\n")))
    body = preamble + b"".join(f"--{boundary}\r\n".encode() + p + CRLF for p in parts) + f"--{boundary}--\r\n".encode()
    return f'Content-Type: multipart/{kind}; boundary="{boundary}"\r\n'.encode() + CRLF + body


_PART = st.recursive(_leaf(), lambda children: _multipart(children), max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PART)
def test_only_the_new_part_and_its_container_are_added(part: bytes):
    message = b"From: a@send.example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n" + part
    headers, body, result = _apply(message)
    event(result.outcome)
    if result.body is None:
        return
    assert result.outcome == "added"
    out = _as_bytes(changed_headers(headers, result), result.body)
    # Byte for byte: the input body is the output less one inserted stretch, or sits whole in it (wrapped).
    prefix = 0
    while prefix < min(len(body), len(result.body)) and body[prefix] == result.body[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(body), len(result.body)) - prefix and body[-1 - suffix] == result.body[-1 - suffix]:
        suffix += 1
    assert body[prefix : len(body) - suffix] in result.body[prefix : len(result.body) - suffix]
    # Decoded: the input's leaves, plus one text/plain leaf in a multipart/alternative.
    before, after = _leaves(message), _leaves(out)
    assert len(after) == len(before) + 1
    extra = next(i for i in range(len(after)) if i == len(before) or after[i] != before[i])
    assert after[extra][0] == "text/plain" and after[:extra] + after[extra + 1 :] == before
    assert _parent_of_new_part(out) == "multipart/alternative"


def test_related_html_with_inline_images_is_wrapped_whole():
    body = (
        b"--r\r\nContent-Type: text/html\r\n\r\n<p>Logo: <img src=\"cid:logo\"> Hi</p>\r\n"
        b"--r\r\nContent-Type: image/png\r\nContent-ID: <logo>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--r--\r\n"
    )
    message = b'From: a@send.example.net\r\nMIME-Version: 1.0\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n' + body
    headers, _, result = _apply(message)
    assert result.outcome == "added"
    out = _as_bytes(changed_headers(headers, result), result.body)
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/alternative"
    text, related = msg.get_payload()
    assert text.get_payload(decode=True) == b"Logo: Hi"
    assert related.get_content_type() == "multipart/related"  # the HTML keeps its inline image
    assert body in result.body
