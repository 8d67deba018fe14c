"""Sender lists: addresses and whole domains, matched case-insensitively.

A stream's ``match.sender`` and the milter's ``[milter.bulk] senders`` are both
written this way: an entry with ``@`` is one address, an entry without is a
domain (every address at it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


def check_sender(value: str) -> str | None:
    """A :meth:`Section.get_list` check for one entry."""
    return None if value.strip() else "empty sender"


@dataclass(frozen=True)
class SenderSet:
    """Addresses and domains; :meth:`matches` takes an envelope or From address."""

    addresses: frozenset[str] = field(default_factory=frozenset)
    domains: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> SenderSet:
        """Split config entries into addresses (with ``@``) and domains, lower-cased."""
        lowered = [e.strip().lower() for e in entries]
        return cls(frozenset(e for e in lowered if "@" in e), frozenset(e for e in lowered if "@" not in e))

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains)

    def matches(self, address: str | None) -> bool:
        """Whether ``address`` (angle brackets allowed) is listed, by itself or by its domain."""
        if not address:
            return False
        a = address.strip().strip("<>").lower()
        return a in self.addresses or a.rpartition("@")[2] in self.domains

    def may_overlap(self, other: SenderSet) -> bool:
        """Whether some address could match both sets."""
        if self.addresses & other.addresses or self.domains & other.domains:
            return True
        if any(a.rpartition("@")[2] in other.domains for a in self.addresses):
            return True
        return any(a.rpartition("@")[2] in self.domains for a in other.addresses)

    def entries(self) -> list[str]:
        """Every entry, sorted (for status and the effective configuration)."""
        return sorted(self.addresses | self.domains)
