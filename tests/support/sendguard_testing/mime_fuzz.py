"""The MIME fuzzer: arbitrary and malformed MIME for the milter, and the check of what it did.

Shared by the fast test (``tests/fuzz/test_milter_mime_fuzz.py``) and the full campaign
(``tests/soak/run_campaign.py``). A message is built from a seed: a tree of multiparts (broken
boundaries, missing close delimiters, preambles, nesting with the same boundary) and leaves
(text, HTML, binary; 7bit, 8bit, quoted-printable, base64 and bogus encodings; several
charsets), links that need no repair and, in a share of messages, links that do
(``&`` starting a query, ``@TrackLink`` markers), then byte-level damage.

:func:`listmonk_message` writes well-formed campaign mail from the same link text, for the
campaign's run through a real Postfix, where every message must pass.

Whether a message *could* need a link repair is judged independently of the code under test:
only a message whose raw body or any leaf decoded by the standard library holds ``&`` or
``TrackLink`` may come out with a different body.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import email.utils
import os
import random
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sendguard_testing.milter_client import Field

CRLF = b"\r\n"
#: No "&" and no "@": clean filler can never need a link repair.
_CLEAN = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ0123456789.,;:!?=<>\"'/-_()éü→—"
_CLEAN_LINKS = [
    "https://example.net/blog/lane-rates",
    "https://example.net/order?id=5",
    "https://lists.example.net/link/0f2c7e38-2f7b-4b26-a0b5-0c2f8b3b6c11/3b0c6a9e-5d2f-4c1a-9f3e-7a8b9c0d1e2f/7f6e5d4c",
    "http://example.org/a/b/c?x=1#top",
    "mailto:dispatch.example.org",
]
_DIRTY_LINKS = [
    "https://example.net/order/acme-freight&utm_source=x&dot=5@TrackLink",
    "https://example.net/blog?utm_campaign=x@TrackLink",
    "https://example.net/p/slug&amp;utm_medium=email",
    "https://example.net/q&a=1&b=2",
]
_DAMAGE = [b"\r\n", b"\n", b"\r", b"=", b"=\r\n", b"--", b"\x00", b"\xff\xfe", b"\x80", b'"', b"<a href=", b"=3D", b"=\r", b"\t", b" "]
_CHARSETS = ["utf-8", "iso-8859-1", "utf-16", "us-ascii", "x-unknown", ""]
_CTES = ["7bit", "8bit", "quoted-printable", "base64", "binary", "x-uuencode", "BASE64", "quoted-printable; x=1", ""]


#: The milter config the fuzzed messages go through: Listmonk (172.18.0.5) is a bulk stream
#: on port 25, its sender domain signed with the one key.
MILTER_CONFIG = """[milter]
trusted_hosts = ["127.0.0.1/8", "172.18.0.5/32"]
{listen}
[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{key}"

[signing.table]
"send.example.net" = "send"

[streams.trucking]
bulk = true
[streams.trucking.match]
server_port = [25]
client_address = ["172.18.0.5/32"]
"""

DnsFunc = Callable[..., "bytes | None"]


def signing_key(folder: Path) -> tuple[Path, DnsFunc]:
    """Generate the bulk domain's 2048-bit key as ``folder/send.private``; return its path and
    the DNS lookup that serves its public half (``send._domainkey.send.example.net``) to dkimpy."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = folder / "send.private"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    os.chmod(key_file, 0o600)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == b"send._domainkey.send.example.net" else None

    return key_file, dns


def write_milter_config(folder: Path, listen: str = "") -> tuple[Path, DnsFunc]:
    """Generate a signing key in ``folder``, write the config (``listen``: extra ``[milter]``
    lines); return its path and the DNS lookup that serves the key's public half to dkimpy."""
    key_file, dns = signing_key(folder)
    config = folder / "sendguard.toml"
    config.write_text(MILTER_CONFIG.format(listen=listen, key=key_file))
    return config, dns


@dataclass(frozen=True)
class Fuzzed:
    """One generated message: its header fields and body as the milter receives them."""

    headers: list[Field]
    body: bytes
    dirty: bool  # links that need a repair were planted


def _text(rng: random.Random, dirty: bool, html: bool) -> str:
    out = []
    for _ in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.5:
            out.append("".join(rng.choice(_CLEAN) for _ in range(rng.randint(0, 70))))
        elif r < 0.6:
            out.append("\n")
        else:
            link = rng.choice(_DIRTY_LINKS if dirty and rng.random() < 0.5 else _CLEAN_LINKS)
            out.append(f'<a href="{link}">go</a>' if html and rng.random() < 0.8 else link)
    if dirty:  # at least one link that needs a repair, somewhere in the part
        link = rng.choice(_DIRTY_LINKS)
        out.insert(rng.randint(0, len(out)), f'<a href="{link}">book</a>' if html else link)
    return " ".join(out)


def _encode(rng: random.Random, text: str, charset: str, cte: str) -> bytes:
    try:
        data = text.encode(charset or "utf-8")
    except (LookupError, UnicodeEncodeError):
        data = text.encode("utf-8")
    base = cte.split(";")[0].strip().lower()
    if base == "base64":
        enc = base64.b64encode(data)
        width = rng.choice([76, 64, 1000, 3])
        out = CRLF.join(enc[i : i + width] for i in range(0, len(enc), width)) + CRLF
    elif base == "quoted-printable":
        out = binascii.b2a_qp(data, istext=True).replace(b"\n", CRLF)
    else:
        out = data.replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    return out


def _leaf(rng: random.Random, dirty: bool) -> bytes:
    kind = rng.random()
    if kind < 0.15:
        payload = base64.b64encode(bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))) + CRLF
        head = f"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"f{rng.randrange(99)}.bin\"\r\n"
        return head.encode() + CRLF + payload
    html = kind < 0.6
    charset, cte = rng.choice(_CHARSETS), rng.choice(_CTES)
    ctype = "text/html" if html else "text/plain"
    head = f"Content-Type: {ctype}" + (f'; charset="{charset}"' if charset else "") + "\r\n"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\r\n"
    if rng.random() < 0.1:
        head += "Content-Disposition: inline\r\n"
    return head.encode() + CRLF + _encode(rng, _text(rng, dirty, html), charset, cte)


