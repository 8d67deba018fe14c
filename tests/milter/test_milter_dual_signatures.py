"""A key entry with an RSA and an Ed25519 key (RFC 8463) signs every message twice, RSA on top.

Each signature is verified on its own (dkimpy's ``verify(idx=...)``, and OpenDKIM's
opendkim-testmsg) against the records the keys publish: in-process, through the
real milter over a socket, and in what a private real Postfix delivers. The
Ed25519 header is byte-identical to dkimpy's own ed25519-sha256 signer. Also:
the config errors, reloads, ``explain``, ``dns-check`` and the running record check.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sendguard.cli.settings import load
from sendguard.config_reader import ConfigError
from sendguard_milter import dkim_sign
from sendguard_milter import explain as explain_module
from sendguard_milter.dns_records import make_resolver
from sendguard_milter.keygen import zone_text
from sendguard_milter.keys import KeySpec, KeyStore, load_key, open_keys
from sendguard_milter.published_keys import PublishedKeyCheck
from nsd_server import NsdServer
from ports import free_port
from sendguard_testing.command import sendguard_command
from sendguard_testing.milter_client import MilterClient, MilterProcess, final_message
from sendguard_testing.postfix_instance import PostfixInstance, split_sink_file

ED_SELECTOR = "send-ed"


def write_ed25519(path: Path, mode: int = 0o600) -> ed25519.Ed25519PrivateKey:
    """Generate an Ed25519 key and write it as PKCS#8 PEM (what ``sendguard keygen --type ed25519`` writes)."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(path, mode)
    return key


def ed_txt(key: ed25519.Ed25519PrivateKey) -> bytes:
    """The k=ed25519 record: p= is the raw 32-byte public key."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


class DualKeys:
    """The deployment's RSA keys plus an Ed25519 key beside ``send``, and the records of all three."""

    def __init__(self, test_keys, directory: Path) -> None:
        self.rsa = test_keys
        self.ed_file = directory / "send-ed.private"
        self.ed = write_ed25519(self.ed_file)

    def records(self) -> dict[str, bytes]:
        return {**self.rsa.records(), f"{ED_SELECTOR}._domainkey.send.example.net": ed_txt(self.ed)}

    def dnsfunc(self, name, timeout=5):
        n = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        return self.records().get(n)


@pytest.fixture
def dual(test_keys, tmp_path) -> DualKeys:
    directory = tmp_path / "edkeys"
    directory.mkdir(mode=0o700)
    return DualKeys(test_keys, directory)


def with_ed25519(text: str, keys_dir: Path, ed_file: Path, selector: str = ED_SELECTOR) -> str:
    """The config ``text`` with the Ed25519 key added to [signing.keys.send]."""
    line = f'key_file = "{keys_dir}/send.private"\n'
    assert line in text
    return text.replace(line, line + f'ed25519_selector = "{selector}"\ned25519_key_file = "{ed_file}"\n')


@pytest.fixture
def dual_config(write_config, dual):
    """Write the deployment's config with the Ed25519 key beside ``send``; returns its path."""

    def make(**kwargs) -> Path:
        path = write_config(**kwargs)
        path.write_text(with_ed25519(path.read_text(), dual.rsa.dir, dual.ed_file))
        return path

    return make


def tags(header: bytes) -> dict[str, str]:
    """The tags of a DKIM-Signature field (or its value), white space removed."""
    value = header.split(b":", 1)[1] if header.lower().startswith(b"dkim-signature:") else header
    return dict(p.split("=", 1) for p in re.sub(rb"\s+", b"", value).decode().split(";") if p)


def signature_fields(message: bytes) -> list[bytes]:
    """The DKIM-Signature fields of ``message``, top first, each unfolded."""
    head = message.split(b"\r\n\r\n", 1)[0]
    fields = re.split(rb"\r\n(?![ \t])", head)
    return [f for f in fields if f.lower().startswith(b"dkim-signature:")]


