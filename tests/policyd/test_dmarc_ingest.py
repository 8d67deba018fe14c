"""``sendguard dmarc``'s passes: reports in both schemas and every wrapping stored once; bad input
logged in one line and skipped while the pass goes on; the totals exported from the database."""

from __future__ import annotations

import gzip
import logging
import os
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dmarc_reports import (
    GOOGLE, MICROSOFT, gzipped, plain_mail, report_mail, with_id, write_maildir, write_mbox, zipped,
)  # fmt: skip
from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError
from sendguard_policyd.dmarc.ingest import Limits, Unit, read_unit
from sendguard_policyd.dmarc.report import ReportError, parse_report
from sendguard_policyd.dmarc.service import ingest_pass, register_metrics
from sendguard_policyd.dmarc.settings import DmarcSettings
from sendguard_policyd.dmarc.store import ReportStore

NOW = 1764720000 + 3600  # an hour after the sample reports' periods end


def settings_for(tmp_path: Path, sources: list[Path], **dmarc: object) -> DmarcSettings:
    data = {"general": {"state_dir": str(tmp_path / "state")},
            "dmarc": {"sources": [str(s) for s in sources], "our_ips": ["192.0.2.0/24", "2001:db8:25::/64"], **dmarc}}  # fmt: skip
    return parse(data, str(tmp_path / "sendguard.toml")).dmarc


def by_ip(store: ReportStore) -> dict[str, tuple[int, int, int, int]]:
    out: dict[str, tuple[int, int, int, int]] = {}
    for t in store.totals():
        old = out.get(t.source_ip, (0, 0, 0, 0))
        out[t.source_ip] = tuple(a + b for a, b in zip(old, (t.messages, t.dkim_aligned, t.spf_aligned, t.dmarc_pass)))  # type: ignore[assignment]
    return out


def test_both_schemas_read_alike():
    google = parse_report(GOOGLE.read_bytes())
    assert (google.org_name, google.report_id, google.domain, google.policy) == ("google.com", "1570372834817212345", "example.org", "reject")
    assert [(r.source_ip, r.count, r.dkim_aligned, r.spf_aligned, r.disposition) for r in google.rows] == [
        ("192.0.2.25", 940, True, True, "none"), ("192.0.2.25", 60, False, True, "none"),
        ("203.0.113.77", 250, False, False, "reject"),
    ]  # fmt: skip
    outlook = parse_report(MICROSOFT.read_bytes())  # the dmarc-2.0 namespace on every element
    assert (outlook.org_name, outlook.email, outlook.begin, outlook.end) == (
        "Enterprise Outlook", "dmarcreport@microsoft.com", 1764633600, 1764720000)
    assert [(r.source_ip, r.count, r.dmarc_pass) for r in outlook.rows] == [("2001:db8:25::10", 300, True), ("198.51.100.9", 12, False)]


@pytest.mark.parametrize("xml, reason", [
    (b"<feedback><report_metadata><org_name>x</org_name>", "not well-formed XML"),
    (b"<html><body>hello</body></html>", "the root element is <html>"),
    (b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><feedback>&b;</feedback>',
     "refused XML"),
    (b'<!DOCTYPE f [<!ENTITY x SYSTEM "file:///etc/passwd">]><feedback>&x;</feedback>', "refused XML"),
    (GOOGLE.read_bytes().replace(b"<count>940</count>", b"<count>many</count>"), "<count> is not a whole number"),
    (GOOGLE.read_bytes().replace(b"192.0.2.25", b"mail.example.org"), "<source_ip> is not an IP address"),
    (GOOGLE.read_bytes().replace(b"<report_id>1570372834817212345</report_id>", b""), "no <report_id>"),
])  # fmt: skip
def test_what_is_not_a_report_says_why(xml: bytes, reason: str):
    with pytest.raises(ReportError, match=f"^{reason.replace('<', '.').replace('>', '.')}"):
        parse_report(xml)


