"""Builders for Listmonk-shaped messages, shared by the link tests.

Messages are written byte by byte (not with the email package) so the tests
control exactly what the milter receives: CRLF line ends, quoted-printable
with long lines and soft breaks, base64, boundaries and preambles. Decoding
for the assertions uses the standard library's parser, independent of the
code under test.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
import uuid
from dataclasses import dataclass

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CRLF = b"\r\n"


@dataclass
class Msg:
    """A message as the milter sees it: top-level header fields and the raw body."""

    headers: list[tuple[str, bytes]]
    body: bytes

    def raw(self, body: bytes | None = None) -> bytes:
        head = b"".join(n.encode() + b": " + v + CRLF for n, v in self.headers)
        return head + CRLF + (self.body if body is None else body)


def qp(text: str, charset: str = "utf-8") -> bytes:
    """Quoted-printable as Listmonk's mailer writes it: CRLF, 76-column soft breaks."""
    data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode(charset)
    return re.sub(rb"(?<!\r)\n", b"\r\n", binascii.b2a_qp(data, istext=True))


def b64(text: str, charset: str = "utf-8", width: int = 76) -> bytes:
    data = base64.b64encode(text.encode(charset))
    return CRLF.join(data[i : i + width] for i in range(0, len(data), width)) + CRLF


def part(ctype: str, cte: str, payload: bytes, extra: str = "") -> bytes:
    """One body part: headers, blank line, payload."""
    head = f"Content-Type: {ctype}\r\n"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\r\n"
    head += extra
    return head.encode() + CRLF + payload


def multipart(boundary: str, parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart body: every part is preceded by its delimiter line, then the close delimiter."""
    out = preamble
    for p in parts:
        out += b"--" + boundary.encode() + CRLF + p
        if not p.endswith(CRLF):
            out += CRLF
    return out + b"--" + boundary.encode() + b"--" + CRLF + epilogue


def top_headers(ctype: str, cte: str | None = None, **extra: str) -> list[tuple[str, bytes]]:
    """The header fields a Listmonk campaign message carries."""
    hdrs = [
        ("From", b'"Example Freight" <noreply@send.example.net>'),
        ("To", b"<dispatch@carrier.example.org>"),
        ("Subject", b"Your lane rates for next week"),
        ("Message-Id", f"<{uuid.uuid4()}@send.example.net>".encode()),
        ("Date", b"Sun, 22 Nov 2026 07:00:00 +0000"),
        ("List-Unsubscribe", b"<https://lists.example.net/subscription/abc/def>"),
        ("X-Listmonk-Campaign", b"3b0c6a9e-5d2f-4c1a-9f3e-7a8b9c0d1e2f"),
        ("X-Listmonk-Subscriber", b"7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918"),
        ("MIME-Version", b"1.0"),
        ("Content-Type", ctype.encode()),
    ]
    if cte:
        hdrs.append(("Content-Transfer-Encoding", cte.encode()))
    hdrs.extend((k.replace("_", "-"), v.encode()) for k, v in extra.items())
    return hdrs


REDIRECT = "https://lists.example.net/link/0f2c7e38-2f7b-4b26-a0b5-0c2f8b3b6c11/3b0c6a9e-5d2f-4c1a-9f3e-7a8b9c0d1e2f/7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918"


def listmonk_html(cta: str, filler_rows: int = 3, extra_links: str = "") -> str:
    """A Listmonk-rendered HTML campaign: long table lines, a redirect-tracked link, a CTA."""
    rows = "".join(
        f'<tr><td style="padding:12px 24px;font-family:Helvetica,Arial,sans-serif;font-size:15px;line-height:22px;color:#333333;">'
        f"Lane {i}: Dallas, TX → Atlanta, GA — dry van, 42,000 lb, pick-up Tuesday, rate confirmed on booking. Détails inside.</td></tr>"
        for i in range(filler_rows)
    )
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Lane rates</title></head>"
        '<body style="background:#f4f4f4;margin:0;padding:0;"><table role="presentation" width="100%" cellpadding="0" cellspacing="0">'
        f"{rows}"
        f'<tr><td><a href="{REDIRECT}" style="color:#0055aa;">Read our carrier guide</a></td></tr>'
        f'<tr><td align="center"><a href="{cta}" style="background:#0055aa;color:#ffffff;padding:14px 28px;text-decoration:none;border-radius:4px;">Book this load</a></td></tr>'
        f"{extra_links}"
        '<tr><td><img src="https://lists.example.net/campaign/3b0c6a9e-5d2f-4c1a-9f3e-7a8b9c0d1e2f/7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918/px.png" alt="" width="1" height="1"></td></tr>'
        "</table></body></html>"
    )


def listmonk_text(cta: str) -> str:
    return (
        "Hello Dispatch,\n\nYour lane rates for next week are ready.\n\n"
        f"Read our carrier guide ({REDIRECT})\n"
        f"Book this load ({cta})\n\n"
        "Unsubscribe: https://lists.example.net/subscription/abc/def\n"
    )


def listmonk_alternative(cta_html: str, cta_text: str | None = None, boundary: str = "6a2f0c9d1e8b7a4c3d5e") -> Msg:
    """multipart/alternative, both parts quoted-printable UTF-8, as Listmonk sends them."""
    text = part('text/plain; charset="UTF-8"', "quoted-printable", qp(listmonk_text(cta_text or cta_html)))
    html = part('text/html; charset="UTF-8"', "quoted-printable", qp(listmonk_html(cta_html)))
    body = multipart(boundary, [text, html])
    return Msg(top_headers(f'multipart/alternative; boundary="{boundary}"'), body)


def decoded_leaves(msg: Msg, body: bytes | None = None) -> list[tuple[str, bytes]]:
    """(content type, decoded payload) of every leaf, by the standard library's parser."""
    parsed = email.message_from_bytes(msg.raw(body), policy=email.policy.compat32)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in parsed.walk() if not p.is_multipart()]


class Signer:
    """Signs with dkimpy using a key generated for the test run, and verifies it."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def dns(self, name: bytes, timeout: int = 5) -> bytes:
        assert name == b"send._domainkey.send.example.net."
        return self.txt

    def sign_and_verify(self, raw: bytes) -> bool:
        sig = dkim.sign(raw, b"send", b"send.example.net", self.private, include_headers=[b"from", b"to", b"subject"])
        return dkim.verify(sig + raw, dnsfunc=self.dns)


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="session")
def lm():
    """This module: the builders above, for tests (importlib mode cannot import conftest by name)."""
    import sys

    return sys.modules[__name__]
