"""Signing throughput, in-process: messages per second for 2 KB, 20 KB and 200 KB messages.

Three measurements per size, one 2048-bit key generated at start:

* ``sendguard sign``  — sendguard_milter.dkim_sign.sign (dkimpy canonicalization, OpenSSL RSA);
* ``dkimpy sign``     — dkim.sign, dkimpy's pure-Python RSA, for comparison;
* ``milter EOM``      — the whole end-of-message path through pymilter's TestCtx:
  link repair scan, decision, signing (what Postfix waits for).

Run: ``python benchmarks/bench_signing.py [--seconds 2]`` (not from inside milter/).
Results are written down in benchmarks/RESULTS-signing.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import dkim
import Milter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sendguard.cli.settings import load
from sendguard_milter import dkim_sign
from sendguard_milter.app import Runtime
from sendguard_milter.keys import KeyStore

# The milter test client is a test helper, not part of the installed package:
# only its folder goes on the path (never the repository root, whose milter/
# folder would shadow pymilter's `milter` extension).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from sendguard_testing.milter_client import feed  # noqa: E402

SIZES = {"2 KB": 2_000, "20 KB": 20_000, "200 KB": 200_000}
HEADERS = [b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version", b"Content-Type", b"List-Unsubscribe"]


def make_message(size: int) -> bytes:
    head = (
        b"From: Trucking <noreply@send.example.net>\r\nTo: carrier@example.org\r\nSubject: Loads near you\r\n"
        b"Date: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <b1@send.example.net>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nList-Unsubscribe: <mailto:u@send.example.net>\r\n\r\n"
    )
    line = b'<p>Dear carrier, new loads on your lanes: <a href="https://send.example.net/l/abc">see them</a>.</p>\r\n'
    body = line * (max(1, size - len(head)) // len(line) + 1)
    return head + body[: size - len(head)] + b"\r\n"


def rate(fn, seconds: float) -> float:
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def milter_eom(runtime: Runtime, message: bytes):
    """One message through the milter's callbacks (connect to end of message), as a callable to time."""
    head, _, body = message.partition(b"\r\n\r\n")
    headers = [(name.decode(), value) for name, value in (line.split(b": ", 1) for line in head.split(b"\r\n"))]

    def once() -> None:
        _, rc = feed(runtime, headers, body, client="172.18.0.5", hostname="listmonk", helo="listmonk", queue_id="BENCH00001")
        assert rc == Milter.CONTINUE

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    (tmp / "send.private").write_bytes(pem)
    os.chmod(tmp / "send.private", 0o600)
    (tmp / "sendguard.toml").write_text(
        f"""
[milter]
trusted_hosts = ["127.0.0.1/8", "172.18.0.5/32"]
[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{tmp}/send.private"
[signing.table]
"send.example.net" = "send"
"""
    )
    config = load(tmp / "sendguard.toml")
    runtime = Runtime(config.milter, config.streams, KeyStore(config.milter.keys))
    include = dkim_sign.header_list(HEADERS, config.milter.signed_headers, config.milter.oversign_headers)

    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"2048-bit RSA, {args.seconds:.0f} s per cell")
    print("| size | sendguard sign (msg/s) | dkimpy sign (msg/s) | milter EOM (msg/s) |")
    print("|---|---:|---:|---:|")
    for label, size in SIZES.items():
        message = make_message(size)
        ours = rate(lambda: dkim_sign.sign(message, domain="send.example.net", selector="send", private_key=key, include_headers=include), args.seconds)
        theirs = rate(lambda: dkim.sign(message, b"send", b"send.example.net", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=include), args.seconds)
        eom = rate(milter_eom(runtime, message), args.seconds)
        print(f"| {label} | {ours:,.0f} | {theirs:,.0f} | {eom:,.0f} |")


if __name__ == "__main__":
    main()