def assert_two_verifying_signatures_rsa_first(message: bytes, dnsfunc) -> None:
    """Both signatures verify, each on its own, the RSA one top-most; a changed header breaks both."""
    sigs = signature_fields(message)
    assert len(sigs) == 2, message[:2000]
    first, second = tags(sigs[0]), tags(sigs[1])
    assert (first["a"], first["s"]) == ("rsa-sha256", "send")
    assert (second["a"], second["s"]) == ("ed25519-sha256", ED_SELECTOR)
    assert first["bh"] == second["bh"] and first["h"] == second["h"] and first["d"] == second["d"] == "send.example.net"
    d = dkim.DKIM(message)
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.signature_fields[b"a"] == b"rsa-sha256"
    d = dkim.DKIM(message)
    assert d.verify(idx=1, dnsfunc=dnsfunc) and d.signature_fields[b"a"] == b"ed25519-sha256"
    tampered = message.replace(b"Subject: Loads this week", b"Subject: Loads this month")
    assert tampered != message
    assert not dkim.DKIM(tampered).verify(idx=0, dnsfunc=dnsfunc)
    assert not dkim.DKIM(tampered).verify(idx=1, dnsfunc=dnsfunc)


def test_both_signatures_verify_on_their_own_rsa_on_top(driver, dual, make_msg, test_keys):
    out = driver(edit=lambda t: with_ed25519(t, test_keys.dir, dual.ed_file)).run(
        make_msg(extra_headers="List-Unsubscribe: <mailto:u@send.example.net>"), client="172.18.0.5"
    )
    assert_two_verifying_signatures_rsa_first(out.message, dual.dnsfunc)
    # The Ed25519 signature needs its own record: against the RSA record only, it cannot verify.
    rsa_only = dual.rsa.dnsfunc
    assert dkim.DKIM(out.message).verify(idx=0, dnsfunc=rsa_only)
    assert not dkim.DKIM(out.message).verify(idx=1, dnsfunc=rsa_only)
    # Another Ed25519 key's record does not verify it either: the check above can fail.
    stranger = ed_txt(ed25519.Ed25519PrivateKey.generate())
    assert not dkim.DKIM(out.message).verify(idx=1, dnsfunc=lambda name, timeout=5: stranger if b"send-ed" in name else rsa_only(name))


def without_field(message: bytes, field: bytes) -> bytes:
    """``message`` with one header field (as :func:`signature_fields` gives it) taken out."""
    head, body = message.split(b"\r\n\r\n", 1)
    fields = re.split(rb"\r\n(?![ \t])", head)
    assert field in fields
    fields.remove(field)
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def test_opendkim_verifies_each_signature_on_its_own(driver, dual, make_msg, test_keys, opendkim):
    """OpenDKIM 2.11 (opendkim-testmsg) verifies ed25519-sha256 as well as rsa-sha256.

    opendkim-testmsg's exit status says whether some signature passed, not
    each one: so each signature is handed to it alone, the other field taken
    out (no signature covers another: DKIM-Signature is never in h=).
    """
    out = driver(edit=lambda t: with_ed25519(t, test_keys.dir, dual.ed_file)).run(
        make_msg(extra_headers="List-Unsubscribe: <mailto:u@send.example.net>"), client="172.18.0.5"
    )
    rsa_field, ed_field = signature_fields(out.message)
    rsa_alone, ed_alone = without_field(out.message, ed_field), without_field(out.message, rsa_field)
    assert tags(signature_fields(ed_alone)[0])["a"] == "ed25519-sha256"
    for message in (out.message, rsa_alone, ed_alone):
        result = opendkim(message, dual.records())
        assert result.returncode == 0, result.stderr
    # The checks can fail: another Ed25519 key's record, or a changed header.
    stranger = {**dual.records(), f"{ED_SELECTOR}._domainkey.send.example.net": ed_txt(ed25519.Ed25519PrivateKey.generate())}
    wrong = opendkim(ed_alone, stranger)
    assert wrong.returncode != 0 and b"Bad signature" in wrong.stderr
    broken = opendkim(ed_alone.replace(b"Loads this week", b"Loads this month"), dual.records())
    assert broken.returncode != 0 and b"Bad signature" in broken.stderr


