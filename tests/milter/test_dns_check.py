"""`sendguard dns-check` against a real authoritative server (NSD) serving generated zones.

One NSD for the module serves ``example.net`` (DKIM records for generated
keys: a good one, another key's, a t=y one, a 1024-bit one; SPF with an
include and a redirect; DMARC at the organisational domain and a strict one),
``other.org`` (no DMARC) and ``0.0.127.in-addr.arpa`` (PTRs for the egress
addresses, one confirmed forward, one not). The checks run as the installed command.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nsd_server import NsdServer
from ports import free_port
from sendguard_milter.keygen import txt_value, zone_text
from sendguard_testing.command import sendguard_command

SOA = "@\tIN\tSOA\tns1.example.net. hostmaster.example.net. 1 3600 600 86400 60\n@\tIN\tNS\tns1.example.net.\n"


def write_key(path: Path, bits: int = 2048) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return key


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The key files and the NSD that serves their records and the mail domains' policies."""
    base = tmp_path_factory.mktemp("dnscheck")
    keys = base / "keys"
    keys.mkdir(mode=0o700)
    good = write_key(keys / "good.pem")
    org = write_key(keys / "org.pem")
    write_key(keys / "wrong.pem")  # its record is another key's
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    testing = write_key(keys / "testing.pem")
    short = write_key(keys / "short.pem", bits=1024)
    write_key(keys / "absent.pem")  # no record at all

    def record(name: str, key: rsa.RSAPrivateKey, value: str | None = None) -> str:
        return zone_text(name, value or txt_value(key.public_key()))

    example = "$ORIGIN example.net.\n$TTL 60\n" + SOA + "".join([
        "ns1\tIN\tA\t127.0.0.1\n",
        record("good._domainkey.send.example.net.", good),
        record("org._domainkey.example.net.", org),
        record("wrong._domainkey.send.example.net.", stranger),
        record("testing._domainkey.send.example.net.", testing, txt_value(testing.public_key()).replace("k=rsa;", "t=y; k=rsa;")),
        record("short._domainkey.send.example.net.", short),
        'send\tIN\tTXT\t"v=spf1 include:_spf.example.net -all"\n',
        '_spf\tIN\tTXT\t"v=spf1 ip4:127.0.0.77 -all"\n',
        'news\tIN\tTXT\t"v=spf1 redirect=_spf.example.net"\n',
        'bad\tIN\tTXT\t"v=spf1 ip4:192.0.2.1 -all"\n',
        '_dmarc\tIN\tTXT\t"v=DMARC1; p=quarantine; sp=reject; rua=mailto:dmarc@example.net"\n',
        '_dmarc.strict\tIN\tTXT\t"v=DMARC1; p=reject; adkim=s"\n',
        "out1\tIN\tA\t127.0.0.77\n",
        "out2\tIN\tA\t127.0.0.99\n",
    ])  # fmt: skip
    other = "$ORIGIN other.org.\n$TTL 60\n" + SOA + 'mail\tIN\tTXT\t"v=spf1 ip4:127.0.0.78 -all"\n'
    reverse = "$ORIGIN 0.0.127.in-addr.arpa.\n$TTL 60\n" + SOA + "77\tIN\tPTR\tout1.example.net.\n78\tIN\tPTR\tout2.example.net.\n"
    server = NsdServer(base / "nsd", {"example.net": example, "other.org": other, "0.0.127.in-addr.arpa": reverse})
    yield base, server
    server.stop()


def sendguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sendguard_command(), *args], capture_output=True, text=True, timeout=120)


def key_table(base: Path, name: str, domain: str, selector: str) -> str:
    return f"[signing.keys.{name}]\ndomain = '{domain}'\nselector = '{selector}'\nkey_file = '{base}/keys/{name}.pem'\n"


def write_config(base: Path, name: str, body: str) -> Path:
    cfg = base / f"{name}.toml"
    cfg.write_text(f"[general]\nstate_dir = '{base}'\n" + body)
    return cfg


GOOD = """
[signing.table]
"send.example.net" = "good"
"news.example.net" = "org"

[streams.trucking]
bulk = true
egress_ip = "127.0.0.77"
from_domains = ["send.example.net", "News.Example.net"]
[streams.trucking.match]
server_port = [25]
"""


