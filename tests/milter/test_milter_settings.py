"""[milter] and [signing]: defaults, and every check that must stop start-up with FILE: KEY: REASON."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from sendguard_milter.keys import open_keys
from sendguard.cli.settings import load, parse
from sendguard.config_reader import ConfigError
from sendguard_milter.settings import milter_socket



def test_defaults_without_a_config():
    s = parse({}).milter
    assert s.listen == "inet:8891@127.0.0.1"
    assert s.metrics_listen == "127.0.0.1:9467"
    assert [str(n) for n in s.scope.networks] == ["127.0.0.0/8", "::1/128"]
    assert s.refusal_code == 550 and s.refusal_xcode == "5.7.1"
    assert s.keys == () and s.table.rows == ()
    assert s.oversign_headers == ("From",)


@pytest.mark.parametrize(
    "given, spec",
    [
        ("inet:8891@127.0.0.1", "inet:8891@127.0.0.1"),
        ("inet:127.0.0.1:8891", "inet:8891@127.0.0.1"),
        ("inet:0.0.0.0:8891", "inet:8891@0.0.0.0"),
        ("inet:[::1]:8891", "inet6:8891@::1"),
        ("unix:/run/sendguard/milter.sock", "unix:/run/sendguard/milter.sock"),
    ],
)
def test_listen_forms(given, spec):
    assert milter_socket(given) == spec


@pytest.mark.parametrize("bad", ["8891", "inet:x@127.0.0.1", "unix:relative.sock", "tcp:1@h", "inet:8891"])
def test_bad_listen_is_refused(bad):
    with pytest.raises(ConfigError) as err:
        parse({"milter": {"listen": bad}})
    assert "milter.listen" in str(err.value)


def test_the_brief_deployment_loads(write_config):
    s = load(write_config()).milter
    assert [(k.name, k.domain, k.selector) for k in s.keys] == [("send", "send.example.net", "send"), ("mail", "example.net", "mail")]
    assert s.table.lookup("send.example.net").key == "send"
    assert s.table.lookup("example.net").key == "mail"
    assert s.table.lookup("x.send.example.net").key == "mail"  # the wildcard *.example.net
    assert s.table.lookup("example.org") is None


@pytest.mark.parametrize(
    "nets",
    [["0.0.0.0/0"], ["::/0"], ["0.0.0.0/1", "128.0.0.0/1"], ["2000::/3"], ["10.0.0.0/8", "8.8.8.0/24"]],
)
def test_a_scope_with_public_addresses_in_trusted_hosts_is_refused_however_it_is_spelt(nets):
    with pytest.raises(ConfigError) as err:
        parse({"milter": {"trusted_hosts": nets}})
    index = next(i for i, n in enumerate(nets) if not n.startswith("10."))
    assert f"<embedded defaults>: milter.trusted_hosts[{index}]: {nets[index]} covers " in str(err.value)
    assert "publicly routable" in str(err.value) and "trusted_public_hosts" in str(err.value)


@pytest.mark.parametrize("nets", [["0.0.0.0/1", "128.0.0.0/1"], ["2000::/3"], ["8.8.8.0/24", "8.8.9.0/31"]])
def test_acknowledged_public_hosts_beyond_the_bound_are_refused(nets):
    with pytest.raises(ConfigError) as err:
        parse({"milter": {"trusted_public_hosts": nets}})
    assert "milter.trusted_public_hosts: covers " in str(err.value)
    assert "more than max_public_addresses = 256" in str(err.value)


def test_a_public_egress_host_acknowledged_is_trusted_and_private_ranges_need_nothing():
    s = parse({"milter": {
        "trusted_hosts": ["127.0.0.1", "::1", "172.16.0.0/12", "10.0.0.0/8", "192.168.0.0/16", "100.64.0.0/10", "fd00::/8", "fe80::/10", "2001:db8::/32"],
        "trusted_public_hosts": ["93.184.215.14/32", "2a00:1450:4001:80b::200e/128"],
    }}).milter  # fmt: skip
    assert s.scope.check("93.184.215.14").why == "client 93.184.215.14 in trusted_public_hosts 93.184.215.14/32"
    assert s.scope.check("172.18.0.5").trusted
    assert not s.scope.check("93.184.215.15").trusted
    assert not s.scope.check("2001:4860::1").trusted
    # A wider acknowledged range needs the bound raised, on purpose.
    wide = {"trusted_public_hosts": ["93.184.215.0/23"], "max_public_addresses": 512}
    assert parse({"milter": wide}).milter.scope.check("93.184.214.1").trusted


def test_the_old_override_key_names_its_replacement():
    with pytest.raises(ConfigError) as err:
        parse({"milter": {"trusted_hosts": ["0.0.0.0/0"], "allow_open_trusted_hosts": True}})
    assert "milter.allow_open_trusted_hosts: is no longer read: list public clients in trusted_public_hosts" in str(err.value)


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="milter.trusted_host: unknown key"):
        parse({"milter": {"trusted_host": ["127.0.0.1"]}})
    with pytest.raises(ConfigError, match="signing.oversign: unknown key"):
        parse({"signing": {"oversign": ["Subject"]}})


def _signing(tmp_path, key_file, table=None, domain="send.example.net"):
    return {
        "signing": {
            "keys": {"send": {"domain": domain, "selector": "send", "key_file": str(key_file)}},
            "table": table if table is not None else {"send.example.net": "send"},
        }
    }


def start_up(data):
    """Parse as start-up does, then open the key files as the milter does when it starts."""
    settings = parse(data)
    return open_keys(settings.milter.keys, settings.file)


def test_world_readable_key_stops_start_up(tmp_path, write_key):
    write_key(tmp_path / "k", mode=0o644)
    with pytest.raises(ConfigError) as err:
        start_up(_signing(tmp_path, tmp_path / "k"))
    assert "signing.keys.send.key_file" in str(err.value) and "world-readable" in str(err.value)


def test_world_writable_key_stops_start_up_with_the_fix(tmp_path, write_key):
    write_key(tmp_path / "k", mode=0o602)
    with pytest.raises(ConfigError) as err:
        start_up(_signing(tmp_path, tmp_path / "k"))
    assert str(err.value).endswith(
        f"signing.keys.send.key_file: key file {tmp_path / 'k'} is world-writable (mode 0602); chmod o-rwx {tmp_path / 'k'}"
    )


def test_key_in_a_world_writable_directory_stops_start_up_with_the_fix(tmp_path, write_key):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    write_key(keydir / "k", mode=0o600)
    os.chmod(keydir, 0o777)
    with pytest.raises(ConfigError) as err:
        start_up(_signing(tmp_path, keydir / "k"))
    assert "signing.keys.send.key_file" in str(err.value)
    assert f"inside the world-writable directory {keydir} (mode 0777)" in str(err.value)
    assert str(err.value).endswith(f"chmod o-w {keydir}")


def test_short_key_stops_start_up(tmp_path, write_key):
    # cryptography will not generate keys under 1024 bits; openssl will.
    subprocess.run(["openssl", "genrsa", "-out", str(tmp_path / "k"), "512"], check=True, capture_output=True)
    os.chmod(tmp_path / "k", 0o600)
    with pytest.raises(ConfigError, match="512-bit RSA key; at least 1024 bits"):
        start_up(_signing(tmp_path, tmp_path / "k"))


def test_unparseable_missing_and_non_file_keys_stop_start_up(tmp_path, write_key):
    (tmp_path / "garbage").write_text("not a key\n")
    os.chmod(tmp_path / "garbage", 0o600)
    with pytest.raises(ConfigError, match="does not hold a PEM private key"):
        start_up(_signing(tmp_path, tmp_path / "garbage"))
    with pytest.raises(ConfigError, match="does not exist"):
        start_up(_signing(tmp_path, tmp_path / "nope"))
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="signing.keys.send.key_file"):
        start_up(_signing(tmp_path, tmp_path / "dir"))


def test_misaligned_table_row_stops_start_up(tmp_path, write_key):
    write_key(tmp_path / "k")
    with pytest.raises(ConfigError) as err:
        parse(_signing(tmp_path, tmp_path / "k", table={"example.org": "send"}))
    assert "signing.table.example.org" in str(err.value) and "does not align" in str(err.value)
    # d=send.example.net cannot sign the parent domain's mail either.
    with pytest.raises(ConfigError, match="does not align"):
        parse(_signing(tmp_path, tmp_path / "k", table={"example.net": "send"}))
    # ... but may sign its own subdomains.
    s = parse(_signing(tmp_path, tmp_path / "k", table={"*.send.example.net": "send"})).milter
    assert s.table.lookup("a.send.example.net").key == "send"


def test_table_row_naming_an_unknown_key(tmp_path, write_key):
    write_key(tmp_path / "k")
    with pytest.raises(ConfigError, match="no key named 'nokey'"):
        parse(_signing(tmp_path, tmp_path / "k", table={"send.example.net": "nokey"}))


def test_unquoted_domain_in_table_gets_a_hint(tmp_path, write_key):
    write_key(tmp_path / "k")
    with pytest.raises(ConfigError, match="quote domains"):
        parse(_signing(tmp_path, tmp_path / "k", table={"send": {"example": {"net": "send"}}}))


def test_signed_headers_checks():
    with pytest.raises(ConfigError, match="must include From"):
        parse({"signing": {"signed_headers": ["Subject"]}})
    with pytest.raises(ConfigError, match="Received changes in transit"):
        parse({"signing": {"signed_headers": ["From", "Received"]}})
    s = parse({"signing": {"oversign_headers": ["Subject"]}}).milter
    assert s.oversign_headers == ("From", "Subject")  # From is always oversigned


def test_refusal_code_choices():
    assert parse({"milter": {"refusal_code": 451}}).milter.refusal_xcode == "4.7.1"
    with pytest.raises(ConfigError, match="milter.refusal_code"):
        parse({"milter": {"refusal_code": 554}})


def test_text_part_and_message_id_keys_default_off_and_parse():
    s = parse({}).milter
    assert s.add_text_part is False and s.text_part(None) is False
    assert s.message_id.repair is False and s.message_id.bad_hosts == ("localhost", "localhost.localdomain")
    assert s.message_id.host is None and s.message_id.keep_original is False
    doc = {
        "milter": {
            "add_text_part": True, "message_id_repair": True, "message_id_bad_hosts": ["Build.Local"],
            "message_id_host": "Mail.Example.NET.", "message_id_keep_original": True,
        },
        "streams": {
            "quiet": {"add_text_part": False, "match": {"server_port": [2525]}},
            "other": {"match": {"server_port": [2526]}},
        },
    }  # fmt: skip
    config = parse(doc)
    s = config.milter
    assert s.message_id.bad_hosts == ("build.local",) and s.message_id.host == "mail.example.net"
    streams = {st.name: st for st in config.streams}
    assert s.text_part(None) is True
    assert s.text_part(streams["quiet"]) is False
    assert s.text_part(streams["other"]) is True  # a stream that does not say follows [milter]


@pytest.mark.parametrize(
    "doc, where",
    [
        ({"milter": {"add_text_part": "yes"}}, "milter.add_text_part"),
        ({"milter": {"message_id_repair": 1}}, "milter.message_id_repair"),
        ({"milter": {"message_id_host": "localhost"}}, "milter.message_id_host"),
        ({"milter": {"message_id_bad_hosts": ["a@b"]}}, "milter.message_id_bad_hosts[0]"),
        ({"milter": {"message_id_keep_orig": True}}, "milter.message_id_keep_orig: unknown key"),
        ({"streams": {"s": {"add_text_part": "on", "match": {"server_port": [25]}}}}, "streams.s.add_text_part"),
    ],
)
def test_bad_text_part_and_message_id_keys_stop_start_up(doc, where):
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse(doc)