def test_an_entry_without_ed25519_still_signs_once(driver, make_msg, test_keys):
    out = driver().run(make_msg(), client="172.18.0.5")
    assert len(signature_fields(out.message)) == 1 and out.tags()["a"] == "rsa-sha256"
    assert dkim.verify(out.message, dnsfunc=test_keys.dnsfunc)


IDENTITY_MESSAGES = [
    b"From: a@send.example.net\r\nTo: b@example.org\r\nSubject: hi  there\r\n\r\nbody  \r\n\r\n",
    b"From: a@send.example.net\nTo: b@example.org\nSubject: lf only\n\nline\nline\n",
    b"From: a@send.example.net\r\nSubject: empty body\r\n\r\n",
    b"From: =?utf-8?q?J=C3=BCrgen?= <a@send.example.net>\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n K\xc3\xb6ln\r\n\r\n8-bit \xe9 body\t \r\n",
]


@pytest.mark.parametrize("message", IDENTITY_MESSAGES, ids=range(len(IDENTITY_MESSAGES)))
def test_the_ed25519_header_is_dkimpys_own_byte_for_byte(dual, message, monkeypatch):
    """Ed25519 is deterministic: dkimpy's ed25519-sha256 signer must give the very same header."""
    include = [b"from", b"to", b"subject", b"from"]
    when = 1796300000
    ours = dkim_sign.sign(message, domain="send.example.net", selector=ED_SELECTOR, private_key=dual.ed,
                          include_headers=include, timestamp=when)  # fmt: skip
    seed = dual.ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    monkeypatch.setattr(time, "time", lambda: when)
    theirs = dkim.sign(message, ED_SELECTOR.encode(), b"send.example.net", base64.b64encode(seed),
                       canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
                       signature_algorithm=b"ed25519-sha256")  # fmt: skip
    assert ours == theirs
    # And the pair from one body hash: the Ed25519 one is the same header, the RSA one dkimpy's RSA header.
    head, _, body = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").partition(b"\r\n\r\n")
    rsa_sig, ed_sig = dkim_sign.sign_all(
        head + b"\r\n", body, domain="send.example.net", signers=load_key(spec_of(dual)).signers(),
        include_headers=include, timestamp=when,
    )  # fmt: skip
    assert ed_sig == dkim_sign.sign(head + b"\r\n\r\n" + body, domain="send.example.net", selector=ED_SELECTOR,
                                    private_key=dual.ed, include_headers=include, timestamp=when)  # fmt: skip
    rsa_pem = (dual.rsa.dir / "send.private").read_bytes()
    assert rsa_sig == dkim.sign(head + b"\r\n\r\n" + body, b"send", b"send.example.net", rsa_pem,
                                canonicalize=(b"relaxed", b"relaxed"), include_headers=include)  # fmt: skip


def spec_of(dual: DualKeys) -> KeySpec:
    return KeySpec(
        name="send", domain="send.example.net", selector="send", key_file=dual.rsa.dir / "send.private",
        ed25519_selector=ED_SELECTOR, ed25519_key_file=dual.ed_file,
    )  # fmt: skip


# -- configuration ---------------------------------------------------------------------


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        settings = load(path)
        open_keys(settings.milter.keys, settings.file)
    return err.value


