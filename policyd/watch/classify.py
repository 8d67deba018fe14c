"""Why a delivery was deferred or bounced: the reply and its status code mapped onto :data:`REASONS`.

A metric label must stay bounded, so the reply text itself never becomes one:
each deferral or bounce gets exactly one reason, by the first rule below that
matches the remote reply (or Postfix's own text) and the enhanced status code.
The order matters: Gmail's ``421-4.7.28 ... unusual rate of unsolicited mail``
is a rate limit although it says "unsolicited", so the rate rules come before
the reputation ones.

===============  ==========================================================================
reason           what it covers (examples from the receivers the brief names)
===============  ==========================================================================
dead_tenant      ``451 4.4.4`` (Microsoft: a recipient domain in a hosted tenant without mail)
mailbox_full     x.2.2, "over quota", "mailbox full", "insufficient storage"
user_unknown     x.1.1, x.1.10, 5.2.1 "disabled", "user unknown", "no such user", "does not exist"
rate_limited     4.7.28 (Gmail "unusual rate"), 4.7.500 (Microsoft "Server busy"), "too many
                 connections/messages/recipients", "rate limit", "try again later", x.4.5 / x.7.0
                 throttles that name no reputation
reputation       5.7.1 "likely unsolicited", "low reputation", Yahoo [TSS04]/[TSS05]/[TS0x]/[TSS09],
                 Microsoft S3150 / "block list" / "blocklist", Spamhaus and other DNSBL listings
other            everything else: connection failures, timeouts, DNS errors, policy rejections
===============  ==========================================================================
"""

from __future__ import annotations

import re

from sendguard_policyd.watch import REASONS

# (reason, a pattern on the reply, a pattern on the enhanced status code); either may be None.
_RULES: tuple[tuple[str, re.Pattern[str] | None, re.Pattern[str] | None], ...] = (
    ("dead_tenant", re.compile(r"\b451[ -]4\.4\.4\b|hosted tenant", re.I), None),
    (
        "mailbox_full",
        re.compile(r"over ?quota|quota exceeded|mailbox (is )?full|insufficient (system )?storage|\b[45]\.2\.2\b", re.I),
        re.compile(r"[45]\.2\.2"),
    ),
    (
        "user_unknown",
        re.compile(
            r"user unknown|unknown user|no such (user|recipient|mailbox)|does not exist|recipient not found"
            r"|recipientnotfound|address rejected: user|account .{0,40}disabled"
            r"|\b5\.1\.(1|10)\b|\b5\.2\.1\b",
            re.I,
        ),
        re.compile(r"5\.1\.(1|10)|5\.2\.1"),
    ),
    (
        "rate_limited",
        re.compile(
            r"\b4\.7\.28\b|\b4\.7\.500\b|server busy|too many (connections|messages|recipients|sessions)"
            r"|rate limit|rate-limit|unusual rate|try again later|\b4\.4\.5\b|throttl",
            re.I,
        ),
        None,
    ),
    (
        "reputation",
        re.compile(
            r"unsolicited|reputation|\[TSS0\d\]|\[TS0\d\]|\bS3150\b|block ?list|blacklist|spamhaus|spamcop|barracuda"
            r"|\bdnsbl\b|\brbl\b|listed (at|on|in)|poor sending|junk mail",
            re.I,
        ),
        None,
    ),
)

assert {reason for reason, _, _ in _RULES} | {"other"} == set(REASONS)


def classify(status: str, dsn: str, reply: str) -> str:
    """The reason of a deferral, bounce or expiry (one of :data:`REASONS`); "" for a delivery that was sent."""
    if status == "sent":
        return ""
    for reason, text, code in _RULES:
        if text is not None and text.search(reply):
            return reason
        if code is not None and code.fullmatch(dsn):
            return reason
    return "other"
