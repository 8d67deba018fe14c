"""``[dmarc.imap]``: report mails fetched from a real Dovecot over IMAP on loopback, each once,
the mailbox left as it was; a refused login is one line and the pass goes on."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from dmarc_reports import GOOGLE, MICROSOFT, gzipped, plain_mail, report_mail, zipped
from dovecot_server import PASSWORD, USER, DovecotServer
from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError
from sendguard_policyd.dmarc.service import ingest_pass
from sendguard_policyd.dmarc.settings import DmarcSettings
from sendguard_policyd.dmarc.store import ReportStore
from sendguard_testing.command import sendguard_command


@pytest.fixture(scope="module")
def dovecot():
    server = DovecotServer().start()
    server.deliver(report_mail(gzipped(GOOGLE.read_bytes()), "google.com!example.org.xml.gz").as_bytes())
    server.deliver(plain_mail("Undeliverable: your message").as_bytes())
    server.deliver(report_mail(zipped(MICROSOFT.read_bytes()), "outlook.zip", "application/zip").as_bytes())
    yield server
    server.stop()


def imap_config(tmp_path: Path, port: int, password: str = PASSWORD, **imap: object) -> dict:
    secret = tmp_path / "imap.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    table = {"host": "127.0.0.1", "port": port, "tls": "none", "username": USER, "password_file": str(secret), **imap}
    return {"general": {"state_dir": str(tmp_path / "state")}, "dmarc": {"our_ips": ["192.0.2.25"], "imap": table}}


def settings_of(tmp_path: Path, data: dict) -> DmarcSettings:
    return parse(data, str(tmp_path / "sendguard.toml")).dmarc


def test_reports_are_fetched_once_and_the_mailbox_is_left_as_it_was(tmp_path: Path, dovecot: DovecotServer, caplog):
    settings = settings_of(tmp_path, imap_config(tmp_path, dovecot.port))
    flags_before = dovecot.flags()
    store = ReportStore(settings.database)
    with caplog.at_level(logging.WARNING, logger="sendguard.dmarc"):
        first = ingest_pass(settings, store)
    assert (first.new, first.duplicate, first.bad, first.missing) == (2, 0, 1, []), first.text()
    assert [r.getMessage() for r in caplog.records] == [
        f"imap://{USER}@127.0.0.1:{dovecot.port}/INBOX UID 2: skipped: a mail with no report attached"
        " (subject 'Undeliverable: your message')"
    ]
    assert {(t.reporter, t.source_ip, t.messages) for t in store.totals()} >= {("google.com", "192.0.2.25", 1000),
                                                                            ("Enterprise Outlook", "2001:db8:25::10", 300)}  # fmt: skip
    again = ingest_pass(settings, store)  # every UID known: nothing fetched, nothing counted
    assert (again.new, again.duplicate, again.bad) == (0, 0, 0)
    assert dovecot.flags() == flags_before and not any(b"\\Seen" in f for f in dovecot.flags())
    dovecot.deliver(report_mail(gzipped(GOOGLE.read_bytes().replace(b"1570372834817212345", b"next-day")), "g.xml.gz").as_bytes())
    third = ingest_pass(settings, store)
    assert (third.new, third.duplicate, third.bad) == (1, 0, 0)


def test_a_refused_login_is_one_line_and_the_files_are_still_read(tmp_path: Path, dovecot: DovecotServer, caplog):
    data = imap_config(tmp_path, dovecot.port, password="wrong")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "r.xml").write_bytes(GOOGLE.read_bytes())
    data["dmarc"]["sources"] = [str(tmp_path / "saved")]
    settings = settings_of(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="sendguard.dmarc"):
        result = ingest_pass(settings, ReportStore(settings.database))
    assert (result.new, result.missing) == (1, ["imap://127.0.0.1"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"dmarc IMAP mailbox not read in this pass: imap://{USER}@127.0.0.1")
    assert "login refused" in lines[0] and "wrong" not in lines[0]


def test_the_command_reads_an_imap_mailbox_alone(tmp_path: Path, dovecot: DovecotServer):
    dovecot.deliver(report_mail(zipped(MICROSOFT.read_bytes()), "outlook.zip", "application/zip").as_bytes(), "Reports")
    secret = tmp_path / "imap.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(f"""
[general]
state_dir = "{tmp_path}/state"
[dmarc.imap]
host = "127.0.0.1"
port = {dovecot.port}
tls = "none"
username = "{USER}"
password_file = "imap.password"
mailbox = "Reports"
""")
    done = subprocess.run([sendguard_command(), "dmarc", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "dmarc: 1 new report(s), 0 already stored, 0 unreadable (logged), 0 file(s) unchanged\n"
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("imap, key, reason", [
    ({"host": "imap.example.org", "tls": "none"}, "dmarc.imap.tls", "only to a loopback address"),
    ({"tls": "ssl"}, "dmarc.imap.tls", "is not one of implicit, starttls, none"),
    ({"mailboxx": "INBOX"}, "dmarc.imap.mailboxx", "unknown key"),
])  # fmt: skip
def test_imap_config_errors_name_the_key(tmp_path: Path, imap: dict, key: str, reason: str):
    data = imap_config(tmp_path, 143, **imap)
    with pytest.raises(ConfigError) as exc:
        settings_of(tmp_path, data)
    assert any(e.key == key and reason in e.reason for e in exc.value.all()), str(exc.value)


def test_a_password_file_every_user_can_read_is_refused(tmp_path: Path):
    data = imap_config(tmp_path, 143)
    (tmp_path / "imap.password").chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        settings_of(tmp_path, data)
    assert exc.value.key == "dmarc.imap.password_file" and "readable by every user" in exc.value.reason


@pytest.fixture(scope="module")
def dovecot_tls():
    server = DovecotServer(tls=True).start()
    server.deliver(report_mail(gzipped(GOOGLE.read_bytes()), "google.com!example.org.xml.gz").as_bytes())
    yield server
    server.stop()


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_tls_verified_against_the_ca_file(tmp_path: Path, dovecot_tls: DovecotServer, tls: str, caplog):
    port = dovecot_tls.tls_port if tls == "implicit" else dovecot_tls.port
    settings = settings_of(tmp_path, imap_config(tmp_path, port, tls=tls, ca_file=str(dovecot_tls.ca_file)))
    result = ingest_pass(settings, ReportStore(settings.database))
    assert (result.new, result.missing) == (1, []), caplog.text
    # Without the CA the self-signed certificate is refused: no password is sent to it.
    unverified = settings_of(tmp_path / "no-ca", imap_config(tmp_path, port, tls=tls))
    with caplog.at_level(logging.WARNING, logger="sendguard.dmarc"):
        refused = ingest_pass(unverified, ReportStore(unverified.database))
    assert (refused.new, refused.missing) == (0, ["imap://127.0.0.1"])
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
