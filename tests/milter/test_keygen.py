"""`sendguard keygen`: the key file, the DNS record and the config block, run as the installed command."""

from __future__ import annotations

import base64
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from sendguard_testing.command import sendguard_command

MESSAGE = (
    b"From: Dispatch <news@send.example.net>\r\n"
    b"To: driver@example.org\r\n"
    b"Subject: Load board update\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <kg-1@send.example.net>\r\n"
    b"\r\n"
    b"Three new loads out of Dallas.\r\n"
)


def sendguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sendguard_command(), *args], capture_output=True, text=True, timeout=60)


def keygen(keys: Path, *extra: str, domain: str = "send.example.net", selector: str = "s2026") -> subprocess.CompletedProcess[str]:
    return sendguard("keygen", domain, selector, "--dir", str(keys), *extra)


def zone_strings(zone_text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', zone_text)


def test_rsa_key_is_private_and_its_record_verifies_a_signature(tmp_path):
    keys = tmp_path / "keys"
    result = keygen(keys)
    assert result.returncode == 0, result.stderr
    key_file = keys / "send.example.net.s2026.pem"
    txt_file = keys / "send.example.net.s2026.txt"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    # Run as root on a host with the service user, the key and its new folder are the service's.
    try:
        service = pwd.getpwnam("sendguard").pw_uid if os.geteuid() == 0 else os.geteuid()
    except KeyError:
        service = os.geteuid()
    assert key_file.stat().st_uid == service and keys.stat().st_uid == service

    zone = txt_file.read_text()
    assert zone.startswith("s2026._domainkey.send.example.net.\tIN\tTXT\t(")
    strings = zone_strings(zone)
    assert len(strings) >= 2 and all(len(s.encode()) < 255 for s in strings)
    value = "".join(strings)
    # The bare value is printed too, and is the zone text's strings joined.
    assert value in result.stdout.splitlines()

    signed = dkim.sign(MESSAGE, b"s2026", b"send.example.net", key_file.read_bytes(), include_headers=[b"From", b"Subject"])
    asked: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return value.encode()

    assert dkim.verify(signed + MESSAGE, dnsfunc=dnsfunc)
    assert asked == [b"s2026._domainkey.send.example.net."]
    # Another key's record does not verify it: the check above can fail.
    other = keygen(tmp_path / "other")
    other_value = "".join(zone_strings((tmp_path / "other" / "send.example.net.s2026.txt").read_text()))
    assert other.returncode == 0 and other_value != value
    assert not dkim.verify(signed + MESSAGE, dnsfunc=lambda name, timeout=5: other_value.encode())


def test_printed_block_is_a_config_check_config_accepts(tmp_path):
    keys = tmp_path / "keys"
    result = keygen(keys, "--name", "bulk")
    assert result.returncode == 0, result.stderr
    block = result.stdout[result.stdout.index("[signing.keys.bulk]") :]
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(f"[general]\nstate_dir = '{tmp_path}'\n\n" + block)
    check = sendguard("check-config", str(cfg))
    assert check.returncode == 0, check.stderr
    assert f'key_file = "{keys}/send.example.net.s2026.pem"' in check.stdout
    assert '"send.example.net" = "bulk"' in check.stdout


def test_existing_files_are_replaced_only_with_force(tmp_path):
    keys = tmp_path / "keys"
    assert keygen(keys).returncode == 0
    key_file = keys / "send.example.net.s2026.pem"
    first = key_file.read_bytes()
    again = keygen(keys)
    assert again.returncode == 73
    assert again.stderr.strip() == f"sendguard keygen: {key_file} exists; not replacing a key that may be published (use --force)"
    assert key_file.read_bytes() == first
    # The record alone left behind blocks as well: key and record always go together.
    key_file.unlink()
    assert keygen(keys).returncode == 73 and not key_file.exists()
    forced = keygen(keys, "--force")
    assert forced.returncode == 0, forced.stderr
    assert key_file.read_bytes() != first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_bits_sets_the_rsa_size_and_nonsense_is_refused(tmp_path):
    result = keygen(tmp_path / "k", "--bits", "3072")
    assert result.returncode == 0, result.stderr
    key = serialization.load_pem_private_key((tmp_path / "k" / "send.example.net.s2026.pem").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    small = keygen(tmp_path / "s", "--bits", "512")
    assert small.returncode == 73 and "1024 to 8192 bits" in small.stderr
    assert not (tmp_path / "s" / "send.example.net.s2026.pem").exists()
    bad = keygen(tmp_path / "b", domain="localhost")
    assert bad.returncode == 64 and "'localhost' is not a domain name" in bad.stderr


def test_ed25519_key_and_record_match(tmp_path):
    keys = tmp_path / "keys"
    result = keygen(keys, "--type", "ed25519", selector="ed2026")
    assert result.returncode == 0, result.stderr
    key_file = keys / "send.example.net.ed2026.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    value = "".join(zone_strings((keys / "send.example.net.ed2026.txt").read_text()))
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(value.split("p=", 1)[1]))
    public.verify(key.sign(MESSAGE), MESSAGE)  # raises if the record is not this key's


def test_ed25519_lines_join_an_rsa_entry_and_check_config_accepts_them(tmp_path):
    keys = tmp_path / "keys"
    rsa_block = keygen(keys, "--name", "bulk")
    ed = keygen(keys, "--type", "ed25519", "--name", "bulk", selector="ed2026")
    assert rsa_block.returncode == 0 and ed.returncode == 0, ed.stderr
    # An Ed25519 key signs beside the RSA key of an entry: the output is the two keys to add to it.
    lines = ed.stdout[ed.stdout.index("# add to [signing.keys.bulk]") :].splitlines()
    assert lines[1:] == ['ed25519_selector = "ed2026"', f'ed25519_key_file = "{keys}/send.example.net.ed2026.pem"']
    head, table = rsa_block.stdout[rsa_block.stdout.index("[signing.keys.bulk]") :].split("\n\n", 1)
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(f"[general]\nstate_dir = '{tmp_path}'\n\n" + head + "\n" + "\n".join(lines[1:]) + "\n\n" + table)
    check = sendguard("check-config", str(cfg))
    assert check.returncode == 0, check.stderr
    assert 'ed25519_selector = "ed2026"' in check.stdout
