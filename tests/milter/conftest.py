"""Shared fixtures of the milter tests: keys generated at test time, configs, and a driver
that feeds raw messages through pymilter's test harness (``Milter.testctx.TestCtx``)
exactly as libmilter would call the callbacks, then verifies what came out."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket as _socket
import struct as _struct
import subprocess
import sys
import textwrap
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import Milter
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from Milter.testctx import TestCtx

from sendguard.cli.settings import load
from sendguard_milter.app import Runtime, SendguardMilter
from sendguard_milter.keys import KeyStore
from ports import free_port

HERE = Path(__file__).resolve().parent


def write_key(path: Path, bits: int = 2048, mode: int = 0o600) -> rsa.RSAPrivateKey:
    """Generate an RSA key and write it as PKCS#1 PEM with ``mode``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    os.chmod(path, mode)
    return key


def dns_txt(key: rsa.RSAPrivateKey) -> bytes:
    """The DKIM TXT record for ``key``."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.fixture(name="dns_txt")
def dns_txt_fixture():
    """``dns_txt(key)``: the DKIM TXT record of a key."""
    return dns_txt


@pytest.fixture(name="write_key")
def write_key_fixture():
    """``write_key(path, bits=2048, mode=0o600)``: generate a key file."""
    return write_key


@dataclass
class TestKeys:
    dir: Path
    send: rsa.RSAPrivateKey
    mail: rsa.RSAPrivateKey

    def records(self) -> dict[str, bytes]:
        return {
            "send._domainkey.send.example.net": dns_txt(self.send),
            "mail._domainkey.example.net": dns_txt(self.mail),
        }

    def dnsfunc(self, name, timeout=5):
        n = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        return self.records().get(n)


@pytest.fixture(scope="session")
def test_keys(tmp_path_factory) -> TestKeys:
    d = tmp_path_factory.mktemp("keys")
    return TestKeys(dir=d, send=write_key(d / "send.private"), mail=write_key(d / "mail.private"))


BASE_CONFIG = """
[milter]
listen = "inet:127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
trusted_hosts = ["127.0.0.1/8", "::1/128", "172.18.0.5/32", "172.18.0.25/32"]
{milter_extra}

