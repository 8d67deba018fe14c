"""The family by MX (*.yahoodns.net): real DNS queries to a stub server on a local UDP socket."""

from __future__ import annotations

import datetime as dt
import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from sendguard_policyd.decide import Decider
from sendguard_policyd.family_mx import MxFamily
from sendguard_policyd.store import Pause
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_testing.policy_client import postfix_message

ZONE = {
    "hosted.example": ["10 mta6.am0.yahoodns.net."],
    "other.example": ["10 mx.other.example."],
    # A Google Workspace domain: its name says nothing, its MX says Google (the backup listed first).
    "workspace.example": ["10 alt1.aspmx.l.google.com.", "1 aspmx.l.google.com."],
}


@pytest.fixture
def dns_server():
    """An authoritative answerer for ZONE's MX records; anything else is NXDOMAIN."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()
    queries: list[str] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except socket.timeout:
                continue
            query = dns.message.from_wire(data)
            q = query.question[0]
            name = q.name.to_text().rstrip(".").lower()
            queries.append(name)
            reply = dns.message.make_response(query)
            if q.rdtype == dns.rdatatype.MX and name in ZONE:
                reply.answer.append(dns.rrset.from_text(q.name, 300, "IN", "MX", *ZONE[name]))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}", queries
    stop.set()
    thread.join()
    sock.close()


TRUCKING = {"match": {"server_port": [25]}, "ramp": [[0, 10]], "start_date": dt.date(2026, 1, 1)}
NOW = dt.datetime(2026, 3, 2, 12, tzinfo=dt.timezone.utc).timestamp()


@pytest.fixture
def mx_decider(make_config):
    """A Decider for TRUCKING whose MX lookups ask ``server`` (or go through ``mx``); closed after the test."""
    made: list[Decider] = []

    def build(server: str | None = None, mx: MxFamily | None = None) -> Decider:
        policyd = {"family_mx_check": True, "family_mx_nameservers": [server]} if server else {}
        config = make_config({"trucking": TRUCKING}, **policyd)
        d = Decider(config.policyd, config.streams, SQLiteCounterStore(config.policyd.database), mx=mx)
        made.append(d)
        return d

    yield build
    for d in made:
        d.close()
        d.store.close()


def test_lookups_never_block_and_are_cached(dns_server):
    server, queries = dns_server
    mx = MxFamily((server,))
    try:
        assert mx.status("hosted.example") is None  # not known yet: a lookup starts, nobody waits
        assert mx.wait_idle()
        assert mx.status("hosted.example") is True
        assert mx.status("HOSTED.example.") is True
        assert mx.status("other.example") is None and mx.wait_idle() and mx.status("other.example") is False
        assert mx.status("nowhere.example") is None and mx.wait_idle() and mx.status("nowhere.example") is False
        assert queries.count("hosted.example") == 1  # cached
    finally:
        mx.close()


def test_unreachable_dns_passes_mail_and_says_so(policyd_log):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers: every query times out
        mx = MxFamily((f"127.0.0.1:{silent.getsockname()[1]}",))
        try:
            assert mx.status("hosted.example") is None
            assert mx.wait_idle(timeout=10)
            assert mx.status("hosted.example") is None  # failure kept for a while, not retried per request
        finally:
            mx.close()
    assert policyd_log.matching("MX lookup for hosted.example failed")


def test_yahoo_hosted_domains_are_held_and_never_counted(mx_decider, dns_server):
    server, _ = dns_server
    d = mx_decider(server)
    store, now = d.store, NOW
    first = [dict(r) for r in postfix_message("m1", "Q1", ["a@other.example", "b@hosted.example"])]
    # RCPT: the domains are new, so nothing is known yet and RCPT does not wait.
    assert [d.decide(r, now).action for r in first[:2]] == ["DUNNO", "DUNNO"]
    assert d.mx.wait_idle()  # ... the DATA transfer happens meanwhile ...
    # END-OF-MESSAGE: the lookup has answered; the message is held, not counted.
    eom = d.decide(first[2], now)
    assert eom.action.startswith("HOLD ") and "rule mx *.yahoodns.net" in eom.action
    # From now on the domain is known at RCPT already.
    second = [dict(r) for r in postfix_message("m2", "Q2", ["c@hosted.example"])]
    assert d.decide(second[0], now).action.startswith("HOLD ")
    assert d.decide(second[1], now).action == "DUNNO"  # held at RCPT: passes uncounted
    third = [dict(r) for r in postfix_message("m3", "Q3", ["e@other.example"])]
    assert [d.decide(r, now).action for r in third] == ["DUNNO", "DUNNO"]
    assert store.windows("trucking", now).hour == 1  # only the third message counted


def test_mx_check_is_off_by_default(make_config):
    config = make_config()
    assert config.policyd.family_mx_check is False
    store = SQLiteCounterStore(config.policyd.database)
    assert Decider(config.policyd, config.streams, store).mx is None
    store.close()


def test_one_lookup_names_the_family_and_the_operator_of_a_domain(dns_server):
    server, queries = dns_server
    mx = MxFamily((server,))
    try:
        assert mx.exchanges("workspace.example") is None and mx.wait_idle()
        assert mx.exchanges("workspace.example") == ("aspmx.l.google.com", "alt1.aspmx.l.google.com")  # by preference
        assert mx.status("workspace.example") is False  # the same answer: not Yahoo's
        assert mx.exchanges("nowhere.example") is None and mx.wait_idle() and mx.exchanges("nowhere.example") == ()
        assert queries.count("workspace.example") == 1
    finally:
        mx.close()


def test_a_google_pause_holds_a_workspace_domain_by_its_mx(mx_decider, dns_server):
    server, _ = dns_server
    d = mx_decider(server)
    d.store.pause(Pause("trucking", "google", NOW, None, "5 replies matched gmail_unsolicited", "gmail_unsolicited"))
    d.pauses.refresh(NOW)
    workspace = [dict(r) for r in postfix_message("w1", "QW1", ["ceo@workspace.example"])]
    assert d.decide(workspace[0], NOW).action == "DUNNO"  # RCPT starts the lookup, waits for nothing
    assert d.mx.wait_idle()  # ... the DATA transfer ...
    held = d.decide(workspace[1], NOW)
    assert held.action.startswith("HOLD sendguard: stream trucking's mail to google is paused")
    assert d.store.held_messages("trucking")[0].operators == ("google",)
    other = [dict(r) for r in postfix_message("o1", "QO1", ["ceo@other.example"])]
    d.decide(other[0], NOW)
    assert d.mx.wait_idle()
    assert d.decide(other[1], NOW).action == "DUNNO"  # its MX is nobody's: "other" goes on


def test_an_mx_not_known_yet_is_held_while_an_operator_is_paused(mx_decider):
    import threading

    answered = threading.Event()

    def slow_lookup(domain: str):
        answered.wait(10)  # DNS slower than the whole DATA phase
        return ("mx.elsewhere.example",)

    d = mx_decider(mx=MxFamily(lookup=slow_lookup))
    try:
        d.store.pause(Pause("trucking", "microsoft", NOW, None, "S3150", "microsoft_s3150"))
        d.pauses.refresh(NOW)
        first = [dict(r) for r in postfix_message("s1", "QS1", ["ops@slow.example"])]
        d.decide(first[0], NOW)
        held = d.decide(first[1], NOW)
        assert "mail to microsoft is paused and a recipient's operator is not known yet" in held.action
        answered.set()
        assert d.mx.wait_idle()
        again = [dict(r) for r in postfix_message("s2", "QS2", ["ops@slow.example"])]
        assert [d.decide(r, NOW).action for r in again] == ["DUNNO", "DUNNO"]  # known now: not Microsoft's
    finally:
        answered.set()
