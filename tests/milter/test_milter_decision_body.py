"""The body check (step 5) apart from the rest of the decision, and the long-line finder.

The milter decides once on the headers and checks the body after link repair;
these tests pin that doing so gives exactly what one decision with the
long-line fact gives, and that the quick no-long-line proof never hides one.
"""

from __future__ import annotations

import random

import pytest

from sendguard.cli.settings import load
from sendguard_milter import decision
from sendguard_milter.decision import MAX_LINE, Facts, check_body, decide, find_long_line
from sendguard_milter.keys import KeyStore

CASES = {
    "bulk sign": dict(client_addr="172.18.0.5", daemon_port="25", from_="noreply@send.example.net"),
    "non-bulk sign": dict(client_addr="127.0.0.1", daemon_port="587", from_="ops@example.net"),
    "inbound pass": dict(client_addr="198.51.100.4", daemon_port="25", from_="someone@example.org"),
    "bulk refused": dict(client_addr="172.18.0.99", daemon_port="25", from_="noreply@send.example.net", bulk=True),
    "non-bulk no key": dict(client_addr="127.0.0.1", daemon_port="587", from_="ops@example.org"),
}


def facts(case: dict, long_line: tuple[int, int] | None = None) -> Facts:
    headers = [("From", case["from_"].encode())]
    if case.get("bulk"):
        headers.append(("Precedence", b"bulk"))
    return Facts(
        client_addr=case["client_addr"], daemon_port=case["daemon_port"], envelope_sender=case["from_"],
        headers=headers, long_line=long_line,
    )  # fmt: skip


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("long_line", [None, (9, 1500)])
def test_body_checked_apart_equals_one_decision_with_the_fact(write_config, name, long_line) -> None:
    loaded = load(write_config())
    settings, streams = loaded.milter, loaded.streams
    keys = KeyStore(settings.keys)
    whole = decide(settings, streams, keys.get, facts(CASES[name], long_line))
    apart = check_body(decide(settings, streams, keys.get, facts(CASES[name])), long_line, CASES[name]["client_addr"])
    assert apart == whole


def test_long_line_refuses_bulk_and_notes_it_for_other_mail(write_config) -> None:
    loaded = load(write_config())
    settings, streams = loaded.milter, loaded.streams
    keys = KeyStore(settings.keys)
    bulk = check_body(decide(settings, streams, keys.get, facts(CASES["bulk sign"])), (3, 1200), "172.18.0.5")
    assert (bulk.action, bulk.reason, bulk.refusal.reason) == ("refuse", "long_line", "long_line")
    assert "line 3 is 1200 bytes" in bulk.refusal.text()
    other = check_body(decide(settings, streams, keys.get, facts(CASES["non-bulk sign"])), (3, 1200), "127.0.0.1")
    assert other.action == "sign" and other.notes == [f"line 3 is 1200 bytes, over {MAX_LINE}; Postfix would fold it and break the signature"]


def test_long_line_found_wherever_it_sits() -> None:
    rng = random.Random(998)
    for _ in range(400):
        lines = [b"x" * rng.choice([0, 40, 76, 500, 997, 998]) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.7:
            lines[rng.randrange(len(lines))] = b"y" * rng.choice([998, 999, 1000, 1500, 2100])
        body = b"".join(line + rng.choice([b"\r\n", b"\n", b"\r\r\n"]) for line in lines)
        if rng.random() < 0.3:
            body = body.rstrip(b"\r\n")  # last line without a line end
        block = b"Subject: " + b"s" * rng.choice([10, 989, 990, 1200]) + b"\r\n"
        # The quick proof of short lines never hides a long one the definition finds.
        assert find_long_line(block, body) == decision._first_long_line(block, body)


def test_bare_cr_counts_in_the_length() -> None:
    assert find_long_line(b"A: b\r\n", b"a\r" + b"z" * 997 + b"\r\n") == (3, 999)
