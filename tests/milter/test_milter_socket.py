"""The real thing: ``sendguard milter --config`` on a TCP socket, spoken to with the milter
protocol as Postfix speaks it (libmilter, pymilter's C glue, raw bytes), keys reloaded on
SIGHUP without dropping a connection (the whole-config reload is in test_milter_reload.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request

import dkim
from sendguard_testing.command import sendguard_command
from sendguard_testing.milter_client import (
    P_NODATA, P_NOEOH, P_NOHELO, P_NR_BODY, P_NR_CONN, P_NR_DATA, P_NR_HDR, P_NR_MAIL, P_NR_RCPT,
)  # fmt: skip


def test_signs_refuses_and_passes_over_a_real_socket(milter_process, milter_client, as_sent, make_msg, test_keys):
    m = milter_process()
    c = milter_client(m.port)
    c.connect("172.18.0.5", 40001)
    body = "Grüße, carrier\n".encode()
    message = make_msg(from_="Jürgen Müller <noreply@send.example.net>", extra_headers="List-Unsubscribe: <mailto:u@send.example.net>", raw_body=body)
    r = c.message(message, "bounce@send.example.net")
    assert r["result"] in (b"c", b"a")
    assert r["added"][0][0] == "DKIM-Signature" and r["added"][0][2] == 0
    assert "Jürgen Müller".encode() in as_sent(r)
    assert dkim.verify(as_sent(r), dnsfunc=test_keys.dnsfunc)
    c.close()

    c = milter_client(m.port)
    c.connect("172.18.0.99", 40002)
    r = c.message(make_msg(extra_headers="Precedence: bulk"), "bounce@send.example.net", queue_id="7C0FFEE123")
    assert r["result"].startswith(b"y550 5.7.1 bulk mail from 172.18.0.99 would leave unsigned: client not in trusted_hosts")
    r = c.message(make_msg(), "someone@example.org")
    assert r["result"] in (b"c", b"a") and r["added"] == []
    c.close()
    m.wait_log("7C0FFEE123: refuse: client_not_trusted")

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5).read().decode()
    assert 'sendguard_milter_signatures_total{domain="send.example.net",selector="send"} 1.0' in metrics
    assert 'sendguard_milter_refusals_total{reason="client_not_trusted"} 1.0' in metrics
    assert 'sendguard_milter_messages_total{outcome="passed"} 1.0' in metrics
    assert "sendguard_milter_eom_seconds_count 3.0" in metrics


def test_sighup_reloads_keys_without_dropping_connections(
    milter_process, milter_client, as_sent, make_msg, test_keys, write_key, tmp_path, dns_txt
):
    m = milter_process()
    c = milter_client(m.port)
    c.connect("127.0.0.1", 40003)
    r = c.message(make_msg(), "bounce@send.example.net")
    assert dkim.verify(as_sent(r), dnsfunc=test_keys.dnsfunc)

    # Rotate the key on disk (atomically, as an operator would), then SIGHUP.
    key_file = test_keys.dir / "send.private"
    saved = tmp_path / "send.saved"
    shutil.copy2(key_file, saved)
    try:
        new_key = write_key(tmp_path / "new.private")
        os.replace(tmp_path / "new.private", key_file)
        m.proc.send_signal(signal.SIGHUP)
        m.wait_log("SIGHUP: configuration reloaded from")
        # The connection opened before the reload still works, and now signs with the new key.
        r = c.message(make_msg(), "bounce@send.example.net")
        assert r["added"], r
        txt = dns_txt(new_key)
        assert dkim.verify(as_sent(r), dnsfunc=lambda name, timeout=5: txt)

        # A broken key file on reload: the configuration in service stays, the failure is logged and counted.
        os.chmod(key_file, 0o644)
        m.proc.send_signal(signal.SIGHUP)
        log = m.wait_log("; keeping the running configuration")
        assert f"signing.keys.send.key_file: key file {key_file} is world-readable" in log
        r = c.message(make_msg(), "bounce@send.example.net")
        assert dkim.verify(as_sent(r), dnsfunc=lambda name, timeout=5: txt)
        c.close()
        assert m.proc.poll() is None
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5).read().decode()
        assert 'sendguard_milter_config_reloads_total{result="failed"} 1.0' in metrics
        assert 'sendguard_milter_config_reloads_total{result="ok"} 1.0' in metrics
    finally:
        shutil.copy2(saved, key_file)
        os.chmod(key_file, 0o600)
    assert m.stop() == 0


def test_a_taken_port_is_a_clear_start_up_failure(milter_process, write_config, tmp_path):
    first = milter_process()
    # Same milter port, another metrics port: only the milter socket is in the way.
    config = write_config(port=first.port, metrics_port=first.metrics_port + 1 if first.metrics_port < 65535 else 1025)
    proc = subprocess.run([sendguard_command(), "milter", "--config", str(config)], capture_output=True, timeout=30)
    assert proc.returncode != 0
    assert f"cannot serve on inet:{first.port}@127.0.0.1" in proc.stderr.decode()


def test_the_milter_asks_for_no_replies_to_what_it_only_records(milter_process, milter_client):
    # Each reply is a round trip and a thread hand-off per header field and body chunk:
    # Postfix must not wait for them. DATA stays answered (the TCP hand-off stall).
    c = milter_client(milter_process().port)
    for bit in (P_NR_CONN, P_NR_MAIL, P_NR_RCPT, P_NR_HDR, P_NR_BODY, P_NOHELO, P_NOEOH):
        assert c.protocol & bit, hex(bit)
    assert not c.protocol & (P_NODATA | P_NR_DATA)
    c.close()
