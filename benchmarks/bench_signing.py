"""Signing throughput, in-process: messages per second for 2 KB, 20 KB and 200 KB messages.

Four measurements per size, in alternating rounds (medians printed), one
2048-bit RSA key and one Ed25519 key generated at start:

* ``sendguard sign``  — sendguard_milter.dkim_sign.sign (dkimpy canonicalization, OpenSSL RSA);
* ``dkimpy sign``     — dkim.sign, dkimpy's pure-Python RSA, for comparison;
* ``milter EOM``      — the whole end-of-message path through pymilter's TestCtx:
  link repair scan, decision, signing (what Postfix waits for);
* ``EOM RSA+Ed25519`` — the same with the key entry's second, Ed25519 signature
  (RFC 8463), and its cost as a ratio to the RSA-only EOM of the same round.

Run: ``python benchmarks/bench_signing.py [--seconds 2] [--rounds 3]`` (not from inside milter/).
Results are written down in benchmarks/RESULTS-signing.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dkim
import Milter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

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


def milter_eom(runtime: Runtime, message: bytes, signatures: int = 1):
    """One message through the milter's callbacks (connect to end of message), as a callable to time.

    Each call checks that the message got its ``signatures``: a fast unsigned message is a failure.
    """
    head, _, body = message.partition(b"\r\n\r\n")
    headers = [(name.decode(), value) for name, value in (line.split(b": ", 1) for line in head.split(b"\r\n"))]

    def once() -> None:
        ctx, rc = feed(runtime, headers, body, client="172.18.0.5", hostname="listmonk", helo="listmonk", queue_id="BENCH00001")
        assert rc == Milter.CONTINUE
        assert sum(1 for added in ctx.added if added[0] == "DKIM-Signature") == signatures

    return once


def _runtime(tmp: Path, name: str, ed25519_key_file: Path | None) -> Runtime:
    second = "" if ed25519_key_file is None else f'ed25519_selector = "ed"\ned25519_key_file = "{ed25519_key_file}"\n'
    (tmp / name).write_text(
        f"""
[milter]
trusted_hosts = ["127.0.0.1/8", "172.18.0.5/32"]
[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{tmp}/send.private"
{second}
[signing.table]
"send.example.net" = "send"
"""
    )
    config = load(tmp / name)
    return Runtime(config.milter, config.streams, KeyStore(config.milter.keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per size (medians printed)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    (tmp / "send.private").write_bytes(pem)
    os.chmod(tmp / "send.private", 0o600)
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_pem = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp / "ed.private").write_bytes(ed_pem)
    os.chmod(tmp / "ed.private", 0o600)
    runtime = _runtime(tmp, "rsa.toml", None)
    dual = _runtime(tmp, "dual.toml", tmp / "ed.private")
    milter = runtime.settings
    include = dkim_sign.header_list(HEADERS, milter.signed_headers, milter.oversign_headers)

    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"2048-bit RSA, {args.seconds:g} s per cell, {args.rounds} alternating rounds, medians; load {os.getloadavg()[0]:.2f}")
    print("| size | sendguard sign (msg/s) | dkimpy sign (msg/s) | milter EOM (msg/s) | EOM RSA+Ed25519 (msg/s) | dual / RSA-only EOM |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, size in SIZES.items():
        message = make_message(size)
        cells = {
            "ours": lambda: dkim_sign.sign(message, domain="send.example.net", selector="send", private_key=key, include_headers=include),
            "theirs": lambda: dkim.sign(message, b"send", b"send.example.net", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=include),
            "eom": milter_eom(runtime, message),
            "dual": milter_eom(dual, message, signatures=2),
        }
        rates: dict[str, list[float]] = {name: [] for name in cells}
        ratios: list[float] = []
        for round_no in range(args.rounds):
            order = list(cells) if round_no % 2 == 0 else list(reversed(cells))
            for name in order:
                rates[name].append(rate(cells[name], args.seconds))
            ratios.append(rates["dual"][-1] / rates["eom"][-1])
        med = {name: statistics.median(values) for name, values in rates.items()}
        print(f"| {label} | {med['ours']:,.0f} | {med['theirs']:,.0f} | {med['eom']:,.0f} | {med['dual']:,.0f} | "
              f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) |")


if __name__ == "__main__":
    main()