def test_config_errors_name_the_file_the_key_and_the_reason(write_config, dual, test_keys):
    path = write_config()
    base = path.read_text()
    rsa_line = f'key_file = "{test_keys.dir}/send.private"\n'

    path.write_text(base.replace(rsa_line, rsa_line + f'ed25519_key_file = "{dual.ed_file}"\n'))
    err = config_error(path)
    assert str(path) in str(err) and "signing.keys.send.ed25519_selector" in str(err)
    assert "required with ed25519_key_file" in str(err)

    path.write_text(base.replace(rsa_line, rsa_line + 'ed25519_selector = "send-ed"\n'))
    assert "signing.keys.send.ed25519_key_file: required with ed25519_selector" in str(config_error(path))

    path.write_text(with_ed25519(base, test_keys.dir, dual.ed_file, selector="send"))
    err = config_error(path)
    assert "signing.keys.send.ed25519_selector" in str(err) and "must differ from selector ('send')" in str(err)

    # An RSA key where the Ed25519 key belongs, and the Ed25519 key where the RSA key belongs.
    path.write_text(with_ed25519(base, test_keys.dir, test_keys.dir / "mail.private"))
    err = config_error(path)
    assert "signing.keys.send.ed25519_key_file" in str(err) and "not an Ed25519 key" in str(err)
    path.write_text(base.replace(rsa_line, f'key_file = "{dual.ed_file}"\n'))
    err = config_error(path)
    assert "signing.keys.send.key_file" in str(err) and "not an RSA key" in str(err)

    # The Ed25519 key file passes the same file checks as the RSA one.
    path.write_text(with_ed25519(base, test_keys.dir, dual.ed_file))
    os.chmod(dual.ed_file, 0o604)
    err = config_error(path)
    assert f"signing.keys.send.ed25519_key_file: key file {dual.ed_file} is world-readable" in str(err)
    os.chmod(dual.ed_file, 0o600)
    missing = dual.ed_file.with_name("absent.pem")
    path.write_text(with_ed25519(base, test_keys.dir, missing))
    assert f"signing.keys.send.ed25519_key_file: key file {missing} does not exist" in str(config_error(path))


