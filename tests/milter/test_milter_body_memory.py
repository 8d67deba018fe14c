"""Large bodies: held once, in a temporary file while they arrive, and nothing kept once the message ends."""

from __future__ import annotations

import io

import dkim
import Milter
from sendguard_testing.milter_client import RecordingCtx, forwarded, split_message

from sendguard_milter.app import BODY_SPILL_BYTES, SendguardMilter


def big_message(make_msg, size: int) -> bytes:
    line = b"Rates for lane %07d: see the attached sheet, or reply to this message.\r\n"
    body = b"".join(line % i for i in range(size // len(line % 0) + 1))
    html = b'<a href="https://send.example.net/order/acme?dot=123456@TrackLink">book</a>\r\n'
    return make_msg(extra_headers="List-Unsubscribe: <mailto:u@send.example.net>\nContent-Type: text/html; charset=utf-8", raw_body=html + body)


def big_multipart(size: int) -> bytes:
    """A campaign with a small HTML part whose link needs repair and a base64 attachment of ``size`` bytes."""
    import base64
    import os

    blob = base64.encodebytes(os.urandom(size * 57 // 78)).replace(b"\n", b"\r\n")
    return (
        b"From: Trucking <noreply@send.example.net>\r\nTo: carrier@example.org\r\nSubject: Rate sheet\r\n"
        b"Date: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <big@send.example.net>\r\nMIME-Version: 1.0\r\n"
        b'List-Unsubscribe: <mailto:u@send.example.net>\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n'
        b'--b0\r\nContent-Type: text/html; charset="utf-8"\r\n\r\n'
        b'<a href="https://send.example.net/order/acme?dot=123456@TrackLink">book</a>\r\n'
        b"--b0\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + blob + b"--b0--\r\n"
    )


def test_a_large_body_waits_in_a_temporary_file_and_is_released_at_end_of_message(driver, make_msg, test_keys):
    d = driver()
    message = big_message(make_msg, 3 * BODY_SPILL_BYTES)
    headers, body = split_message(message)
    Milter.factory = lambda: SendguardMilter(d.runtime)
    ctx = RecordingCtx()
    ctx._setsymval("i", "4B16B0D001")
    assert ctx._connect(host="localhost", helo="helo.example", ip="127.0.0.1") == Milter.CONTINUE
    assert ctx._envfrom(b"<bounce@send.example.net>") == Milter.CONTINUE
    for name, value in headers:
        assert ctx._header_bytes(name, value) == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._feed_body(io.BytesIO(body)) == Milter.CONTINUE
    milter = ctx._priv
    # Past the spill size the body is on disk, not in the connection's memory.
    assert milter.body_file is not None and milter.body_file._rolled
    assert ctx._eom() == Milter.CONTINUE
    assert milter.body_file is None and milter.headers == []  # an idle connection holds nothing
    sent = forwarded(ctx.added, headers, ctx.new_body)
    assert b"@TrackLink" not in sent and len(sent) > 3 * BODY_SPILL_BYTES
    assert dkim.verify(sent, dnsfunc=test_keys.dnsfunc)


def test_a_small_body_stays_in_memory_and_an_aborted_one_is_released(driver, make_msg):
    d = driver()
    headers, body = split_message(make_msg(raw_body=b"Hello.\r\n"))
    Milter.factory = lambda: SendguardMilter(d.runtime)
    ctx = RecordingCtx()
    assert ctx._connect(host="localhost", helo="helo.example", ip="127.0.0.1") == Milter.CONTINUE
    assert ctx._envfrom(b"<bounce@send.example.net>") == Milter.CONTINUE
    for name, value in headers:
        assert ctx._header_bytes(name, value) == Milter.CONTINUE
    assert ctx._feed_body(io.BytesIO(body)) == Milter.CONTINUE
    milter = ctx._priv
    assert milter.body_file is not None and not milter.body_file._rolled
    milter.abort()
    assert milter.body_file is None and milter.headers == []


def test_a_10_mb_message_over_the_real_socket_is_repaired_signed_and_verifies(milter_process, milter_client, as_sent, make_msg, test_keys):
    m = milter_process()
    c = milter_client(m.port, timeout=60)
    c.connect("127.0.0.1", 40201)
    r = c.message(big_multipart(10_000_000), "bounce@send.example.net", queue_id="4B16B0D002")
    c.close()
    assert r["added"][0][0] == "DKIM-Signature" and r["body"] is not None and b"@TrackLink" not in r["body"]
    assert dkim.verify(as_sent(r), dnsfunc=test_keys.dnsfunc)
