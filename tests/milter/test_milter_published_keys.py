"""`[signing] verify_published_keys`: the running milter checks each key's record in a real DNS server (NSD)
and refuses bulk mail for a key whose published record does not match it, also after a key rotation."""

from __future__ import annotations

import os
import re
import time
import urllib.request

import pytest
from nsd_server import NsdServer
from ports import free_port
from sendguard_testing.milter_client import MilterProcess

from sendguard_milter.keygen import zone_text

SOA = "@\tIN\tSOA\tns1.example.net. hostmaster.example.net. 1 3600 600 86400 60\n@\tIN\tNS\tns1.example.net.\n"


@pytest.fixture
def config_for(write_config, test_keys):
    """``config_for(keys, port, metrics_port, milter_extra, extra)``: the suite's config with its own key folder
    (the session's test keys are shared: a rotation must not touch them)."""

    def make(keys, port: int, metrics_port: int, milter_extra: str, extra: str):
        path = write_config(extra=extra, milter_extra=milter_extra, port=port, metrics_port=metrics_port)
        path.write_text(path.read_text().replace(f"{test_keys.dir}/", f"{keys}/"))
        return path

    return make


@pytest.fixture
def published(tmp_path, write_key, dns_txt):
    """Key files send and mail; NSD publishes send's record and another key's record for mail."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    send = write_key(keys / "send.private")
    write_key(keys / "mail.private")
    stranger = write_key(tmp_path / "stranger.private")
    zone = "$ORIGIN example.net.\n$TTL 60\n" + SOA + zone_text("send._domainkey.send.example.net.", dns_txt(send).decode())
    zone += zone_text("mail._domainkey.example.net.", dns_txt(stranger).decode())
    server = NsdServer(tmp_path / "nsd", {"example.net": zone})
    yield keys, server
    server.stop()


def send_bulk(m: MilterProcess, milter_client, make_msg, from_: str, queue_id: str) -> dict:
    c = milter_client(m.port)
    try:
        c.connect("127.0.0.1", 40100)
        return c.message(make_msg(from_=from_, extra_headers="Precedence: bulk"), "bounce@send.example.net", queue_id=queue_id)
    finally:
        c.close()


def metrics_text(m: MilterProcess) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5).read().decode()


def metric(m: MilterProcess, name: str, key: str) -> float:
    text = metrics_text(m)
    found = re.search(rf'^{name}\{{key="{key}"\}} (\S+)$', text, re.M)
    assert found, f"{name}{{key={key}}} not in metrics"
    return float(found.group(1))


def test_a_key_whose_record_does_not_match_has_its_bulk_mail_refused(published, tmp_path, milter_client, make_msg, config_for, write_key):
    keys, server = published
    port, metrics_port = free_port(), free_port()
    config = config_for(
        keys, port, metrics_port, "key_check_interval = 0.2",
        f"[signing]\nverify_published_keys = true\npublished_key_interval = 1\npublished_key_nameserver = '{server.address}'\n",
    )  # fmt: skip
    m = MilterProcess(config, tmp_path / "milter.log", port, metrics_port)
    try:
        log = m.wait_log("key mail: the record at mail._domainkey.example.net does not match the key in service")
        assert "bulk mail signed with it is refused until it does (fix: publish TXT mail._domainkey.example.net" in log

        signed = send_bulk(m, milter_client, make_msg, "Trucking <noreply@send.example.net>", "2B0000001")
        assert [name for name, _, _ in signed["added"]] == ["DKIM-Signature"]
        refused = send_bulk(m, milter_client, make_msg, "Office <office@example.net>", "2B0000002")
        assert refused["added"] == []
        assert refused["result"].startswith(
            b"y550 5.7.1 bulk mail from 127.0.0.1 would leave unsigned: the DNS record of signing key mail for"
            b" example.net does not match it: the published key is not the public half of"
        )
        assert metric(m, "sendguard_milter_published_key_mismatch", "mail") == 1
        assert metric(m, "sendguard_milter_published_key_mismatch", "send") == 0
        assert 'sendguard_milter_refusals_total{reason="published_key_mismatch"} 1.0' in metrics_text(m)

        # A rotated key file that nobody published: the watcher loads it, the next check refuses its mail.
        write_key(keys / "send.new")
        os.rename(keys / "send.new", keys / "send.private")
        m.wait_log("key send: the record at send._domainkey.send.example.net does not match the key in service")
        after = send_bulk(m, milter_client, make_msg, "Trucking <noreply@send.example.net>", "2B0000003")
        assert after["added"] == [] and after["result"].startswith(b"y550 5.7.1")
        assert metric(m, "sendguard_milter_published_key_mismatch", "send") == 1
    finally:
        m.stop()


def test_an_unreachable_nameserver_keeps_signing(tmp_path, milter_client, make_msg, config_for, write_key):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    write_key(keys / "send.private")
    write_key(keys / "mail.private")
    port, metrics_port = free_port(), free_port()
    config = config_for(
        keys, port, metrics_port, "",
        f"[signing]\nverify_published_keys = true\npublished_key_nameserver = '127.0.0.1:{free_port()}'\n",
    )  # fmt: skip
    m = MilterProcess(config, tmp_path / "milter.log", port, metrics_port)
    try:
        m.wait_log("key send: cannot check the record at send._domainkey.send.example.net")
        signed = send_bulk(m, milter_client, make_msg, "Trucking <noreply@send.example.net>", "2B0000004")
        assert [name for name, _, _ in signed["added"]] == ["DKIM-Signature"]
        counted = 'sendguard_milter_published_key_checks_total{key="send",result="lookup_failed"} 1.0'
        deadline = time.monotonic() + 5
        while counted not in (text := metrics_text(m)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counted in text
        assert 'sendguard_milter_published_key_mismatch{key="send"}' not in text  # unknown, not a mismatch
    finally:
        m.stop()