def test_a_published_setup_passes_with_every_finding_named(world):
    base, server = world
    cfg = write_config(
        base, "good",
        key_table(base, "good", "send.example.net", "good") + key_table(base, "org", "example.net", "org") + GOOD,
    )  # fmt: skip
    result = sendguard("dns-check", "--config", str(cfg), "--nameserver", server.address)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    expected = [
        f"OK   dkim good._domainkey.send.example.net: published key matches {base}/keys/good.pem (2048 bits)",
        "INFO dnssec good._domainkey.send.example.net: not validated by DNSSEC (no AD flag from the resolver)",
        f"OK   dkim org._domainkey.example.net: published key matches {base}/keys/org.pem (2048 bits)",
        "OK   fcrdns 77.0.0.127.in-addr.arpa: stream trucking: 127.0.0.77 -> out1.example.net -> 127.0.0.77",
        # include: and redirect= both evaluated through NSD by pyspf.
        "OK   spf send.example.net: stream trucking: SPF of send.example.net for 127.0.0.77: pass",
        "OK   dmarc _dmarc.example.net: policy reject (inherited by send.example.net), reports to mailto:dmarc@example.net",
        "OK   dmarc send.example.net: DKIM d=send.example.net (key good) aligns with From send.example.net (relaxed)",
        "OK   spf news.example.net: stream trucking: SPF of news.example.net for 127.0.0.77: pass",
        "OK   dmarc news.example.net: DKIM d=example.net (key org) aligns with From news.example.net (relaxed)",
        "# 11 findings, all pass",
    ]
    for line in expected:
        assert line in lines, f"{line!r} not in:\n{result.stdout}"


BAD = """
[signing.table]
"send.example.net" = "wrong"
"strict.example.net" = "org"
"bad.example.net" = "org"

[streams.trucking]
bulk = true
egress_ip = "127.0.0.78"
from_domains = ["bad.example.net", "strict.example.net", "mail.other.org"]
[streams.trucking.match]
server_port = [25]

[streams.healthcare]
bulk = true
egress_ip = "127.0.0.79"
from_domains = ["news.example.net"]
[streams.healthcare.match]
server_port = [2526]

[streams.cron]
bulk = true
[streams.cron.match]
server_port = [587]
"""


@pytest.fixture(scope="module")
def bad_run(world):
    base, server = world
    keys = "".join(
        key_table(base, name, domain, selector)
        for name, domain, selector in [
            ("wrong", "send.example.net", "wrong"), ("testing", "send.example.net", "testing"),
            ("short", "send.example.net", "short"), ("absent", "send.example.net", "absent"),
            ("org", "example.net", "org"),
        ]
    )  # fmt: skip
    cfg = write_config(base, "bad", keys + BAD)
    text = sendguard("dns-check", "--config", str(cfg), "--nameserver", server.address)
    as_json = sendguard("dns-check", "--config", str(cfg), "--nameserver", server.address, "--json")
    return base, text, as_json


@pytest.mark.parametrize(
    "start, contains",
    [
        ("FAIL dkim wrong._domainkey.send.example.net: the published key is not the public half of", "; fix: publish TXT wrong._domainkey.send.example.net \"v=DKIM1; k=rsa; p="),
        ("WARN dkim testing._domainkey.send.example.net: t=y (testing)", "; fix: remove t=y"),
        ("WARN dkim short._domainkey.send.example.net: 1024-bit key, under the recommended 2048", "; fix: sendguard keygen send.example.net NEWSELECTOR"),
        ("FAIL dkim absent._domainkey.send.example.net: no DKIM record (key absent)", "; fix: publish TXT absent._domainkey.send.example.net"),
        ("FAIL fcrdns 78.0.0.127.in-addr.arpa: stream trucking: PTR of 127.0.0.78 does not resolve back to it (out2.example.net A 127.0.0.99)", "; fix: add A out2.example.net -> 127.0.0.78"),
        ("FAIL spf bad.example.net: stream trucking: SPF of bad.example.net for 127.0.0.78: fail", "; fix: add ip4:127.0.0.78 to the SPF record of bad.example.net"),
        ("FAIL spf strict.example.net: stream trucking: SPF of strict.example.net for 127.0.0.78: no SPF record", '; fix: publish TXT strict.example.net "v=spf1 ip4:127.0.0.78 -all"'),
        ("WARN dmarc _dmarc.strict.example.net: no rua=", "; fix: add rua=mailto:dmarc-reports@strict.example.net"),
        ("FAIL dmarc strict.example.net: DKIM d=example.net (key org) does not align with From strict.example.net (strict, adkim=s)", "or set adkim=r"),
        ("FAIL dmarc _dmarc.other.org: no DMARC record for From mail.other.org (looked at _dmarc.mail.other.org or _dmarc.other.org)", '; fix: publish TXT _dmarc.other.org "v=DMARC1; p=none;'),
        ("OK   spf mail.other.org: stream trucking: SPF of mail.other.org for 127.0.0.78: pass", ""),
        ("FAIL fcrdns 79.0.0.127.in-addr.arpa: stream healthcare: no PTR record for 127.0.0.79", "; fix: have the provider of 127.0.0.79 set its PTR"),
        # The redirect= is followed: _spf.example.net allows .77 only.
        ("FAIL spf news.example.net: stream healthcare: SPF of news.example.net for 127.0.0.79: fail", "add ip4:127.0.0.79"),
        ("INFO config streams.cron.egress_ip: stream cron: unset, so SPF and reverse DNS are not checked", ""),
    ],
)
def test_each_problem_has_its_line_and_fix(bad_run, start, contains):
    _, text, _ = bad_run
    assert text.returncode == 1
    matching = [line for line in text.stdout.splitlines() if line.startswith(start)]
    assert len(matching) == 1, f"{start!r} in:\n{text.stdout}"
    assert contains in matching[0]


