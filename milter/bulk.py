"""What makes a message bulk: mail that must never leave unsigned.

By default any one of: a ``List-Unsubscribe`` header, ``Precedence: bulk``,
``list`` or ``junk``, an ``X-Listmonk-Campaign`` header, a stream declared
``bulk = true``, or a sender listed in ``[milter.bulk] senders`` (envelope
sender or From address, by address or by domain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from sendguard.senders import SenderSet

DEFAULT_HEADERS = ("List-Unsubscribe", "X-Listmonk-Campaign")
DEFAULT_PRECEDENCE = ("bulk", "list", "junk")


@dataclass(frozen=True)
class BulkRules:
    """``[milter.bulk]``: the rules, any one of which makes a message bulk."""

    headers: tuple[str, ...] = DEFAULT_HEADERS
    precedence: tuple[str, ...] = DEFAULT_PRECEDENCE
    senders: SenderSet = field(default_factory=SenderSet)


def bulk_reasons(
    rules: BulkRules,
    headers: Sequence[tuple[str, bytes]],
    *,
    envelope_sender: str | None = None,
    from_address: str | None = None,
    stream_name: str | None = None,
    stream_bulk: bool = False,
) -> list[str]:
    """Every rule the message matches, as short phrases (empty: not bulk)."""
    reasons: list[str] = []
    wanted = {h.lower(): h for h in rules.headers}
    precedence = {p.lower() for p in rules.precedence}
    for name, value in headers:
        low = name.lower()
        if low in wanted:
            phrase = f"{wanted[low]} header"
            if phrase not in reasons:
                reasons.append(phrase)
        elif low == "precedence" and precedence:
            word = value.decode("ascii", "replace").strip().lower()
            if word in precedence:
                reasons.append(f"Precedence: {word}")
    if stream_bulk and stream_name:
        reasons.append(f"stream {stream_name} is bulk")
    if envelope_sender and rules.senders.matches(envelope_sender):
        reasons.append(f"envelope sender {envelope_sender.strip('<>')} is a bulk sender")
    elif rules.senders.matches(from_address):
        reasons.append(f"From {from_address} is a bulk sender")
    return reasons
