"""The text part and Message-ID repair through the real milter process over its socket:
what Postfix is told to change, and a DKIM signature that verifies over the changed message."""

from __future__ import annotations

import email
import re
import urllib.request

import dkim
import Milter
from email import policy as email_policy

HTML_ONLY = (
    b"From: Trucking <noreply@send.example.net>\r\n"
    b"To: carrier@example.org\r\n"
    b"Subject: Loads this week\r\n"
    b"Date: Sun, 22 Nov 2026 08:00:00 +0000\r\n"
    b"Message-ID: <3f2a9c1b7d.42@localhost>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"List-Unsubscribe: <mailto:u@send.example.net>\r\n"
    b"\r\n"
    b"<h1>Loads this week</h1><p>Gr=C3=BC=C3=9Fe &amp; welcome,"
    b' <a href=3D"https://send.example.net/l/1">see the loads</a>.</p>\r\n'
    b'<img src=3D"https://send.example.net/pixel.gif" width=3D"1" height=3D"1">\r\n'
)

TRUSTED = {"add_text_part": "true", "message_id_repair": "true", "message_id_keep_original": "true"}


def _milter_extra(**keys: str) -> str:
    return "".join(f"{k} = {v}\n" for k, v in keys.items())


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_html_only_mail_leaves_with_a_text_part_and_a_good_message_id_and_verifies(
    milter_process, milter_client, as_sent, test_keys
):
    m = milter_process(milter_extra=_milter_extra(**TRUSTED))
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40011)
    r = c.message(HTML_ONLY, "bounce@send.example.net", queue_id="4TEXTPART1")
    c.close()
    assert r["result"] in (b"c", b"a")
    # Content-Type changed, the quoted-printable encoding moved into the HTML part, Message-ID changed.
    changed = {(name.lower(), idx): value for name, idx, value in r["changed"]}
    assert changed[("content-type", 1)].startswith(b"multipart/alternative; boundary=")
    assert changed[("content-transfer-encoding", 1)] == b""
    new_id = changed[("message-id", 1)].decode()
    assert re.fullmatch(r"<\d{14}\.[0-9a-f]{16}@send\.example\.net>", new_id)
    assert ("X-Original-Message-ID", b"<3f2a9c1b7d.42@localhost>", -1) in r["added"]

    sent = as_sent(r)
    assert dkim.verify(sent, dnsfunc=test_keys.dnsfunc)
    parsed = email.message_from_bytes(sent, policy=email_policy.default)
    assert parsed["Message-ID"] == new_id
    assert parsed.get_content_type() == "multipart/alternative"
    assert "Content-Transfer-Encoding" not in parsed
    text, html = parsed.get_payload()
    assert text.get_content_type() == "text/plain"
    plain = text.get_content()
    assert "Grüße & welcome, see the loads (https://send.example.net/l/1)." in plain
    assert "pixel" not in plain
    assert html.get_content_type() == "text/html"
    assert html.get_payload(decode=True) == (
        "<h1>Loads this week</h1><p>Grüße &amp; welcome,"
        ' <a href="https://send.example.net/l/1">see the loads</a>.</p>\r\n'
        '<img src="https://send.example.net/pixel.gif" width="1" height="1">\r\n'
    ).encode()

    log = m.wait_log("4TEXTPART1: sign:")
    assert "4TEXTPART1: text part: added a text/plain part" in log
    assert f"4TEXTPART1: message-id: bad_host (right-hand side 'localhost'), replaced with {new_id}" in log
    metrics = _metrics(m.metrics_port)
    assert 'sendguard_milter_message_id_repaired_total{reason="bad_host"} 1.0' in metrics
    assert 'sendguard_milter_text_parts_total{outcome="added"} 1.0' in metrics


def test_a_missing_message_id_is_added_and_signed(milter_process, milter_client, as_sent, test_keys, make_msg):
    m = milter_process(milter_extra=_milter_extra(message_id_repair="true"))
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40012)
    message = make_msg().replace(b"Message-ID: <m1@send.example.net>\r\n", b"")
    r = c.message(message, "bounce@send.example.net", queue_id="4NOMSGID01")
    c.close()
    added = [(n, v) for n, v, i in r["added"] if n == "Message-ID"]
    assert len(added) == 1 and added[0][1].endswith(b"@send.example.net>")
    sent = as_sent(r)
    assert dkim.verify(sent, dnsfunc=test_keys.dnsfunc)
    # The new Message-ID is covered by the signature: changing it breaks it.
    assert not dkim.verify(sent.replace(added[0][1], b"<other@send.example.net>"), dnsfunc=test_keys.dnsfunc)
    m.wait_log("4NOMSGID01: message-id: missing, replaced with <")
    assert 'sendguard_milter_message_id_repaired_total{reason="missing"} 1.0' in _metrics(m.metrics_port)