def test_the_milter_does_not_start_on_a_bad_ed25519_key(dual_config, dual, tmp_path):
    path = dual_config()
    os.chmod(dual.ed_file, 0o644)
    run = subprocess.run([sendguard_command(), "milter", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert f"signing.keys.send.ed25519_key_file: key file {dual.ed_file} is world-readable" in run.stderr


# -- reload ------------------------------------------------------------------------------


def test_a_rotated_ed25519_key_is_reloaded_and_a_bad_one_keeps_both_old_keys(dual, tmp_path):
    store = KeyStore([spec_of(dual)])
    before = store.get("send")
    assert before is not None and before.ed25519_key is not None
    assert store.reload(only_changed=True) == {}  # nothing changed: nothing read

    # Only the Ed25519 file changes: the watcher's check notices it.
    new = write_ed25519(tmp_path / "new.pem")
    os.replace(tmp_path / "new.pem", dual.ed_file)
    assert store.reload(only_changed=True) == {"send": "ok"}
    after = store.get("send")
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert after.ed25519_key.public_key().public_bytes(*raw) == new.public_key().public_bytes(*raw)
    assert after.private_key.private_numbers() == before.private_key.private_numbers()

    # A bad Ed25519 file: the entry keeps the pair it had, so RSA and Ed25519 never come from two rotations.
    os.chmod(dual.ed_file, 0o644)
    assert store.reload() == {"send": "failed"}
    assert store.get("send") is after
    assert "is world-readable" in store.faults()["send"]
    os.chmod(dual.ed_file, 0o600)


def test_the_real_milter_signs_twice_counts_each_signature_and_reloads_the_ed25519_key_on_sighup(
    dual_config, dual, make_msg, tmp_path
):
    port, metrics_port = free_port(), free_port()
    m = MilterProcess(dual_config(port=port, metrics_port=metrics_port), tmp_path / "milter.log", port, metrics_port)
    try:
        c = MilterClient(m.port)
        c.connect("172.18.0.5", 40001)
        r = c.message(make_msg(extra_headers="List-Unsubscribe: <mailto:u@send.example.net>"), "bounce@send.example.net")
        assert r["result"] in (b"c", b"a")
        # Both inserted at index 0, the RSA one last: it is the top-most field when Postfix applies them.
        assert [(name, idx) for name, _, idx in r["added"]] == [("DKIM-Signature", 0), ("DKIM-Signature", 0)]
        assert_two_verifying_signatures_rsa_first(final_message(r), dual.dnsfunc)
        m.wait_log(f"sign: d=send.example.net s=send+{ED_SELECTOR} row=send.example.net")
        m.wait_log(f"keys send (d=send.example.net s=send+{ED_SELECTOR}), mail (d=example.net s=mail)")

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5).read().decode()
        assert 'sendguard_milter_signatures_total{domain="send.example.net",selector="send"} 1.0' in metrics
        assert f'sendguard_milter_signatures_total{{domain="send.example.net",selector="{ED_SELECTOR}"}} 1.0' in metrics
        assert 'sendguard_milter_messages_total{outcome="signed"} 1.0' in metrics

        # Rotate the Ed25519 key (by rename, as keygen writes), SIGHUP: the open connection signs with the new one.
        new = write_ed25519(tmp_path / "new-ed.pem")
        os.replace(tmp_path / "new-ed.pem", dual.ed_file)
        m.proc.send_signal(signal.SIGHUP)
        m.wait_log("SIGHUP: configuration reloaded from")
        dual.ed = new
        r = c.message(make_msg(), "bounce@send.example.net")
        assert_two_verifying_signatures_rsa_first(final_message(r), dual.dnsfunc)

        # A broken Ed25519 key on SIGHUP: the configuration in service stays, and says why.
        os.chmod(dual.ed_file, 0o644)
        m.proc.send_signal(signal.SIGHUP)
        log = m.wait_log("; keeping the running configuration")
        assert f"signing.keys.send.ed25519_key_file: key file {dual.ed_file} is world-readable" in log
        r = c.message(make_msg(), "bounce@send.example.net")
        assert_two_verifying_signatures_rsa_first(final_message(r), dual.dnsfunc)
        c.close()
    finally:
        assert m.stop() == 0


# -- explain, metrics, the real process ----------------------------------------------------


def test_explain_names_both_keys_and_both_signatures(dual_config):
    settings = load(dual_config())
    out = explain_module.explain(
        settings.milter, settings.streams, KeyStore(settings.milter.keys), from_addr="noreply@send.example.net",
        client="172.18.0.5", port=25,
    )  # fmt: skip
    assert "decision:  SIGN d=send.example.net s=send a=rsa-sha256 c=relaxed/relaxed" in out
    assert f"           and SIGN d=send.example.net s={ED_SELECTOR} a=ed25519-sha256, the second DKIM-Signature (below the RSA one)" in out
    assert f"           and s={ED_SELECTOR}, " in out and "(Ed25519, loaded)" in out


# -- the DNS: dns-check and the running check read both records ----------------------------

SOA = "@\tIN\tSOA\tns1.example.net. hostmaster.example.net. 1 3600 600 86400 60\n@\tIN\tNS\tns1.example.net.\n"


@pytest.fixture
def published(dual, tmp_path, dns_txt):
    """NSD publishing send's RSA record, its Ed25519 record at send-ed, another Ed25519 key's at
    send-other and an RSA record at send-rsa (the other key names are mail's: RSA, 2048 bits)."""
    records = {
        "send._domainkey.send.example.net.": dns_txt(dual.rsa.send).decode(),
        f"{ED_SELECTOR}._domainkey.send.example.net.": ed_txt(dual.ed).decode(),
        "send-other._domainkey.send.example.net.": ed_txt(ed25519.Ed25519PrivateKey.generate()).decode(),
        "send-rsa._domainkey.send.example.net.": dns_txt(dual.rsa.send).decode(),
        "mail._domainkey.example.net.": dns_txt(dual.rsa.mail).decode(),
    }
    zone = "$ORIGIN example.net.\n$TTL 60\n" + SOA + "".join(zone_text(n, v) for n, v in records.items())
    server = NsdServer(tmp_path / "nsd", {"example.net": zone})
    yield server
    server.stop()


def dns_check(path: Path, server: NsdServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sendguard_command(), "dns-check", "--config", str(path), "--nameserver", server.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_dns_check_checks_the_rsa_and_the_ed25519_record(write_config, dual, test_keys, published):
    path = write_config()
    base = path.read_text()
    path.write_text(with_ed25519(base, test_keys.dir, dual.ed_file))
    lines = dns_check(path, published).stdout.splitlines()
    assert f"OK   dkim send._domainkey.send.example.net: published key matches {test_keys.dir}/send.private (2048 bits)" in lines
    assert f"OK   dkim {ED_SELECTOR}._domainkey.send.example.net: published key matches {dual.ed_file} (Ed25519)" in lines

    path.write_text(with_ed25519(base, test_keys.dir, dual.ed_file, selector="send-other"))
    result = dns_check(path, published)
    assert result.returncode == 1
    assert (
        f"FAIL dkim send-other._domainkey.send.example.net: the published key is not the public half of {dual.ed_file}"
        " (key send): every Ed25519 signature fails; fix: publish TXT send-other._domainkey.send.example.net"
        f' "{ed_txt(dual.ed).decode()}" (or point ed25519_key_file at the key that was published)'
    ) in result.stdout.splitlines(), result.stdout

    path.write_text(with_ed25519(base, test_keys.dir, dual.ed_file, selector="send-rsa"))
    result = dns_check(path, published)
    assert result.returncode == 1
    assert "FAIL dkim send-rsa._domainkey.send.example.net: k=rsa, but key send at this selector is an Ed25519 key" in result.stdout

    path.write_text(with_ed25519(base, test_keys.dir, dual.ed_file, selector="send-absent"))
    result = dns_check(path, published)
    assert result.returncode == 1 and "FAIL dkim send-absent._domainkey.send.example.net: no DKIM record (key send)" in result.stdout


def test_the_running_check_finds_a_wrong_ed25519_record(write_config, dual, test_keys, published):
    path = write_config()
    path.write_text(with_ed25519(path.read_text(), test_keys.dir, dual.ed_file, selector="send-other"))
    settings = load(path)
    resolver = make_resolver(published.address)
    check = PublishedKeyCheck(KeyStore(settings.milter.keys), resolver)
    assert check.check_once() == {"send": "mismatch", "mail": "match"}
    assert "is not the public half of" in (check.problem("send") or "")
    path.write_text(path.read_text().replace('ed25519_selector = "send-other"', f'ed25519_selector = "{ED_SELECTOR}"'))
    good = PublishedKeyCheck(KeyStore(load(path).milter.keys), resolver)
    assert good.check_once() == {"send": "match", "mail": "match"}


# -- through a real Postfix ------------------------------------------------------------------


class MilterOnlyPostfix(PostfixInstance):
    """The private Postfix with the snippets' milter lines and no policy service (none runs here)."""

    def write_config(self) -> None:
        super().write_config()
        edits = [f"{name} =" for name in ("smtpd_recipient_restrictions", "smtpd_end_of_data_restrictions")]
        done = subprocess.run(["postconf", "-c", str(self.etc), "-e", *edits], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_through_a_real_postfix_the_delivered_message_carries_two_verifying_signatures_rsa_first(
    dual_config, dual, make_msg
):
    """smtpd -> sendguard milter (both keys) -> smtp-sink: what left Postfix is checked byte for byte.

    This is where "RSA first" is proven: the milter inserts both at index 0,
    and the order in the delivered message is Postfix's application of them.
    """
    work = Path(tempfile.mkdtemp(prefix="sendguard-dualsig-"))
    try:
        work.chmod(0o755)  # Postfix's daemons and the sink run as the postfix user
        port, metrics_port = free_port(), free_port()
        m = MilterProcess(dual_config(port=port, metrics_port=metrics_port), work / "milter.log", port, metrics_port)
        try:
            with MilterOnlyPostfix(work / "postfix", port, free_port()) as pf:
                message = make_msg(extra_headers="List-Unsubscribe: <mailto:u@send.example.net>")
                with smtplib.SMTP("127.0.0.1", pf.smtpd_port, timeout=30) as smtp:
                    refused = smtp.sendmail("bounce@send.example.net", ["carrier@example.org"], message)
                assert refused == {}
                assert pf.wait_idle(60) == 0, pf.log_text()[-3000:]
                files = pf.sink_files()
                assert len(files) == 1, pf.log_text()[-3000:]
                _, delivered = split_sink_file(files[0].read_bytes())
        finally:
            assert m.stop() == 0
        assert_two_verifying_signatures_rsa_first(delivered, dual.dnsfunc)
        # Both signatures are above every field they cover, Postfix's own Received included.
        names = [f.split(b":", 1)[0].lower() for f in re.split(rb"\r\n(?![ \t])", delivered.split(b"\r\n\r\n", 1)[0])]
        assert names[:3] == [b"dkim-signature", b"dkim-signature", b"received"], names
    finally:
        shutil.rmtree(work, ignore_errors=True)
