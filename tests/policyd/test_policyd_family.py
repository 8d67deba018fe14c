"""The Yahoo / Verizon-Media family matcher."""

from __future__ import annotations

import pytest

from sendguard_policyd.family import BUILTIN_FAMILY, FamilyMatcher

family = FamilyMatcher()


@pytest.mark.parametrize(
    "address, rule",
    [
        ("bob@yahoo.com", "yahoo.*"),
        ("bob@yahoo.co.uk", "yahoo.*"),
        ("bob@YAHOO.CO.UK", "yahoo.*"),
        ("bob@yahoo.com.br", "yahoo.*"),
        ("bob@yahoo.fr", "yahoo.*"),
        ("bob@yahoo.de", "yahoo.*"),
        ("bob@yahoo.co.jp", "yahoo.*"),
        ("bob@yahoo.com.au", "yahoo.*"),
        ("bob@yahoo.ne.jp", "yahoo.*"),
        ("bob@mail.yahoo.co.uk", "yahoo.*"),
        ("bob@yahoo.com.", "yahoo.*"),
        ("bob@aol.com", "aol.*"),
        ("bob@aol.co.uk", "aol.*"),
        ("bob@aol.de", "aol.*"),
        ("bob@ymail.com", "ymail.com"),
        ("bob@rocketmail.com", "rocketmail.com"),
        ("bob@att.net", "att.net"),
        ("bob@sbcglobal.net", "sbcglobal.net"),
        ("bob@bellsouth.net", "bellsouth.net"),
        ("bob@verizon.net", "verizon.net"),
        ("bob@frontier.com", "frontier.com"),
        ("bob@rogers.com", "rogers.com"),
        ("bob@cs.com", "cs.com"),
        ("bob@mail.att.net", "att.net"),
        ('"odd@local"@Prodigy.Net', "prodigy.net"),
    ],
)
def test_family_members_are_matched_with_their_rule(address, rule):
    assert family.rule_for(address) == rule


@pytest.mark.parametrize(
    "address",
    [
        "bob@gmail.com",
        "bob@notyahoo.com",
        "bob@yahoo.example.net",  # a subdomain named yahoo under someone else's domain
        "bob@yahoo.com.evil.org",
        "bob@myatt.net",  # suffix match is label-aligned
        "bob@aolmail.example",
        "bob@example.com",
        "yahoo.com",  # no @: not an address
        "",
        "bob@",
    ],
)
def test_non_members_are_not_matched(address):
    assert family.rule_for(address) is None


def test_every_brief_domain_is_in_the_builtin_list():
    brief = (
        "ymail.com rocketmail.com aim.com att.net sbcglobal.net bellsouth.net pacbell.net ameritech.net "
        "swbell.net flash.net nvbell.net prodigy.net snet.net wans.net verizon.net frontier.com "
        "frontiernet.net netscape.net compuserve.com cs.com wmconnect.com rogers.com"
    ).split()
    for domain in brief:
        assert family.rule_for(f"x@{domain}") == domain
    assert "yahoo.*" in BUILTIN_FAMILY and "aol.*" in BUILTIN_FAMILY


def test_config_extends_the_family():
    extended = FamilyMatcher.with_extra(["btinternet.com", "sky.*"])
    assert extended.rule_for("a@btinternet.com") == "btinternet.com"
    assert extended.rule_for("a@sky.co.uk") == "sky.*"
    assert extended.rule_for("a@yahoo.com") == "yahoo.*"
    assert family.rule_for("a@btinternet.com") is None
