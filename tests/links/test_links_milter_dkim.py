"""Listmonk-shaped mail through the real milter (pymilter's test harness): rewritten, then signed, and it verifies."""

from __future__ import annotations

import base64
import os
import re

import dkim
import Milter
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sendguard_testing.milter_client import Driver, Outcome

CONFIG = """
[milter]
trusted_hosts = ["127.0.0.1/8", "172.16.0.0/12"]

[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{key}"

[signing.table]
"send.example.net" = "send"

[links]
mode = "{mode}"

[streams.trucking]
bulk = true
[streams.trucking.match]
server_port = [25]
client_address = ["172.18.0.5/32"]
"""


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path = tmp_path_factory.mktemp("links-keys") / "send.private"
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    os.chmod(path, 0o600)
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def run_milter(tmp_path, key, headers, body: bytes, mode: str = "strip") -> Outcome:
    """Feed one message from Listmonk's address through the milter; its ``message`` is what is sent on."""
    config_path = tmp_path / "sendguard.toml"
    config_path.write_text(CONFIG.format(key=key[0], mode=mode))
    out = Driver(config_path).run_parts(
        headers, body, client="172.18.0.5", client_port="40000", hostname="listmonk", helo="listmonk",
        recipient="dispatch@carrier.example.org", queue_id="5C0FFEE123",
    )
    assert out.rc == Milter.CONTINUE
    return out


def verify(message: bytes, key) -> bool:
    def dns(name, timeout=5):
        return key[1] if name.rstrip(b".") == b"send._domainkey.send.example.net" else None

    return dkim.verify(message, dnsfunc=dns)


def test_listmonk_campaign_is_rewritten_then_signed_and_verifies(tmp_path, key, lm) -> None:
    cta = "https://send.example.net/order/acme-freight&utm_source=listmonk&dot=1234567@TrackLink"
    msg = lm.listmonk_alternative(cta)
    out = run_milter(tmp_path, key, msg.headers, msg.body)
    assert out.new_body is not None and b"TrackLink" not in out.new_body
    fixed = "https://send.example.net/order/acme-freight?utm_source=listmonk&dot=1234567"
    assert all(fixed.encode() in payload for _, payload in lm.decoded_leaves(msg, out.new_body))
    assert [f for f, _, _ in out.added] == ["DKIM-Signature"]
    assert verify(out.message, key)
    # The signature covers the repaired body: the original body would not verify under it.
    original = out.message.replace(out.new_body, msg.body)
    assert not verify(original, key)


def test_report_only_signs_the_untouched_body(tmp_path, key, lm) -> None:
    msg = lm.listmonk_alternative("https://send.example.net/order/acme?dot=1@TrackLink")
    out = run_milter(tmp_path, key, msg.headers, msg.body, mode="report-only")
    assert out.new_body is None
    assert verify(out.message, key)


def test_broken_mime_is_passed_unchanged_and_still_signed(tmp_path, key, lm) -> None:
    headers = lm.top_headers('multipart/alternative; boundary="never-closed"')
    body = b"--never-closed\r\nContent-Type: text/plain\r\n\r\nhttps://send.example.net/o?dot=1@TrackLink\r\n"
    out = run_milter(tmp_path, key, headers, body)
    assert out.new_body is None
    assert re.search(rb"^DKIM-Signature: ", out.message)
    assert verify(out.message, key)
