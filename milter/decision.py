"""The decision: sign, pass or refuse — and why. Pure: the milter and ``explain`` share it.

The order of the checks is the order an operator fixes things in:

1. scope — is the client ours (trusted_hosts, SASL, local submission)? Outside
   the scope, non-bulk mail is inbound mail and passes untouched; bulk mail is
   refused (the brief's first incident: campaign mail from the Docker bridge).
2. From — exactly one From with one usable address (the DKIM d= aligns with it).
3. signing table — a row for the From domain (exact first, then ``*.domain``).
4. key — the row's key is loaded (and, with ``verify_published_keys``, its DNS record matches it).
5. body — no line over 998 bytes (Postfix would fold it and break the body hash);
   :func:`check_body`, which the milter runs on the body as sent, after link repair.

Whatever fails first decides. Bulk mail that fails is refused; non-bulk mail
passes unsigned (it may be mail for a domain we do not sign), except a long
line, where non-bulk mail is still signed and the line is logged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from sendguard.streams import Stream, match_stream

from .bulk import bulk_reasons
from .from_address import FromResult, parse_from
from .keys import LoadedKey
from .refusal import Refusal
from .settings import MilterSettings
from .signing_table import TableRow
from .trusted_scope import ScopeResult

#: RFC 5322's limit on a line, without CRLF; Postfix's smtp_line_length_limit folds longer ones.
MAX_LINE = 998


@dataclass(frozen=True)
class Facts:
    """What the milter knows about one message when it decides."""

    client_addr: str | None
    sasl_user: str | None = None
    local_submission: bool = False
    daemon_port: str | None = None
    envelope_sender: str | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    #: (line number, length) of the first line over MAX_LINE; None when none or not known.
    long_line: tuple[int, int] | None = None

    def stream_attrs(self) -> Mapping[str, str]:
        """The policy-protocol attributes streams are matched on."""
        return {
            "server_port": self.daemon_port or "",
            "client_address": self.client_addr or "",
            "sender": (self.envelope_sender or "").strip("<>"),
            "sasl_username": self.sasl_user or "",
        }


@dataclass(frozen=True)
class Decision:
    """The outcome for one message and everything that led to it."""

    action: str  # "sign" | "pass" | "refuse"
    #: Why (a refusal reason, or for pass: "not_in_scope", "no_signing_key", "from_*", "key_unavailable").
    reason: str
    scope: ScopeResult
    bulk: list[str]
    sender_from: FromResult
    stream: Stream | None = None
    row: TableRow | None = None
    #: The key that signs (set when action is "sign").
    key: LoadedKey | None = None
    refusal: Refusal | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_bulk(self) -> bool:
        """Whether any bulk rule matched."""
        return bool(self.bulk)


KeyGetter = Callable[[str], LoadedKey | None]

#: Key name -> why its published record does not match it (None: it matches, or is not checked).
KeyProblem = Callable[[str], str | None]


#: Half a long line: a run of MAX_LINE + 1 bytes without a newline always covers one
#: whole aligned window of this size, so a window that holds a newline rules it out there.
_WINDOW = (MAX_LINE + 1) // 2


def _may_hold_long_line(data: bytes) -> bool:
    """False when every aligned window holds a newline, so no line of ``data`` can be over MAX_LINE."""
    starts = range(0, len(data) - _WINDOW + 1, _WINDOW)
    return any(data.find(b"\n", start, start + _WINDOW) < 0 for start in starts)


def find_long_line(header_block: bytes, body: bytes) -> tuple[int, int] | None:
    """The first line (1-based, headers counted) longer than 998 bytes without its line end."""
    if len(header_block) + len(body) <= MAX_LINE:
        return None
    # Almost every message has short lines: a few hundred finds prove it, instead of
    # splitting the whole message into lines on every message.
    if not (_may_hold_long_line(header_block) or _may_hold_long_line(body)):
        return None
    return _first_long_line(header_block, body)


def _first_long_line(header_block: bytes, body: bytes) -> tuple[int, int] | None:
    """:func:`find_long_line` by its definition, line by line."""
    number = 0
    for part in (header_block, body):
        for line in part.split(b"\n"):
            number += 1
            length = len(line) - (1 if line.endswith(b"\r") else 0)
            if length > MAX_LINE:
                return number, length
    return None


def decide(
    settings: MilterSettings, streams: Sequence[Stream], get_key: KeyGetter, facts: Facts, key_problem: KeyProblem | None = None
) -> Decision:
    """Decide what to do with the message described by ``facts``, in one of ``streams`` or none.

    ``key_problem`` tells of a key whose published record no longer matches
    (``[signing] verify_published_keys``): its mail is treated like mail without a key.
    """
    stream = match_stream(streams, facts.stream_attrs())
    sender_from = parse_from(facts.headers)
    bulk = bulk_reasons(
        settings.bulk,
        facts.headers,
        envelope_sender=facts.envelope_sender,
        from_address=sender_from.address,
        stream_name=stream.name if stream is not None else None,
        stream_bulk=settings.rules_for(stream).bulk,
    )
    scope = settings.scope.check(facts.client_addr, facts.sasl_user, facts.local_submission)
    client = facts.client_addr or "unknown client"
    base = dict(scope=scope, bulk=bulk, sender_from=sender_from, stream=stream)

    def fail(reason: str, detail: str, row: TableRow | None = None) -> Decision:
        if bulk:
            return Decision("refuse", reason, refusal=Refusal(reason, detail, client), row=row, **base)
        return Decision("pass", reason, notes=[detail], row=row, **base)

    if not scope.trusted:
        if not bulk:
            return Decision("pass", "not_in_scope", **base)
        detail = "client not in trusted_hosts" if "not in trusted_hosts" in scope.why else scope.why
        return Decision("refuse", "client_not_trusted", refusal=Refusal("client_not_trusted", detail, client), **base)

    if sender_from.problem:
        return fail(sender_from.problem, sender_from.detail)

    row = settings.table.lookup(sender_from.domain)
    if row is None:
        return fail("no_signing_key", f"no [signing.table] row for From domain {sender_from.domain}")

    key = get_key(row.key)
    if key is None:
        return fail("key_unavailable", f"signing key {row.key} for {sender_from.domain} is not loaded", row=row)

    problem = key_problem(row.key) if key_problem is not None else None
    if problem is not None:
        detail = f"the DNS record of signing key {row.key} for {sender_from.domain} does not match it: {problem}"
        return fail("published_key_mismatch", detail, row=row)

    return check_body(Decision("sign", "signed", row=row, key=key, **base), facts.long_line, client)


def check_body(decision: Decision, long_line: tuple[int, int] | None, client: str | None) -> Decision:
    """Step 5 on a decision already taken on everything but the body.

    The milter decides once, before link repair, and calls this with the first
    long line of the message as it will be sent; :func:`decide` calls it with
    ``facts.long_line``. Only a "sign" decision is affected: bulk mail is
    refused, other mail is still signed and the line noted.
    """
    if decision.action != "sign" or long_line is None:
        return decision
    number, length = long_line
    detail = f"line {number} is {length} bytes, over {MAX_LINE}; Postfix would fold it and break the signature"
    if decision.bulk:
        refusal = Refusal("long_line", detail, client or "unknown client")
        return dataclasses.replace(decision, action="refuse", reason="long_line", refusal=refusal)
    return dataclasses.replace(decision, notes=[*decision.notes, detail])


def after_signing_error(decision: Decision, error: str, client: str | None) -> Decision:
    """The decision once signing itself failed: bulk is refused, other mail passes unsigned."""
    detail = f"signing failed: {error}"
    if decision.bulk:
        refusal = Refusal("signing_error", detail, client or "unknown client")
        return dataclasses.replace(decision, action="refuse", reason="signing_error", refusal=refusal, notes=[])
    return dataclasses.replace(decision, action="pass", reason="signing_error", notes=[detail])
