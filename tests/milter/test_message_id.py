"""Which Message-IDs the repair replaces, and what it writes instead."""

from __future__ import annotations

import re

import pytest

from sendguard_milter.message_id import DEFAULT_BAD_HOSTS, MessageIdPolicy, bad_host_problem, needed_repair, right_hand_side

ON = MessageIdPolicy(repair=True)


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost.localdomain", "3f2a9c1b7d0e", "[192.0.2.1]", "192.0.2.1", "2001:db8::1", "[IPv6:2001:db8::1]", None, ""],
)
def test_bad_right_hand_sides(host):
    assert bad_host_problem(host, DEFAULT_BAD_HOSTS) is not None


@pytest.mark.parametrize("host", ["send.example.net", "mail.example.org", "a.b"])
def test_good_right_hand_sides(host):
    assert bad_host_problem(host, DEFAULT_BAD_HOSTS) is None


def test_a_listed_host_with_dots_is_bad_too():
    assert bad_host_problem("build.internal.example", ("build.internal.example",)) is not None


def test_right_hand_side_reads_the_angle_brackets_and_the_last_at():
    assert right_hand_side("<a@b@Send.Example.NET>") == "send.example.net"
    assert right_hand_side("  <abc@localhost> (comment)") == "localhost"
    assert right_hand_side("<no-at-sign>") is None


def test_missing_empty_and_bad_ids_are_replaced_with_one_at_the_from_domain():
    missing = needed_repair([("From", b"a@send.example.net")], ON, "send.example.net")
    assert missing is not None and missing.reason == "missing" and missing.original is None
    assert re.fullmatch(r"<\d{14}\.[0-9a-f]{16}@send\.example\.net>", missing.new_id)
    empty = needed_repair([("Message-ID", b"  ")], ON, "send.example.net")
    assert empty is not None and empty.reason == "missing" and empty.original == ""
    bad = needed_repair([("Message-Id", b"<x.1@localhost>")], ON, "send.example.net")
    assert bad is not None and bad.reason == "bad_host" and bad.original == "<x.1@localhost>" and bad.bad_host == "localhost"
    assert missing.new_id != needed_repair([], ON, "send.example.net").new_id  # never reused


def test_good_ids_repair_off_and_no_host_leave_the_message_alone():
    assert needed_repair([("Message-ID", b"<x@send.example.net>")], ON, "send.example.net") is None
    assert needed_repair([("Message-ID", b"<x@localhost>")], MessageIdPolicy(), "send.example.net") is None
    assert needed_repair([("Message-ID", b"<x@localhost>")], ON, None) is None


def test_the_configured_host_wins_over_the_from_domain():
    repair = needed_repair([], MessageIdPolicy(repair=True, host="mail.example.net"), "send.example.net")
    assert repair is not None and repair.new_id.endswith("@mail.example.net>")