def test_mail_of_a_domain_no_row_signs_is_named(bad_run):
    _, text, _ = bad_run
    assert (
        "FAIL dmarc mail.other.org: no [signing.table] row signs From mail.other.org: its bulk mail is refused unsigned;"
        ' fix: add "mail.other.org" = "KEYNAME" to [signing.table]'
    ) in text.stdout.splitlines()


def test_json_lists_the_same_findings(bad_run):
    _, text, as_json = bad_run
    assert as_json.returncode == 1
    findings = json.loads(as_json.stdout)
    assert [f"{f['level'].upper():4} {f['check']} {f['record']}: {f['message']}" for f in findings] == [
        line.split("; fix: ")[0] for line in text.stdout.splitlines()[:-1]
    ]
    wrong = next(f for f in findings if f["record"] == "wrong._domainkey.send.example.net" and f["check"] == "dkim")
    assert wrong["level"] == "fail" and wrong["fix"].startswith("publish TXT")


def test_an_unreachable_nameserver_is_a_failure_not_a_pass(world):
    base, _ = world
    cfg = write_config(base, "unreachable", key_table(base, "good", "send.example.net", "good"))
    result = sendguard("dns-check", "--config", str(cfg), "--nameserver", f"127.0.0.1:{free_port()}")  # nothing there
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL dkim good._domainkey.send.example.net: lookup failed: ")


def test_bad_nameserver_and_egress_settings_are_refused(world):
    base, _ = world
    cfg = write_config(base, "plain", "")
    bad = sendguard("dns-check", "--config", str(cfg), "--nameserver", "ns1.example.net")
    assert bad.returncode == 64 and "'ns1.example.net' is not an IP address" in bad.stderr
    cfg = write_config(base, "egress", "[streams.t]\negress_ip = '127.0.0.0/8'\nfrom_domains = ['localhost']\n[streams.t.match]\nserver_port = [25]\n")
    check = sendguard("check-config", str(cfg))
    assert check.returncode == 78
    assert f"sendguard: config error: {cfg}: streams.t.egress_ip: '127.0.0.0/8' is not an IP address" in check.stderr


@pytest.mark.parametrize(
    "value, parsed",
    [("192.0.2.53", ("192.0.2.53", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("2001:db8::53", ("2001:db8::53", 53)),
     ("[2001:db8::53]:5300", ("2001:db8::53", 5300))],
)  # fmt: skip
def test_nameserver_forms(value, parsed):
    from sendguard_milter.dns_records import parse_nameserver

    assert parse_nameserver(value) == parsed


@pytest.mark.parametrize("value", ["ns1.example.net", "127.0.0.1:0", "127.0.0.1:x", "[2001:db8::53", "[::1]x"])
def test_nameserver_nonsense_is_refused(value):
    from sendguard_milter.dns_records import parse_nameserver

    with pytest.raises(ValueError):
        parse_nameserver(value)


def test_a_bad_published_key_nameserver_stops_start_up(world):
    base, _ = world
    cfg = write_config(base, "published", "[signing]\nverify_published_keys = true\npublished_key_nameserver = 'dns.example'\n")
    check = sendguard("check-config", str(cfg))
    assert check.returncode == 78
    assert (
        f"sendguard: config error: {cfg}: signing.published_key_nameserver: 'dns.example': 'dns.example' is not an IP address"
        in check.stderr
    )
