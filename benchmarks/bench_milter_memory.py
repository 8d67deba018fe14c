"""Milter memory with large messages: RSS of the real milter process over N × 10 MB messages.

Starts ``sendguard milter --config`` as a process, then sends messages one at a
time over the milter protocol (the test client, as Postfix speaks it through
libmilter): each is a Listmonk-like multipart/mixed with a small HTML part whose
per-subscriber link carries a literal ``@TrackLink`` (so link repair runs and
the body is replaced) and a base64 attachment filling it to ``--size`` bytes.
After every message the milter's RSS (``/proc/PID/status`` VmRSS) is sampled;
the first, the last and every 10th signature are verified with dkimpy.

Run: ``python benchmarks/bench_milter_memory.py [--messages 100] [--size 10000000]
[--bound-mb 150]`` (not from inside milter/). Exits 1 when the highest RSS the
process ever had (VmHWM, which includes the peak inside an end of message) is
over the bound, or a message is not signed and repaired, or a signature fails.
Results are written down in benchmarks/RESULTS-milter-memory.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# The milter test client is a test helper, not part of the installed package:
# only its folder goes on the path (never the repository root, whose milter/
# folder would shadow pymilter's `milter` extension).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from ports import free_port  # noqa: E402
from sendguard_testing.milter_client import MilterClient, MilterProcess, final_message  # noqa: E402

CONFIG = """
[milter]
listen = "inet:127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
trusted_hosts = ["127.0.0.0/8"]

[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{key}"

[signing.table]
"send.example.net" = "send"
"""


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of ``pid`` in KiB (``VmHWM``: the highest it has been)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def make_message(size: int, n: int) -> bytes:
    """A multipart/mixed message of about ``size`` bytes whose HTML link needs repair."""
    html = (
        f'<p>Load {n}: <a href="https://send.example.net/order/acme-{n}?dot=123456@TrackLink">book it</a></p>\r\n'
    ).encode()
    head = (
        b"From: Trucking <noreply@send.example.net>\r\nTo: carrier@example.org\r\n"
        b"Subject: Rate sheet " + str(n).encode() + b"\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\n"
        b"Message-ID: <big" + str(n).encode() + b"@send.example.net>\r\nMIME-Version: 1.0\r\n"
        b"List-Unsubscribe: <mailto:u@send.example.net>\r\n"
        b'Content-Type: multipart/mixed; boundary="b0undary"\r\n\r\n'
    )
    part = b'--b0undary\r\nContent-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n' + html
    attach_head = (
        b"--b0undary\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=rates.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    raw_len = max(0, (size - len(head) - len(part) - len(attach_head)) * 57 // 78)
    blob = os.urandom(raw_len)
    lines = b"\r\n".join(base64.b64encode(blob[i : i + 57]) for i in range(0, len(blob), 57))
    return head + part + attach_head + lines + b"\r\n--b0undary--\r\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--bound-mb", type=float, default=150.0, help="highest RSS allowed (MiB)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sendguard-bench-mem-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = work / "send.private"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"send._domainkey.send.example.net." else b""

    port, metrics_port = free_port(), free_port()
    config = work / "sendguard.toml"
    config.write_text(CONFIG.format(port=port, metrics_port=metrics_port, key=key_file))
    milter = MilterProcess(config, work / "milter.log", port, metrics_port)
    pid = milter.proc.pid
    failures = []
    try:
        start_rss = rss_kb(pid)
        samples: list[int] = []
        started = time.perf_counter()
        for n in range(args.messages):
            message = make_message(args.size, n)
            client = MilterClient(port, timeout=120)
            client.connect("127.0.0.1", 41000 + n % 20000)
            result = client.message(message, "bounce@send.example.net", queue_id=f"BIG{n:07d}")
            client.close()
            if not (result["added"] and result["added"][0][0] == "DKIM-Signature" and result["body"] is not None):
                failures.append(f"message {n}: not signed and repaired: {result['result']!r}")
            elif (n in (0, args.messages - 1) or n % 10 == 0) and not dkim.verify(final_message(result), dnsfunc=dnsfunc):
                failures.append(f"message {n}: signature does not verify")
            del message, result
            samples.append(rss_kb(pid))
        elapsed = time.perf_counter() - started
        high_water = rss_kb(pid, "VmHWM")  # the peak, in the middle of an end of message
    finally:
        milter.stop()

    mib = lambda kb: kb / 1024  # noqa: E731
    peak = max(samples)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"messages: {args.messages} × {args.size / 1e6:.1f} MB, one at a time, in {elapsed:.1f} s ({elapsed / args.messages:.2f} s each)")
    print(f"RSS before the first message: {mib(start_rss):.1f} MiB")
    marks = sorted({i for i in (1, 10, 50, args.messages) if i <= len(samples)})
    print(f"RSS after message {', '.join(map(str, marks))}: " + ", ".join(f"{mib(samples[i - 1]):.1f}" for i in marks) + " MiB")
    print(f"highest RSS after a message: {mib(peak):.1f} MiB; highest RSS at any time (VmHWM): {mib(high_water):.1f} MiB; bound {args.bound_mb:.0f} MiB")
    print(f"signatures checked with dkimpy: {len([n for n in range(args.messages) if n in (0, args.messages - 1) or n % 10 == 0])}, failures: {len(failures)}")
    for failure in failures:
        print("FAIL:", failure)
    over = mib(high_water) > args.bound_mb
    if over:
        print(f"FAIL: RSS {mib(high_water):.1f} MiB is over the bound of {args.bound_mb:.0f} MiB")
    return 1 if failures or over else 0


if __name__ == "__main__":
    sys.exit(main())
