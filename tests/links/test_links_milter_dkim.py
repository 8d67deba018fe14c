"""Listmonk-shaped mail through the real milter (pymilter's test harness): rewritten, then signed, and it verifies."""

from __future__ import annotations

import base64
import io
import os
import re

import dkim
import Milter
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from Milter import testctx

from sendguard.cli.settings import load
from sendguard_milter.app import Runtime, SendguardMilter
from sendguard_milter.keys import KeyStore

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


class Ctx(testctx.TestCtx):
    """Keeps what the milter asks the MTA to add and replace."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[tuple[str, str]] = []
        self.new_body: bytes | None = None

    def addheader(self, field, value, idx):
        self.added.append((field, value))

    def replacebody(self, chunk):
        self.new_body = (self.new_body or b"") + chunk


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


def run_milter(tmp_path, key, headers, body: bytes, mode: str = "strip"):
    """Feed one message from Listmonk's address through the milter; return (ctx, message as sent on)."""
    config_path = tmp_path / "sendguard.toml"
    config_path.write_text(CONFIG.format(key=key[0], mode=mode))
    config = load(config_path)
    runtime = Runtime(config.milter, config.streams, KeyStore(config.milter.keys))
    Milter.factory = lambda: SendguardMilter(runtime)
    ctx = Ctx()
    ctx._setsymval("{daemon_port}", "25")
    ctx._setsymval("{client_port}", "40000")
    ctx._setsymval("{client_addr}", "172.18.0.5")
    ctx._setsymval("i", "5C0FFEE123")
    assert ctx._connect(host="listmonk", helo="listmonk", ip="172.18.0.5") == Milter.CONTINUE
    assert ctx._envfrom(b"<bounce@send.example.net>") == Milter.CONTINUE
    assert ctx._envrcpt(b"<dispatch@carrier.example.org>") == Milter.CONTINUE
    for name, value in headers:
        assert ctx._priv.header_bytes(name, value) == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._feed_body(io.BytesIO(body)) == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE
    sent = b"".join(f.encode() + b": " + v.encode().replace(b"\n", b"\r\n") + b"\r\n" for f, v in ctx.added)
    sent += b"".join(n.encode() + b": " + v + b"\r\n" for n, v in headers)
    sent += b"\r\n" + (ctx.new_body if ctx.new_body is not None else body)
    return ctx, sent


def verify(message: bytes, key) -> bool:
    def dns(name, timeout=5):
        return key[1] if name.rstrip(b".") == b"send._domainkey.send.example.net" else None

    return dkim.verify(message, dnsfunc=dns)


def test_listmonk_campaign_is_rewritten_then_signed_and_verifies(tmp_path, key, lm) -> None:
    cta = "https://send.example.net/order/acme-freight&utm_source=listmonk&dot=1234567@TrackLink"
    msg = lm.listmonk_alternative(cta)
    ctx, sent = run_milter(tmp_path, key, msg.headers, msg.body)
    assert ctx.new_body is not None and b"TrackLink" not in ctx.new_body
    fixed = "https://send.example.net/order/acme-freight?utm_source=listmonk&dot=1234567"
    assert all(fixed.encode() in payload for _, payload in lm.decoded_leaves(msg, ctx.new_body))
    assert [f for f, _ in ctx.added] == ["DKIM-Signature"]
    assert verify(sent, key)
    # The signature covers the repaired body: the original body would not verify under it.
    original = sent.replace(ctx.new_body, msg.body)
    assert not verify(original, key)


def test_report_only_signs_the_untouched_body(tmp_path, key, lm) -> None:
    msg = lm.listmonk_alternative("https://send.example.net/order/acme?dot=1@TrackLink")
    ctx, sent = run_milter(tmp_path, key, msg.headers, msg.body, mode="report-only")
    assert ctx.new_body is None
    assert verify(sent, key)


def test_broken_mime_is_passed_unchanged_and_still_signed(tmp_path, key, lm) -> None:
    headers = lm.top_headers('multipart/alternative; boundary="never-closed"')
    body = b"--never-closed\r\nContent-Type: text/plain\r\n\r\nhttps://send.example.net/o?dot=1@TrackLink\r\n"
    ctx, sent = run_milter(tmp_path, key, headers, body)
    assert ctx.new_body is None
    assert re.search(rb"^DKIM-Signature: ", sent)
    assert verify(sent, key)
