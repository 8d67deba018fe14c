"""The trusted scope: networks (IPv4, IPv6, as Postfix writes them), SASL, local submission."""

from __future__ import annotations

import ipaddress

from sendguard_milter.decision import find_long_line
from sendguard_milter.signing_table import SigningTable, TableRow
from sendguard.streams import parse_client_address
from sendguard_milter.trusted_scope import TrustedScope, is_local_submission

SCOPE = TrustedScope(networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("172.16.0.0/12"), ipaddress.ip_network("2001:db8::/32")))


def test_addresses_in_every_form_postfix_uses():
    assert SCOPE.check("172.18.0.5").trusted
    assert SCOPE.check("::ffff:172.18.0.5").trusted
    assert SCOPE.check("IPv6:2001:db8::25").trusted
    assert SCOPE.check("[2001:db8::25]").trusted
    assert not SCOPE.check("172.32.0.1").trusted
    assert not SCOPE.check("2001:db9::1").trusted
    assert str(parse_client_address("IPv6:::ffff:10.0.0.1")) == "10.0.0.1"


def test_unknown_address_is_not_trusted_and_says_so():
    r = SCOPE.check("unknown")
    assert not r.trusted and "unknown" in r.why


def test_sasl_and_local_submission():
    assert SCOPE.check("198.51.100.1", sasl_user="bob").why == "SASL authenticated as bob"
    assert not TrustedScope(networks=(), trust_sasl=False).check("198.51.100.1", sasl_user="bob").trusted
    assert is_local_submission("localhost", "127.0.0.1", 0)
    assert not is_local_submission("localhost", "127.0.0.1", 25)
    assert not is_local_submission("evil.example", "127.0.0.1", 0)
    assert TrustedScope(networks=()).check("127.0.0.1", local=True).trusted
    assert not TrustedScope(networks=(), trust_local_submission=False).check("127.0.0.1", local=True).trusted


def test_table_lookup_order():
    t = SigningTable((TableRow("*.example.net", "root"), TableRow("*.send.example.net", "send"), TableRow("send.example.net", "send2")))
    assert t.lookup("send.example.net").key == "send2"  # exact first
    assert t.lookup("a.send.example.net").key == "send"  # most specific wildcard
    assert t.lookup("a.example.net").key == "root"
    assert t.lookup("example.net") is None  # a wildcard does not match its own base
    assert t.lookup("SEND.Example.NET.").key == "send2"  # case and trailing dot


def test_long_lines_are_found_in_headers_and_body():
    assert find_long_line(b"A: b\r\n", b"x" * 998 + b"\r\n") is None
    assert find_long_line(b"A: b\r\n", b"ok\r\n" + b"x" * 999 + b"\r\n") == (4, 999)
    assert find_long_line(b"Subject: " + b"s" * 995 + b"\r\n", b"") == (1, 1004)