def every_wrapping(tmp_path: Path) -> Path:
    """One folder with a report in each way receivers send them, each under its own report id."""
    g, m = GOOGLE.read_bytes(), MICROSOFT.read_bytes()
    src = tmp_path / "reports"
    src.mkdir()
    (src / "google.com!example.org!1764633600!1764719999.xml").write_bytes(with_id(g, "plain"))
    (src / "google.xml.gz").write_bytes(gzipped(with_id(g, "gz")))
    (src / "outlook.zip").write_bytes(zipped(with_id(m, "zip")))
    (src / "gz.eml").write_bytes(report_mail(gzipped(with_id(g, "eml-gz")), "google.com!example.org.xml.gz").as_bytes())
    (src / "zip.eml").write_bytes(report_mail(zipped(with_id(m, "eml-zip")), "outlook.zip", "application/zip").as_bytes())
    write_maildir(src / "Maildir", [report_mail(gzipped(with_id(g, "maildir")), "r.xml.gz")])
    write_mbox(src / "rua.mbox", [report_mail(zipped(with_id(m, "mbox-1")), "a.zip", "application/zip"),
                                  report_mail(with_id(g, "mbox-2"), "b.xml", "text/xml")])  # fmt: skip
    return src


def test_every_wrapping_is_read_and_a_second_pass_changes_nothing(tmp_path: Path):
    src = every_wrapping(tmp_path)
    settings = settings_for(tmp_path, [src])
    store = ReportStore(settings.database)
    first = ingest_pass(settings, store)
    assert (first.new, first.duplicate, first.bad) == (8, 0, 0), first.text()
    totals = by_ip(store)
    # google: 5 copies (plain, gz, eml-gz, maildir, mbox-2); outlook: 3 (zip, eml-zip, mbox-1)
    assert totals["192.0.2.25"] == (5000, 5 * 940, 5000, 5000)
    assert totals["203.0.113.77"] == (1250, 0, 0, 0)
    assert totals["2001:db8:25::10"] == (900, 900, 0, 900)
    again = ingest_pass(settings, store)
    assert (again.new, again.unchanged) == (0, 7)  # the files are not even opened
    for f in src.rglob("*"):  # touched (a backup restored): read again, every report already there
        if f.is_file():
            os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    third = ingest_pass(settings, store)
    assert (third.new, third.duplicate, third.bad) == (0, 8, 0)
    assert by_ip(store) == totals and store.report_count() == 8


def test_mail_read_then_moved_or_deleted_is_forgotten_and_a_second_source_keeps_its_own(tmp_path: Path):
    g, m = GOOGLE.read_bytes(), MICROSOFT.read_bytes()
    box = write_maildir(tmp_path / "Maildir", [report_mail(gzipped(g), "google.xml.gz"), report_mail(gzipped(m), "outlook.xml.gz")])
    other = tmp_path / "saved"
    other.mkdir()
    (other / "copy.xml").write_bytes(g)
    settings = settings_for(tmp_path, [box, other])
    store = ReportStore(settings.database)
    assert ingest_pass(settings, store).new == 2
    assert store.files_known() == 3
    # The mail client reads one (new/ to cur/) and the user deletes the other.
    first, second = sorted((box / "new").iterdir())
    first.rename(box / "cur" / f"{first.name}:2,S")
    second.unlink()
    result = ingest_pass(settings, store)
    assert (result.new, result.duplicate, result.unchanged) == (0, 1, 1)  # the moved one read again: already stored
    assert store.files_known() == 2  # cur/ mail and the saved copy; new/ paths forgotten
    assert store.forget_files_under(other, set()) == 1 and store.files_known() == 1  # only under that source
    assert store.report_count() == 2  # forgetting a file never forgets its reports


def test_a_report_counts_once_by_reporter_and_id(tmp_path: Path):
    g = GOOGLE.read_bytes()
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.xml").write_bytes(g)
    (src / "copy.xml.gz").write_bytes(gzipped(g))  # the same report resent
    settings = settings_for(tmp_path, [src])
    store = ReportStore(settings.database)
    result = ingest_pass(settings, store)
    assert (result.new, result.duplicate) == (1, 1)
    assert by_ip(store)["192.0.2.25"][0] == 1000


