"""Through a real Postfix: an HTML-only campaign message with a container's Message-ID, submitted
to a private Postfix (postfix-snippets/ wired to a real ``sendguard milter`` and ``sendguard
policyd``), leaves with a text part and a repaired Message-ID, and its signature verifies over
what Postfix actually sent (the smtp-sink's file) — so Postfix applied the milter's header
changes exactly as the milter signed them."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import shutil
import smtplib
import tempfile
from pathlib import Path

import dkim
import pytest
from ports import free_port
from sendguard_testing.milter_client import MilterProcess
from sendguard_testing.mime_fuzz import signing_key
from sendguard_testing.policy_fuzz import policyd_process, stopped_on_sigterm
from sendguard_testing.postfix_instance import PostfixInstance, split_sink_file

CONFIG = """[general]
state_dir = "{dir}"

[policyd]
listen = "127.0.0.1:{policy_port}"
metrics_listen = "127.0.0.1:{policy_metrics}"
database = "{dir}/policyd.sqlite"

[milter]
listen = "inet:127.0.0.1:{milter_port}"
metrics_listen = "127.0.0.1:{milter_metrics}"
trusted_hosts = ["127.0.0.0/8"]
message_id_repair = true

[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{key}"

[signing.table]
"send.example.net" = "send"

[streams.trucking]
ramp = [[0, 100]]
start_date = 2026-01-01
hourly_ceiling = 100
daily_cap = 100
bulk = true
add_text_part = true
[streams.trucking.match]
server_port = [{smtpd_port}]
client_address = ["127.0.0.1/32"]
"""

MESSAGE = (
    b"From: Trucking <noreply@send.example.net>\r\n"
    b"To: carrier@example.org\r\n"
    b"Subject: Loads this week\r\n"
    b"Date: Sun, 22 Nov 2026 08:00:00 +0000\r\n"
    b"Message-ID: <a1b2c3d4.17@3f2a9c1b7d0e>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"List-Unsubscribe: <mailto:u@send.example.net>\r\n"
    b"\r\n"
)
HTML = '<h2>This week</h2><ul><li>Dallas &rarr; Tulsa</li></ul><p><a href="https://send.example.net/l/7">Book it</a></p>'


@pytest.fixture
def work():
    # Postfix's daemons and the sink run as the postfix user: pytest's own temp folders are root's alone.
    folder = Path(tempfile.mkdtemp(prefix="sendguard-hygiene-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_html_only_mail_through_postfix_gets_a_text_part_a_good_message_id_and_a_valid_signature(work):
    key_file, dns = signing_key(work)
    milter_port, policy_port, milter_metrics, policy_metrics = free_port(), free_port(), free_port(), free_port()
    pf = PostfixInstance(work / "postfix", milter_port, policy_port)
    config = work / "sendguard.toml"
    config.write_text(CONFIG.format(dir=work, policy_port=policy_port, policy_metrics=policy_metrics, milter_port=milter_port,
                                    milter_metrics=milter_metrics, key=key_file, smtpd_port=pf.smtpd_port))  # fmt: skip
    milter = MilterProcess(config, work / "milter.log", milter_port, milter_metrics)
    policyd = policyd_process(config, policy_port, work / "policyd.log")
    try:
        with pf:
            body = base64.encodebytes(HTML.encode()).replace(b"\n", b"\r\n")
            with smtplib.SMTP("127.0.0.1", pf.smtpd_port, timeout=60) as smtp:
                smtp.sendmail("bounce@send.example.net", ["carrier@example.org"], MESSAGE + body)
            assert pf.wait_idle(60) == 0, pf.log_text()[-3000:]
            files = pf.sink_files()
            assert len(files) == 1, pf.log_text()[-3000:]
            _, sent = split_sink_file(files[0].read_bytes())
    finally:
        stopped_on_sigterm(policyd, 20)
        milter.stop()

    assert dkim.verify(sent, dnsfunc=dns), sent[:3000]
    parsed = email.message_from_bytes(sent, policy=email.policy.default)
    assert re.fullmatch(r"<\d{14}\.[0-9a-f]{16}@send\.example\.net>", parsed["Message-ID"])
    assert len(parsed.get_all("Message-ID")) == 1
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_all("Content-Type") and len(parsed.get_all("Content-Type")) == 1
    assert "Content-Transfer-Encoding" not in parsed
    text, html = parsed.get_payload()
    assert text.get_content().replace("\r\n", "\n") == "This week\n---------\n\n- Dallas → Tulsa\n\nBook it (https://send.example.net/l/7)"
    assert html.get_content_type() == "text/html" and html["Content-Transfer-Encoding"] == "base64"
    assert html.get_payload(decode=True) == HTML.encode()
    log = (work / "milter.log").read_text()
    assert "message-id: bad_host (right-hand side '3f2a9c1b7d0e')" in log