def test_off_by_default_and_never_for_mail_outside_the_scope(milter_process, milter_client, as_sent):
    m = milter_process()
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40013)
    r = c.message(HTML_ONLY, "bounce@send.example.net")
    assert r["changed"] == [] and r["body"] is None
    c.close()

    m2 = milter_process(milter_extra=_milter_extra(**TRUSTED))
    c = milter_client(m2.port)
    c.connect("198.51.100.7", 40014)  # inbound: not in trusted_hosts
    inbound = HTML_ONLY.replace(b"List-Unsubscribe: <mailto:u@send.example.net>\r\n", b"")
    r = c.message(inbound, "someone@example.org")
    c.close()
    assert r["result"] in (b"c", b"a")
    assert r["changed"] == [] and r["body"] is None and r["added"] == []


def _with_stream_key(text: str, stream: str, line: str) -> str:
    return text.replace(f"[streams.{stream}]\n", f"[streams.{stream}]\n{line}\n", 1)


def test_the_stream_decides_and_mail_in_no_stream_follows_the_milter_key(driver, test_keys):
    # trucking says true, healthcare says false, [milter] says false: only trucking's mail changes.
    d = driver(edit=lambda t: _with_stream_key(_with_stream_key(t, "trucking", "add_text_part = true"), "healthcare", "add_text_part = false"))
    trucking = d.run(HTML_ONLY, client="172.18.0.5", daemon_port="25")
    assert trucking.new_body is not None and b"text/plain" in trucking.new_body
    assert dkim.verify(trucking.message, dnsfunc=test_keys.dnsfunc)
    assert email.message_from_bytes(trucking.message).get_content_type() == "multipart/alternative"
    changed = {name for name, _, _ in trucking.changed}
    assert changed == {"Content-Type", "Content-Transfer-Encoding"}  # Message-ID repair is off here
    healthcare = d.run(HTML_ONLY, client="127.0.0.1", daemon_port="2526")
    assert healthcare.new_body is None
    loopback = d.run(HTML_ONLY, client="127.0.0.1", daemon_port="25")
    assert loopback.new_body is None

    # [milter] add_text_part = true reaches mail in no stream, and streams that do not say.
    d = driver(milter_extra="add_text_part = true\n", edit=lambda t: _with_stream_key(t, "healthcare", "add_text_part = false"))
    assert d.run(HTML_ONLY, client="127.0.0.1", daemon_port="25").new_body is not None
    assert d.run(HTML_ONLY, client="172.18.0.5", daemon_port="25").new_body is not None
    assert d.run(HTML_ONLY, client="127.0.0.1", daemon_port="2526").new_body is None


def test_a_refused_message_is_not_changed(driver):
    d = driver(milter_extra=_milter_extra(**TRUSTED))
    # Bulk from a trusted client whose From domain has no key: refused, and nothing is changed on the way.
    message = HTML_ONLY.replace(b"noreply@send.example.net", b"noreply@unsigned.example.org")
    out = d.run(message, client="127.0.0.1")
    assert out.rc == Milter.REJECT
    assert out.new_body is None and out.added == [] and out.changed == []


def test_html_with_an_attachment_over_the_socket_keeps_the_attachment_byte_for_byte(milter_process, milter_client, as_sent, test_keys):
    attachment = (
        b"--mix\r\nContent-Type: application/pdf; name=rates.pdf\r\nContent-Disposition: attachment; filename=rates.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n--mix--\r\n"
    )
    message = (
        b"From: Trucking <noreply@send.example.net>\r\nTo: carrier@example.org\r\nSubject: Rates\r\n"
        b"Message-ID: <r1@send.example.net>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"mix\"\r\n"
        b"List-Unsubscribe: <mailto:u@send.example.net>\r\n\r\n"
        b"--mix\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Rates attached.</p>\r\n" + attachment
    )
    m = milter_process(milter_extra=_milter_extra(**TRUSTED))
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40015)
    r = c.message(message, "bounce@send.example.net")
    c.close()
    assert r["changed"] == []  # the top level stays multipart/mixed; the good Message-ID stays
    assert r["body"].endswith(b"\r\n" + attachment)
    sent = as_sent(r)
    assert dkim.verify(sent, dnsfunc=test_keys.dnsfunc)
    parsed = email.message_from_bytes(sent, policy=email_policy.default)
    body, pdf = parsed.get_payload()
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.get_payload()] == ["text/plain", "text/html"]
    assert body.get_payload()[0].get_content().strip() == "Rates attached."
    assert pdf.get_filename() == "rates.pdf"
