"""SIGHUP reloads the whole configuration of a running ``sendguard milter``: validated first,
switched in one step, the running one kept on any error, one log line either way."""

from __future__ import annotations

import io
import signal

import Milter
from sendguard_testing.milter_client import RecordingCtx, split_message

from sendguard.cli.settings import load
from sendguard_milter.app import SendguardMilter
from sendguard_milter.service import RuntimeSwitch, build_runtime

TRUSTED = 'trusted_hosts = ["127.0.0.1/8", "::1/128", "172.18.0.5/32", "172.18.0.25/32"]'


def bulk_result(m, milter_client, make_msg, client: str, queue_id: str) -> bytes:
    c = milter_client(m.port)
    try:
        c.connect(client, 40100)
        r = c.message(make_msg(extra_headers="Precedence: bulk"), "bounce@send.example.net", queue_id=queue_id)
    finally:
        c.close()
    return r["result"] if r["added"] == [] else b"signed"


def test_a_changed_trusted_hosts_is_applied_on_sighup_and_a_broken_file_keeps_it(milter_process, milter_client, make_msg):
    m = milter_process()
    config = m.proc.args[-1]
    assert bulk_result(m, milter_client, make_msg, "172.18.0.77", "1A0000001").startswith(b"y550 5.7.1")

    with open(config) as fh:
        text = fh.read()
    with open(config, "w") as fh:
        fh.write(text.replace(TRUSTED, TRUSTED.replace("]", ', "172.18.0.77/32"]')))
    m.proc.send_signal(signal.SIGHUP)
    m.wait_log(f"SIGHUP: configuration reloaded from {config}")
    assert bulk_result(m, milter_client, make_msg, "172.18.0.77", "1A0000002") == b"signed"

    # A broken file: one line naming FILE: KEY: REASON, and the running configuration stays.
    with open(config, "w") as fh:
        fh.write(text.replace(TRUSTED, 'trusted_hosts = ["0.0.0.0/1", "128.0.0.0/1"]'))
    m.proc.send_signal(signal.SIGHUP)
    log = m.wait_log("keeping the running configuration")
    line = [ln for ln in log.splitlines() if "SIGHUP" in ln][-1]
    assert line.endswith(
        f"ERROR: SIGHUP: {config}: milter.trusted_hosts[0]: 0.0.0.0/1 covers 2092957696 publicly routable addresses;"
        " trusted_hosts is for private, loopback and link-local ranges: if these are your own sending hosts, move"
        ' the entry to trusted_public_hosts (e.g. trusted_public_hosts = ["203.0.113.94/32"]); keeping the running configuration'
    )
    assert sum("SIGHUP" in ln for ln in log.splitlines()) == 2
    assert bulk_result(m, milter_client, make_msg, "172.18.0.77", "1A0000003") == b"signed"
    assert bulk_result(m, milter_client, make_msg, "8.8.8.8", "1A0000004").startswith(b"y550 5.7.1")
    assert m.proc.poll() is None


def test_a_change_that_needs_a_restart_is_named_in_the_reload_line(milter_process):
    m = milter_process()
    config = m.proc.args[-1]
    with open(config) as fh:
        text = fh.read()
    with open(config, "w") as fh:
        fh.write(text.replace(f"127.0.0.1:{m.metrics_port}", "127.0.0.1:1"))
    m.proc.send_signal(signal.SIGHUP)
    log = m.wait_log("SIGHUP: configuration reloaded")
    assert f"; restart needed for: metrics_listen 127.0.0.1:{m.metrics_port} -> 127.0.0.1:1 (still the old value)" in log


def test_a_message_in_flight_finishes_with_the_runtime_it_started_with(write_config, make_msg):
    """MAIL FROM takes the runtime; a switch before end of message applies from the next message."""
    path = write_config()
    before = load(path)
    switch = RuntimeSwitch(build_runtime(before.config, before.milter))
    path.write_text(path.read_text().replace(TRUSTED, 'trusted_hosts = ["127.0.0.1/8"]'))
    after = load(path)

    headers, body = split_message(make_msg(extra_headers="Precedence: bulk"))
    Milter.factory = lambda: SendguardMilter(switch.current)
    ctx = RecordingCtx()
    ctx._setsymval("{daemon_port}", "25")
    ctx._setsymval("i", "2B0000001")
    assert ctx._connect(host="listmonk", helo="listmonk", ip="172.18.0.5") == Milter.CONTINUE
    assert ctx._envfrom(b"<bounce@send.example.net>") == Milter.CONTINUE
    switch.switch(build_runtime(after.config, after.milter))  # SIGHUP mid-message
    for name, value in headers:
        assert ctx._header_bytes(name, value) == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._feed_body(io.BytesIO(body)) == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE
    assert [f for f, _, _ in ctx.added] == ["DKIM-Signature"]

    # The next message on the same connection runs with the new scope: 172.18.0.5 is no longer trusted.
    assert ctx._envfrom(b"<bounce@send.example.net>") == Milter.CONTINUE
    for name, value in headers:
        ctx._header_bytes(name, value)
    ctx._eoh()
    ctx._feed_body(io.BytesIO(body))
    assert ctx._eom() == Milter.REJECT
