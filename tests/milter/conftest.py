"""Shared fixtures of the milter tests: keys generated at test time, configs, sample messages,
and the MTA side of the milter (sendguard_testing.milter_client) in-process or over a socket."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from ports import free_port
from sendguard_testing.milter_client import Driver, MilterClient, MilterProcess, final_message

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

    def check(message: bytes, records: dict[str, bytes] | None = None) -> subprocess.CompletedProcess:
        return opendkim_verify(message, test_keys.records() if records is None else records, tmp_path)

    return check


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