[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{keys}/send.private"

[signing.keys.mail]
domain = "example.net"
selector = "mail"
key_file = "{keys}/mail.private"

[signing.table]
"send.example.net" = "send"
"example.net" = "mail"
"*.example.net" = "mail"

[streams.trucking]
bulk = true
[streams.trucking.match]
server_port = [25]
client_address = ["172.18.0.5/32"]

[streams.healthcare]
bulk = true
[streams.healthcare.match]
server_port = [2526]
{extra}
"""


@pytest.fixture
def write_config(tmp_path, test_keys):
    """Write a config file from BASE_CONFIG (plus extra TOML) and return its path."""

    def make(extra: str = "", milter_extra: str = "", port: int = 8891, metrics_port: int = 9467, text: str | None = None) -> Path:
        path = tmp_path / "sendguard.toml"
        body = text if text is not None else BASE_CONFIG.format(
            keys=test_keys.dir, extra=textwrap.dedent(extra), milter_extra=textwrap.dedent(milter_extra),
            port=port, metrics_port=metrics_port,
        )
        path.write_text(body)
        return path

    return make


class RecordingCtx(TestCtx):
    """TestCtx that keeps header additions and body replacements as the MTA would receive them."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[tuple[str, str, int]] = []
        self.new_body: bytes | None = None

    def addheader(self, field, value, idx):
        self.added.append((field, value, idx))

    def replacebody(self, chunk):
        self.new_body = (self.new_body or b"") + chunk


def split_message(message: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split raw bytes into (name, value) pairs as Postfix hands them to a milter, and the body.

    Postfix strips the whitespace after the colon and joins continuation lines with LF.
    """
    m = re.search(rb"\r?\n\r?\n", message)
    head, body = (message[: m.start()], message[m.end() :]) if m else (message, b"")
    fields: list[list] = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\n" + line
        else:
            name, _, value = line.partition(b":")
            fields.append([name.decode("ascii"), value.lstrip(b" \t")])
    return [(n, v) for n, v in fields], body


@dataclass
class Outcome:
    rc: int
    reply: tuple | None
    added: list
    new_body: bytes | None
    message: bytes  # what Postfix would send on: added headers on top, body possibly replaced
    milter: SendguardMilter = field(repr=False, default=None)

    @property
    def signature_headers(self) -> list[bytes]:
        return [v.encode() for f, v, _ in self.added if f == "DKIM-Signature"]

    def tags(self, i: int = 0) -> dict[str, str]:
        sig = re.sub(rb"\s+", b"", self.signature_headers[i]).decode()
        return dict(part.split("=", 1) for part in sig.split(";") if part)


class Driver:
    """Feeds one message per call through SendguardMilter with libmilter's callback order."""

    def __init__(self, config_path: Path) -> None:
        self.config = load(config_path)
        self.keys = KeyStore(self.config.milter.keys)
        self.runtime = Runtime(self.config.milter, self.config.streams, self.keys)

    def run(
        self,
        message: bytes,
        *,
        client: str = "127.0.0.1",
        client_port: str = "41234",
        hostname: str = "client.example",
        daemon_port: str = "25",
        sasl: str | None = None,
        sender: str = "bounce@send.example.net",
        queue_id: str = "4ABCDEF123",
        crlf_body: bool = True,
    ) -> Outcome:
        Milter.factory = lambda: SendguardMilter(self.runtime)
        ctx = RecordingCtx()
        ctx._setsymval("{daemon_port}", daemon_port)
        ctx._setsymval("{client_port}", client_port)
        ctx._setsymval("{client_addr}", client)
        ctx._setsymval("i", queue_id)
        if sasl:
            ctx._setsymval("{auth_authen}", sasl)
        assert ctx._connect(host=hostname, helo="helo.example", ip=client) == Milter.CONTINUE
        assert ctx._envfrom(f"<{sender}>".encode()) == Milter.CONTINUE
        assert ctx._envrcpt(b"<rcpt@example.org>") == Milter.CONTINUE
        headers, body = split_message(message)
        for name, value in headers:
            assert ctx._priv.header_bytes(name, value) == Milter.CONTINUE
        assert ctx._eoh() == Milter.CONTINUE
        if crlf_body:
            # SMTP (and so the milter protocol) carries CRLF line ends.
            body = re.sub(rb"(?<!\r)\n", b"\r\n", body)
        assert ctx._feed_body(io.BytesIO(body)) == Milter.CONTINUE
        rc = ctx._eom()
        out = b""
        for f, v, _ in ctx.added:
            out += f.encode() + b": " + v.encode().replace(b"\n", b"\r\n") + b"\r\n"
        head = b"".join(n.encode() + b": " + v.replace(b"\n", b"\r\n") + b"\r\n" for n, v in headers)
        out += head + b"\r\n" + (ctx.new_body if ctx.new_body is not None else body)
        return Outcome(rc=rc, reply=ctx._reply, added=ctx.added, new_body=ctx.new_body, message=out, milter=ctx._priv)


@pytest.fixture
def driver(write_config):
    """A Driver over the brief's deployment (optionally with extra TOML)."""

    def make(extra: str = "", milter_extra: str = "", edit=None) -> Driver:
        path = write_config(extra=extra, milter_extra=milter_extra)
        if edit is not None:
            path.write_text(edit(path.read_text()))
        return Driver(path)

    return make


def msg(from_: str = "Trucking <noreply@send.example.net>", extra_headers: str = "", body: str = "Hello.\n", *, raw_body: bytes | None = None) -> bytes:
    """A small message with CRLF line ends."""
    head = f"From: {from_}\r\nTo: carrier@example.org\r\nSubject: Loads this week\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <m1@send.example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    if extra_headers:
        head += extra_headers.replace("\n", "\r\n").rstrip("\r\n") + "\r\n"
    b = raw_body if raw_body is not None else body.replace("\n", "\r\n").encode()
    return head.encode() + b"\r\n" + b


@pytest.fixture
def make_msg():
    return msg


def opendkim_verify(message: bytes, records: dict[str, bytes], tmp: Path) -> subprocess.CompletedProcess:
    """Verify with OpenDKIM's opendkim-testmsg against ``records`` served by a DNS stub.

    OpenDKIM resolves keys through the system resolver only. The check runs in
    private network and mount namespaces (``unshare``): a DNS stub answers on
    127.0.0.1:53 there and a private /etc/resolv.conf points at it, so nothing
    outside the test changes.
    """
    zone = tmp / "zone.txt"
    zone.write_text("".join(f"{n}\t{v.decode()}\n" for n, v in records.items()))
    (tmp / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    (tmp / "msg.eml").write_bytes(message)
    ready = Path(f"{zone}.ready")
    if ready.exists():
        ready.unlink()
    script = f"""
ip link set lo up || exit 90
mount --bind {tmp}/resolv.conf /etc/resolv.conf || exit 91
{sys.executable} {HERE}/dns_stub.py {zone} </dev/null >/dev/null 2>&1 & stub=$!
trap 'kill $stub 2>/dev/null' EXIT
for i in $(seq 100); do [ -e {ready} ] && break; sleep 0.05; done
opendkim-testmsg < {tmp}/msg.eml
"""
    return subprocess.run(["unshare", "--map-root-user", "--mount", "--net", "sh", "-c", script], capture_output=True, timeout=30)


@pytest.fixture
def opendkim(tmp_path, test_keys):
    if shutil.which("opendkim-testmsg") is None or shutil.which("unshare") is None:
        pytest.fail("opendkim-testmsg (opendkim-tools) and unshare (util-linux) are required")

    def check(message: bytes) -> subprocess.CompletedProcess:
        return opendkim_verify(message, test_keys.records(), tmp_path)

    return check


# -- the MTA side of the milter protocol, for tests against the real libmilter -----------

P_NOCONNECT, P_NOHELO, P_NOMAIL, P_NORCPT, P_NOBODY, P_NOHDRS, P_NOEOH = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40
P_NR_HDR, P_NODATA = 0x80, 0x200
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT, P_NR_DATA, P_NR_EOH, P_NR_BODY = (
    0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x40000, 0x80000,
)  # fmt: skip


class MilterClient:
    """A minimal MTA side of the milter protocol (version 6), the part Postfix speaks to a milter."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = _socket.create_connection((host, port), timeout=timeout)
        self._send(b"O", _struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
        cmd, data = self._recv()
        assert cmd == b"O", cmd
        self.version, self.actions, self.protocol = _struct.unpack("!III", data[:12])

    def _send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(_struct.pack("!I", len(data) + 1) + cmd + data)

    def _recv(self) -> tuple[bytes, bytes]:
        head = self._read(4)
        (length,) = _struct.unpack("!I", head)
        payload = self._read(length)
        return payload[:1], payload[1:]

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            buf += chunk
        return buf

    def _step(self, cmd: bytes, data: bytes, skip: int, noreply: int) -> bytes | None:
        if self.protocol & skip:
            return None
        self._send(cmd, data)
        if self.protocol & noreply:
            return None
        reply, payload = self._recv()
        if reply != b"c":
            return reply + payload
        return None

    def _macros(self, stage: bytes, macros: dict[str, str]) -> None:
        if macros:
            self._send(b"D", stage + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in macros.items()))

    def connect(self, client: str, port: int, hostname: str = "client.example", daemon_port: str = "25") -> None:
        self._macros(b"C", {"{daemon_port}": daemon_port, "{client_addr}": client, "{client_port}": str(port)})
        family = b"6" if ":" in client else b"4"
        data = hostname.encode() + b"\0" + family + _struct.pack("!H", port) + client.encode() + b"\0"
        assert self._step(b"C", data, P_NOCONNECT, P_NR_CONN) is None
        assert self._step(b"H", b"helo.example\0", P_NOHELO, P_NR_HELO) is None

    def message(self, message: bytes, sender: str, sasl: str | None = None, queue_id: str = "5B1E2D3C4F") -> dict:
        """Send one message; return {'result': b'a'|b'c'|b'r'|b't'|b'y...', 'added': [...], 'body': bytes|None}."""
        mail_macros = {"i": queue_id, "{mail_addr}": sender}
        if sasl:
            mail_macros["{auth_authen}"] = sasl
        self._macros(b"M", mail_macros)
        early = self._step(b"M", f"<{sender}>".encode() + b"\0", P_NOMAIL, P_NR_MAIL)
        assert early is None, early
        assert self._step(b"R", b"<rcpt@example.org>\0", P_NORCPT, P_NR_RCPT) is None
        assert self._step(b"T", b"", P_NODATA, P_NR_DATA) is None
        headers, body = split_message(message)
        for name, value in headers:
            assert self._step(b"L", name.encode() + b"\0" + value + b"\0", P_NOHDRS, P_NR_HDR) is None
        assert self._step(b"N", b"", P_NOEOH, P_NR_EOH) is None
        for i in range(0, len(body), 65535):
            assert self._step(b"B", body[i : i + 65535], P_NOBODY, P_NR_BODY) is None
        self._macros(b"E", {"i": queue_id})
        self._send(b"E")
        added, new_body = [], None
        while True:
            cmd, data = self._recv()
            if cmd == b"i":
                (idx,) = _struct.unpack("!I", data[:4])
                name, value, _ = data[4:].split(b"\0")
                added.append((name.decode(), value, idx))
            elif cmd == b"h":
                name, value, _ = data.split(b"\0")
                added.append((name.decode(), value, -1))
            elif cmd == b"b":
                new_body = (new_body or b"") + data
            elif cmd in (b"a", b"c", b"r", b"t", b"y"):
                return {"result": cmd + data.rstrip(b"\0"), "added": added, "body": new_body, "headers": headers, "raw_body": body}
            else:
                raise AssertionError(f"unexpected milter reply {cmd!r}")

    def close(self) -> None:
        try:
            self._send(b"Q")
        finally:
            self.sock.close()


def final_message(result: dict) -> bytes:
    """The message as Postfix would send it on: added headers on top (LF folding becomes CRLF)."""
    out = b""
    for name, value, _ in result["added"]:
        out += name.encode() + b": " + value.replace(b"\n", b"\r\n") + b"\r\n"
    out += b"".join(n.encode() + b": " + v.replace(b"\n", b"\r\n") + b"\r\n" for n, v in result["headers"])
    return out + b"\r\n" + (result["body"] if result["body"] is not None else result["raw_body"])




class MilterProcess:
    """``sendguard milter --config FILE`` as a real process, with its log."""

    def __init__(self, config: Path, log: Path, port: int, metrics_port: int) -> None:
        self.port, self.metrics_port, self.log = port, metrics_port, log
        self.fh = open(log, "wb")
        exe = shutil.which("sendguard") or "sendguard"
        self.proc = subprocess.Popen([exe, "milter", "--config", str(config)], stdout=self.fh, stderr=subprocess.STDOUT)
        deadline = _time.time() + 20
        while _time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"milter exited: {log.read_text()}")
            try:
                _socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                _time.sleep(0.1)
        raise AssertionError(f"milter did not listen: {log.read_text()}")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = _time.time() + timeout
        while _time.time() < deadline:
            content = self.log.read_text(errors="replace")
            if text in content:
                return content
            _time.sleep(0.05)
        raise AssertionError(f"{text!r} not in log:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()
        return self.proc.returncode


@pytest.fixture
def milter_process(write_config, tmp_path):
    """Start the real milter on free ports; yields the MilterProcess; stops it afterwards."""
    started: list[MilterProcess] = []

    def start(extra: str = "", milter_extra: str = "") -> MilterProcess:
        port, metrics_port = free_port(), free_port()
        config = write_config(extra=extra, milter_extra=milter_extra, port=port, metrics_port=metrics_port)
        p = MilterProcess(config, tmp_path / f"milter{len(started)}.log", port, metrics_port)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def milter_client():
    return MilterClient


@pytest.fixture
def as_sent():
    return final_message
