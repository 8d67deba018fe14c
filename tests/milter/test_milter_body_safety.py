"""Bodies that must come out signed and still verify: 8-bit text, repaired links, and lines
Postfix would fold (refused when bulk, signed with a warning otherwise)."""

from __future__ import annotations

import logging

import dkim
import Milter
from prometheus_client import REGISTRY

LISTMONK = "172.18.0.5"
HTML = {"extra_headers": "List-Unsubscribe: <mailto:u@send.example.net>"}


def html_msg(make_msg, html: bytes) -> bytes:
    m = make_msg(raw_body=html, **HTML)
    return m.replace(b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/html; charset=utf-8")


def test_repaired_links_are_signed_and_verify(driver, make_msg, test_keys):
    html = b'<p><a href="https://send.example.net/order/slug?dot=123456@TrackLink">Order</a>\r\n<a href="https://send.example.net/order/x&utm_source=y">B</a></p>\r\n'
    out = driver().run(html_msg(make_msg, html), client=LISTMONK)
    assert out.new_body is not None
    assert b"?dot=123456\"" in out.new_body and b"@TrackLink" not in out.new_body
    assert b"/order/x?utm_source=y" in out.new_body
    assert dkim.verify(out.message, dnsfunc=test_keys.dnsfunc)


def test_links_are_not_touched_outside_the_scope(driver, make_msg):
    html = b'<a href="https://send.example.net/o?dot=1@TrackLink">x</a>\r\n'
    message = html_msg(make_msg, html).replace(b"List-Unsubscribe: <mailto:u@send.example.net>\r\n", b"")
    out = driver().run(message, client="198.51.100.9", daemon_port="587")
    assert out.new_body is None and out.added == []


def test_stream_link_mode_off_leaves_the_body(driver, make_msg, test_keys):
    d = driver(edit=lambda t: t.replace("[streams.trucking]\nbulk = true", '[streams.trucking]\nbulk = true\nlinks = "off"'))
    html = b'<a href="https://send.example.net/o?dot=1@TrackLink">x</a>\r\n'
    out = d.run(html_msg(make_msg, html), client=LISTMONK, daemon_port="25")
    assert out.new_body is None
    assert dkim.verify(out.message, dnsfunc=test_keys.dnsfunc)


def test_bulk_with_a_line_over_998_bytes_is_refused(driver, make_msg):
    body = b"short line\r\n" + b"x" * 1200 + b"\r\nend\r\n"
    before = REGISTRY.get_sample_value("sendguard_milter_refusals_total", {"reason": "long_line"}) or 0.0
    out = driver().run(make_msg(raw_body=body, **HTML), client=LISTMONK)
    assert out.rc == Milter.REJECT
    text = out.reply[2]
    assert "would leave with a broken signature" in text and "1200 bytes, over 998" in text
    assert "quoted-printable" in text
    assert REGISTRY.get_sample_value("sendguard_milter_refusals_total", {"reason": "long_line"}) == before + 1


def test_exactly_998_bytes_is_fine(driver, make_msg, test_keys):
    out = driver().run(make_msg(raw_body=b"y" * 998 + b"\r\n", **HTML), client=LISTMONK)
    assert out.rc == Milter.CONTINUE
    assert dkim.verify(out.message, dnsfunc=test_keys.dnsfunc)


def test_non_bulk_with_a_long_line_is_signed_and_the_line_logged(driver, make_msg, test_keys, caplog):
    caplog.set_level(logging.INFO, logger="sendguard")
    out = driver().run(make_msg(from_="ops@example.net", raw_body=b"z" * 1500 + b"\r\n"), client="127.0.0.1", queue_id="9D8C7B6A5F")
    assert out.tags()["s"] == "mail"
    assert dkim.verify(out.message, dnsfunc=test_keys.dnsfunc)
    assert any("9D8C7B6A5F: sign: line 9 is 1500 bytes" in r.getMessage() for r in caplog.records)


def test_8bit_body_verifies_with_opendkim_too(driver, make_msg, opendkim):
    out = driver().run(make_msg(raw_body="Prüfung ✓ — naïve café\r\n".encode(), **HTML), client=LISTMONK)
    assert opendkim(out.message).returncode == 0
