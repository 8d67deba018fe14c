"""Stop-signal rules: which receiver answers mean "stop sending", and the built-in ones from the brief and its anchors.

A rule matches one delivery result (``watch.Delivery``) by its status, its
receiving operator, its enhanced status code and a regular expression on the
reply; at ``threshold`` matches within a rolling hour for one stream (and, for
``pause_operator``, one operator) it pauses that stream or only that
operator's mail in it, for ``duration`` (stop_signals.py counts and fires).

Patterns are searched case-insensitively in the reply with the continuation
codes of a multi-line reply taken out: Postfix logs Gmail's
``550-5.7.1 ... this message is`` / ``550-5.7.1 likely unsolicited mail`` as one
line, ``... this message is 550-5.7.1 likely unsolicited mail``, and where
Gmail breaks its lines depends on the sending IP's length; the pattern
``likely unsolicited mail`` finds it either way.

The built-in rules (:data:`BUILTIN`, each with why it is set so) are in force
unless the config overrides them: ``[stop_signals.NAME]`` with a built-in's
name changes the keys it gives, ``enabled = false`` turns one off, and any
other name adds a rule (docs/policyd.md, "Stop signals and pauses").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sendguard_policyd.watch import Delivery

#: Pause the whole stream (every new message of it is held).
PAUSE_STREAM = "pause_stream"
#: Pause only the stream's mail to the receiving operator that answered.
PAUSE_OPERATOR = "pause_operator"
ACTIONS = (PAUSE_STREAM, PAUSE_OPERATOR)
#: The delivery statuses a rule may look at (a delivery that was sent is never a stop signal).
PROBLEM_STATUSES = ("deferred", "bounced", "expired")
#: What a rule looks at when it names no ``status``.
DEFAULT_STATUSES = ("deferred", "bounced")

# A continuation line's reply code and enhanced status code, as Postfix joins a multi-line reply.
_CONTINUATION = re.compile(r"\b[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\s+")
#: Characters of the reply a pause's reason quotes.
EXCERPT_CHARS = 120


def reply_text(reply: str) -> str:
    """The reply as rules read it: from its first reply code on, continuation codes out, spaces squeezed."""
    first = _CONTINUATION.search(reply)
    if first is None:
        return " ".join(reply.split())
    head, tail = reply[: first.end()], reply[first.end() :]
    return " ".join((head + _CONTINUATION.sub(" ", tail)).split())


def excerpt(text: str) -> str:
    """The part of a reply (as :func:`reply_text` gives it) a pause's reason quotes: from the reply code on."""
    start = _CONTINUATION.search(text)
    quoted = text[start.start() :] if start else text
    return quoted if len(quoted) <= EXCERPT_CHARS else quoted[: EXCERPT_CHARS - 3] + "..."


@dataclass(frozen=True)
class Rule:
    """One stop-signal rule (see the module docstring)."""

    name: str
    #: The regular expression, as written (searched case-insensitively in :func:`reply_text`).
    pattern: str
    #: Matches within a rolling hour (per stream, and per operator for pause_operator) that fire it.
    threshold: int
    #: PAUSE_STREAM or PAUSE_OPERATOR.
    action: str
    #: Seconds the pause lasts; None: until resumed by hand.
    duration: float | None
    #: Only deliveries to this receiving operator ("" = any).
    operator: str = ""
    #: Only this enhanced status code, e.g. "5.7.1" ("" = any).
    dsn: str = ""
    statuses: tuple[str, ...] = DEFAULT_STATUSES
    #: Warmup days the stream steps back when the rule starts a pause (0: none).
    step_back_days: int = 0
    enabled: bool = True
    #: Why a built-in rule is set as it is (docs/policyd.md carries the same table).
    why: str = ""
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # re.error for a pattern that is not a regular expression: the config parser reports it.
        object.__setattr__(self, "regex", re.compile(self.pattern, re.IGNORECASE))

    def matches(self, delivery: Delivery, text: str) -> bool:
        """Whether ``delivery`` (its reply already read as ``text`` by :func:`reply_text`) is this signal."""
        if delivery.status not in self.statuses:
            return False
        if self.operator and delivery.operator != self.operator:
            return False
        if self.dsn and delivery.dsn != self.dsn:
            return False
        return self.regex.search(text) is not None


_DAY = 86400.0
_HOUR = 3600.0

#: The built-in rules, by name: the signals of the brief and of its anchors (KumoMTA's traffic shaping).
BUILTIN: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "gmail_unsolicited", r"likely unsolicited mail", 5, PAUSE_OPERATOR, 2 * _DAY,
            operator="google", dsn="5.7.1", step_back_days=2,
            why="Gmail bouncing mail as spam (550-5.7.1): the brief's incidents 1 and 3 began so. Five in an"
            " hour are 2-10% of a warming stream's hour, not one recipient's filter; Gmail alone is paused"
            " (the brief's operators paused Gmail for weeks while Microsoft kept flowing) and the ramp steps back.",
        ),
        Rule(
            "gmail_low_reputation", r"low reputation of the sending (domain|ip)", 3, PAUSE_OPERATOR, 3 * _DAY,
            operator="google", step_back_days=3,
            why="Gmail's verdict on the domain or IP itself (550-5.7.1 / 421-4.7.0 'very low reputation'):"
            " stronger than a spam bounce, so fewer are needed and the pause and the step back are longer.",
        ),
        Rule(
            "yahoo_tss04", r"\[TSS04\]", 1, PAUSE_STREAM, 3 * _DAY, operator="yahoo", statuses=("deferred",),
            step_back_days=2,
            why="Yahoo's 421 4.7.0 [TSS04] poisons the IP for Gmail and Microsoft too (brief, incident 4), and"
            " the family is never mailed, so one is already too many: the whole stream stops for several days,"
            " the brief's own rule ('STOP and hold for several days').",
        ),
        Rule(
            "yahoo_tss05", r"\[TSS05\]", 1, PAUSE_STREAM, 3 * _DAY, operator="yahoo", statuses=("deferred",),
            step_back_days=2,
            why="Yahoo's [TSS05] (deferred for user complaints) is the same verdict as [TSS04]: the same answer.",
        ),
        Rule(
            "microsoft_server_busy", r"server busy", 20, PAUSE_OPERATOR, 2 * _HOUR, operator="microsoft",
            dsn="4.7.500",
            why="Microsoft's 451 4.7.500 'Server busy' throttles a new IP; Postfix retries these itself, so only"
            " a burst counts. KumoMTA slows Microsoft on it; sendguard cannot slow one operator, so Microsoft's"
            " mail rests two hours, then goes on at the stream's cap.",
        ),
        Rule(
            "microsoft_s3150", r"\bS3150\b", 3, PAUSE_OPERATOR, _DAY, operator="microsoft",
            statuses=("bounced", "deferred"),
            why="Microsoft's S3150: the sending IP's network is on its block list, so every message to it"
            " bounces until delisted (sender.office.com); bouncing more only costs reputation.",
        ),
        Rule(
            "microsoft_block_list", r"part of their network is on our block list", 3, PAUSE_OPERATOR, _DAY,
            operator="microsoft", statuses=("bounced", "deferred"),
            why="The same block-list text with any code (S3140 as well as S3150): the same answer.",
        ),
    )
}  # fmt: skip