def test_bad_input_is_logged_in_one_line_and_the_pass_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    src = tmp_path / "in"
    src.mkdir()
    limit = 64 * 1024
    (src / "01-broken.xml").write_bytes(GOOGLE.read_bytes()[:700])
    (src / "02-bomb.xml.gz").write_bytes(gzip.compress(b"<" + b" " * (50 * limit)))  # 3 MiB from a few KiB
    with zipfile.ZipFile(src / "03-bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.xml", b"<" + b" " * (50 * limit))
    (src / "04-huge.xml").write_bytes(b"<feedback>" + b" " * (3 * 1024 * 1024))
    (src / "05-lunch.eml").write_bytes(plain_mail().as_bytes())
    (src / "06-garbage.bin").write_bytes(os.urandom(2000))
    (src / "07-truncated.gz").write_bytes(gzipped(GOOGLE.read_bytes())[:100])
    write_mbox(src / "08.mbox", [plain_mail("Out of office"), report_mail(gzipped(MICROSOFT.read_bytes()), "r.xml.gz")])
    (src / "09-good.xml").write_bytes(GOOGLE.read_bytes())
    settings = settings_for(tmp_path, [src, tmp_path / "not-there"], max_file_bytes=1024 * 1024, max_report_bytes=limit)
    store = ReportStore(settings.database)
    with caplog.at_level(logging.WARNING, logger="sendguard.dmarc"):
        result = ingest_pass(settings, store)
    assert (result.new, result.bad, result.missing) == (2, 8, [str(tmp_path / "not-there")]), result.text()
    lines = [r.getMessage() for r in caplog.records]
    assert all("\n" not in line for line in lines)
    expect = {
        "01-broken.xml": "not well-formed XML", "02-bomb.xml.gz": "gzip expands past max_report_bytes",
        "03-bomb.zip": "past max_report_bytes", "04-huge.xml": "past max_file_bytes",
        "05-lunch.eml": "a mail with no report attached (subject 'Lunch on Friday?')",
        "06-garbage.bin": "a mail with no report attached", "07-truncated.gz": "broken gzip",
        "08.mbox: message 1": "a mail with no report attached (subject 'Out of office')",
    }  # fmt: skip
    for name, reason in expect.items():
        assert [line for line in lines if name in line and reason in line], (name, lines)
    assert any("not-there does not exist" in line for line in lines)
    assert store.report_count() == 2


def scrape(settings: DmarcSettings, now: float = NOW) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    collector = register_metrics(settings, registry)
    collector.clock = lambda: now
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def test_metrics_come_from_the_database_with_bounded_labels(tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "g.xml").write_bytes(GOOGLE.read_bytes())
    (src / "m.xml").write_bytes(MICROSOFT.read_bytes())
    settings = settings_for(tmp_path, [src], top_others=1)
    ingest_pass(settings, ReportStore(settings.database))
    m = scrape(settings)
    g = {"reporter": "google.com", "source_ip": "192.0.2.25", "ours": "true"}
    assert sample(m, "sendguard_dmarc_messages_total", **g) == 1000
    assert sample(m, "sendguard_dmarc_dkim_aligned_total", **g) == 940
    assert sample(m, "sendguard_dmarc_spf_aligned_total", **g) == 1000
    assert sample(m, "sendguard_dmarc_pass_total", **g) == 1000
    # Addresses that are not ours are one series per reporter in the counters: the internet is unbounded.
    assert sample(m, "sendguard_dmarc_messages_total", reporter="google.com", source_ip="other", ours="false") == 250
    assert not [k for k in m if k[0] == "sendguard_dmarc_messages_total" and ("source_ip", "203.0.113.77") in k[1]]
    # The window gauges name the top_others=1 worst of them; the rest are "other".
    w = {"window": "7d", "ours": "false"}
    assert sample(m, "sendguard_dmarc_window_messages", reporter="google.com", source_ip="203.0.113.77", **w) == 250
    assert sample(m, "sendguard_dmarc_window_pass_messages", reporter="google.com", source_ip="203.0.113.77", **w) == 0
    assert sample(m, "sendguard_dmarc_window_messages", reporter="Enterprise Outlook", source_ip="other", **w) == 12
    assert sample(m, "sendguard_dmarc_window_messages", reporter="Enterprise Outlook", source_ip="2001:db8:25::10",
                  ours="true", window="7d") == 300  # fmt: skip
    assert sample(m, "sendguard_dmarc_reports") == 2 and sample(m, "sendguard_dmarc_database_up") == 1
    # Eight days on, the reports have left the window; the counters keep them.
    later = scrape(settings, NOW + 8 * 86400)
    assert not [k for k in later if k[0] == "sendguard_dmarc_window_messages"]
    assert sample(later, "sendguard_dmarc_messages_total", **g) == 1000