def _tree(rng: random.Random, dirty: bool, depth: int) -> tuple[str, bytes]:
    """(Content-Type value, body) of a part: a leaf's own headers go inside its body here."""
    if depth >= 3 or rng.random() < 0.35:
        return "", _leaf(rng, dirty)  # a leaf keeps its headers
    boundary = rng.choice(["b1", "=_b2", "----=_Part_0_1", "bb", f"x{rng.randrange(10**6)}"])
    subtype = rng.choice(["mixed", "alternative", "related", "signed", "x-odd"])
    parts = [_tree(rng, dirty, depth + 1)[1] for _ in range(rng.randint(0, 4))]
    body = b"preamble\r\n" if rng.random() < 0.3 else b""
    for p in parts:
        body += b"--" + boundary.encode() + CRLF + p
        if not p.endswith(CRLF):
            body += CRLF
    if rng.random() < 0.85:  # sometimes the close delimiter is missing
        body += b"--" + boundary.encode() + b"--" + CRLF
    if rng.random() < 0.2:
        body += b"epilogue\r\n"
    ctype = f'multipart/{subtype}; boundary="{boundary}"' if rng.random() < 0.9 else f"multipart/{subtype}"
    return ctype, b"Content-Type: " + ctype.encode() + CRLF + CRLF + body


def message(rng: random.Random, dirty_share: float = 0.5) -> Fuzzed:
    """A fuzzed Listmonk-like campaign message from the bulk sender."""
    dirty = rng.random() < dirty_share
    _, whole = _tree(rng, dirty, 0)
    part_head, _, body = whole.partition(CRLF + CRLF)
    headers: list[Field] = [
        ("From", b'"Example Freight" <noreply@send.example.net>'),
        ("To", b"<dispatch@carrier.example.org>"),
        ("Subject", b"Your lane rates for next week"),
        ("Message-Id", f"<{rng.randrange(10**12)}@send.example.net>".encode()),
        ("Date", b"Sun, 22 Nov 2026 07:00:00 +0000"),
        ("List-Unsubscribe", b"<https://lists.example.net/subscription/abc/def>"),
        ("MIME-Version", b"1.0"),
    ]
    for line in part_head.split(CRLF):
        name, _, value = line.partition(b":")
        if name:
            headers.append((name.decode("ascii", "replace"), value.strip()))
    body = bytearray(body)
    for _ in range(rng.choice([0, 0, 1, 3, 8])):
        pos = rng.randint(0, len(body))
        piece = rng.choice(_DAMAGE) if rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        action = rng.randrange(3)
        if action == 0:
            body[pos:pos] = piece
        elif action == 1:
            del body[pos : pos + rng.randint(1, 40)]
        else:
            body[pos : pos + len(piece)] = piece
    return Fuzzed(headers, bytes(body), dirty)


