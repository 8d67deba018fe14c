"""A header field of 64 KiB or more (Postfix's header_size_limit is 100 KiB, so Postfix sends one)
through the real milter process: answered like any other message, never a dropped connection."""

from __future__ import annotations

import urllib.request

import dkim

#: 70 KiB: over libmilter's default 64 KiB command limit, under Postfix's 100 KiB header_size_limit.
BIG = 70 * 1024


def folded_header(name: str, size: int) -> bytes:
    """A ``name:`` field of about ``size`` bytes, folded into 78-byte lines."""
    words = [f"w{i:05d}".encode() for i in range(size // 7)]
    lines, line = [], b""
    for word in words:
        if len(line) + len(word) + 1 > 76:
            lines.append(line)
            line = b""
        line += b" " + word
    lines.append(line)
    return name.encode() + b":" + b"\n".join(lines)


def test_a_70_kib_folded_header_is_signed_and_verifies(milter_process, milter_client, as_sent, make_msg, test_keys):
    m = milter_process()
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40101)
    assert not c.protocol & 0x30000000  # no SMFIP_MDS_* flag announced: Postfix sees the negotiation it knows
    big = folded_header("X-Campaign-Notes", BIG)
    assert len(big) > BIG
    r = c.message(make_msg(extra_headers=big.decode() + "\nList-Unsubscribe: <mailto:u@send.example.net>"), "bounce@send.example.net", queue_id="7B16EAD001")
    assert r["result"] in (b"c", b"a")
    assert r["added"][0][0] == "DKIM-Signature"
    assert dkim.verify(as_sent(r), dnsfunc=test_keys.dnsfunc)
    m.wait_log("7B16EAD001: sign: d=send.example.net")
    # The connection is still usable for the next message.
    r = c.message(make_msg(), "bounce@send.example.net", queue_id="7B16EAD002")
    assert dkim.verify(as_sent(r), dnsfunc=test_keys.dnsfunc)
    c.close()


def test_a_70_kib_unfolded_bulk_header_is_refused_with_the_queue_id_and_a_reason(milter_process, milter_client, make_msg):
    m = milter_process()
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40102)
    big = "X-Campaign-Notes: " + "x" * BIG
    r = c.message(make_msg(extra_headers=big + "\nPrecedence: bulk"), "bounce@send.example.net", queue_id="7B16EAD003")
    assert r["result"].startswith(b"y550 5.7.1 bulk mail from 127.0.0.1 would leave with a broken signature: line ")
    log = m.wait_log("7B16EAD003: refuse: long_line")
    assert f"is {BIG + len('X-Campaign-Notes: ')} bytes, over 998" in log
    c.close()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5).read().decode()
    assert 'sendguard_milter_refusals_total{reason="long_line"} 1.0' in metrics


def test_a_header_over_the_raised_limit_is_logged_with_the_queue_id_when_libmilter_drops_it(
    milter_process, milter_client, make_msg
):
    from sendguard_milter.command_size import COMMAND_LIMIT

    m = milter_process()
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40103)
    # Past Postfix's own default (100 KiB) tenfold: only a raised header_size_limit sends one.
    huge = "X-Campaign-Notes: " + "x" * (COMMAND_LIMIT + 1)
    try:
        c.message(make_msg(extra_headers="X-First: 1\n" + huge), "bounce@send.example.net", queue_id="7B16EAD004")
        raise AssertionError("libmilter read a command over its limit")
    except (ConnectionError, OSError):
        pass  # libmilter closes the connection before any callback sees the field
    log = m.wait_log("7B16EAD004: dropped: the message ended after 8 header fields")
    assert f"libmilter closes the connection on a header field over {COMMAND_LIMIT} bytes" in log
    assert log.count("dropped:") == 1  # abort and close both ran: one line
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5).read().decode()
    assert 'sendguard_milter_messages_total{outcome="dropped"} 1.0' in metrics