def test_a_database_that_cannot_be_read_answers_up_0(tmp_path: Path):
    settings = settings_for(tmp_path, [tmp_path], database=str(tmp_path / "no-such-dir-is-a-file" / "x.sqlite"))
    (tmp_path / "no-such-dir-is-a-file").write_text("")
    m = scrape(settings)
    assert sample(m, "sendguard_dmarc_database_up") == 0
    assert not [k for k in m if k[0].startswith("sendguard_dmarc_messages")]


@pytest.mark.parametrize("dmarc, key, reason", [
    ({"our_ips": ["192.0.2.300"]}, "dmarc.our_ips[0]", "is not an IP network"),
    ({"sources": "/var/mail"}, "dmarc.sources", "expected a list"),
    ({"interval": 1}, "dmarc.interval", "must be between 10 and 86400 seconds"),
    ({"top_others": 1000}, "dmarc.top_others", "must be between 0 and 100"),
    ({"sourcse": ["/x"]}, "dmarc.sourcse", "unknown key"),
])  # fmt: skip
def test_config_errors_name_the_key(tmp_path: Path, dmarc: dict, key: str, reason: str):
    with pytest.raises(ConfigError) as exc:
        parse({"dmarc": dmarc}, "/etc/sendguard.toml")
    assert any(e.key == key and reason in e.reason for e in exc.value.all()), str(exc.value)


def test_relative_paths_are_read_against_the_config_file(tmp_path: Path):
    settings = parse({"general": {"state_dir": "/var/lib/sg"}, "dmarc": {"sources": ["reports"]}}, str(tmp_path / "sendguard.toml")).dmarc
    assert settings.sources == (str(tmp_path / "reports"),)
    assert settings.database == "/var/lib/sg/dmarc.sqlite"
    assert settings.ours("192.0.2.1") is False


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 3000), junk=st.binary(max_size=40), wrap=st.sampled_from(["xml", "gz", "zip", "mail"]))
def test_any_damage_to_a_report_is_a_one_line_problem_never_a_crash(tmp_path: Path, cut: int, junk: bytes, wrap: str):
    """A report cut short or with bytes spliced in, in any wrapping: a report, or a one-line reason."""
    xml = GOOGLE.read_bytes()
    damaged = xml[:cut] + junk + xml[cut + len(junk):]
    data = {"xml": damaged, "gz": gzipped(damaged)[: cut or None], "zip": zipped(damaged),
            "mail": report_mail(gzipped(damaged), "r.xml.gz").as_bytes()}[wrap]  # fmt: skip
    f = tmp_path / "damaged"
    f.write_bytes(data)
    for found in read_unit(Unit(f, len(data), 0), Limits(max_report_bytes=64 * 1024)):
        if found.problem:
            assert "\n" not in found.problem
            continue
        try:
            report = parse_report(found.xml)
        except ReportError as exc:
            assert "\n" not in str(exc)
        else:
            assert report.messages >= 0


def test_reporters_past_max_reporters_count_as_other_and_the_first_ones_keep_their_series(tmp_path: Path):
    """Anyone can mail a report to the rua address: a flood of invented reporters cannot grow the series."""
    src = tmp_path / "in"
    src.mkdir()
    g = GOOGLE.read_bytes()
    (src / "0.xml").write_bytes(g)
    for i in range(1, 6):
        forged = g.replace(b"<org_name>google.com</org_name>", b"<org_name>forger-%d.example</org_name>" % i)
        (src / f"{i}.xml").write_bytes(with_id(forged, f"forged-{i}"))
    settings = settings_for(tmp_path, [src], max_reporters=2)
    ingest_pass(settings, ReportStore(settings.database))
    m = scrape(settings)
    reporters = {dict(k[1])["reporter"] for k in m if k[0] == "sendguard_dmarc_messages_total"}
    assert reporters == {"google.com", "forger-1.example", "other"}
    assert sample(m, "sendguard_dmarc_messages_total", reporter="other", source_ip="192.0.2.25", ours="true") == 4000
    assert sample(m, "sendguard_dmarc_messages_total", reporter="google.com", source_ip="192.0.2.25", ours="true") == 1000