def listmonk_message(rng: random.Random, seq: int, dirty_share: float = 0.3) -> Fuzzed:
    """A well-formed campaign message as Listmonk renders it, from the bulk sender, numbered ``seq``.

    multipart/alternative, a text and an HTML part (quoted-printable, base64 or 8-bit UTF-8
    in lines of at most 76 characters) written from the fuzzer's link text, Listmonk's own
    header fields, and ``Message-Id: <seq.N@send.example.net>`` so the copy a sink stored can
    be matched to it. In ``dirty_share`` of them, links that need a repair.
    """
    dirty = rng.random() < dirty_share
    boundary = f"{rng.getrandbits(64):016x}"
    body = b""
    for ctype, html in (("text/plain", False), ("text/html", True)):
        text = _text(rng, dirty, html)
        if html:
            text = f"<!doctype html><html><body><p>{text}</p></body></html>"
        cte = rng.choice(["quoted-printable", "quoted-printable", "base64", "8bit"])
        if cte == "8bit":
            text = "\n".join(textwrap.wrap(text, 76, break_long_words=False, break_on_hyphens=False))
        head = f'Content-Type: {ctype}; charset="UTF-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
        if cte == "base64":  # Listmonk's (Go's) width; the fuzzer's widths include over-long lines
            encoded = base64.encodebytes(text.encode()).replace(b"\n", CRLF)
        else:
            encoded = _encode(rng, text, "utf-8", cte)
        body += b"--" + boundary.encode() + CRLF + head.encode() + encoded + (b"" if encoded.endswith(CRLF) else CRLF)
    body += b"--" + boundary.encode() + b"--" + CRLF
    subscriber = f"{rng.getrandbits(128):032x}"
    headers: list[Field] = [
        ("From", b'"Example Freight" <noreply@send.example.net>'),
        ("To", f"<dispatch{seq}@carrier{seq % 97}.example.org>".encode()),
        ("Subject", b"Your lane rates for next week"),
        ("Message-Id", f"<seq.{seq}@send.example.net>".encode()),
        ("Date", email.utils.formatdate(usegmt=True).encode()),
        ("List-Unsubscribe", f"<https://lists.example.net/subscription/{subscriber}>".encode()),
        ("List-Unsubscribe-Post", b"List-Unsubscribe=One-Click"),
        ("X-Listmonk-Campaign", b"5f1b2c3d-0000-4000-8000-00000000000f"),
        ("X-Listmonk-Subscriber", subscriber.encode()),
        ("MIME-Version", b"1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'.encode()),
    ]
    return Fuzzed(headers, body, dirty)


def could_need_repair(msg: Fuzzed) -> bool:
    """Whether any link in the message could need a repair, judged with the standard library:
    ``&`` or ``TrackLink`` in the raw body or in any leaf as the standard library decodes it."""
    if msg.dirty or b"&" in msg.body or b"TrackLink" in msg.body:
        return True
    raw = b"".join(n.encode() + b": " + v + CRLF for n, v in msg.headers) + CRLF + msg.body
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in parsed.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        if b"&" in payload or b"TrackLink" in payload or b"&\x00" in payload:
            return True
        for codec in ("utf-16", "utf-16-le", "utf-16-be"):
            try:
                if "&" in payload.decode(codec) or "TrackLink" in payload.decode(codec):
                    return True
            except UnicodeDecodeError:
                pass
    return False


def unverifiable_signatures(message: bytes, count: int, dnsfunc) -> int:
    """How many of the top ``count`` DKIM-Signature fields of ``message`` fail to verify (dkimpy)."""
    checker = dkim.DKIM(message)
    bad = 0
    for i in range(count):
        try:
            bad += not checker.verify(idx=i, dnsfunc=dnsfunc)
        except dkim.DKIMException:  # a body hash mismatch is raised, not returned
            bad += 1
    return bad
