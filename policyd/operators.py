"""Receiving operators: which mailbox provider a delivery went to (Google, Microsoft, Yahoo, other).

Receivers throttle and block by operator, not by recipient domain: one Google
reputation covers gmail.com and every Workspace domain whose MX is Google's.
So an operator is recognised by the host that received the mail (the relay
host in Postfix's delivery line, or a domain's MX at RCPT time) first, and by
the recipient domain only when no host is known (a connection that failed
before a host answered, a lookup not finished yet).

A host pattern ``.example.net`` covers every name under it; a bare name covers
itself. A domain entry covers the domain and its subdomains. Operators from the
config (``[operators.NAME]``) are tried before the built-in ones, so an operator
can take over a name the built-ins would give another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

#: The operator of mail no rule recognises.
OTHER = "other"


@dataclass(frozen=True, slots=True)
class OperatorRule:
    """How one operator is recognised: receiving host patterns and recipient domains."""

    hosts: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()


#: The operators the brief's incidents involve, recognised out of the box.
BUILTIN: Mapping[str, OperatorRule] = {
    "google": OperatorRule(
        hosts=(".google.com", ".googlemail.com", ".gmail-smtp-in.l.google.com"),
        domains=("gmail.com", "googlemail.com"),
    ),
    "microsoft": OperatorRule(
        hosts=(".protection.outlook.com", ".outlook.com", ".hotmail.com", ".msn.com"),
        domains=("outlook.com", "hotmail.com", "live.com", "msn.com", "passport.com"),
    ),
    "yahoo": OperatorRule(
        hosts=(".yahoodns.net", ".yahoo.com", ".aol.com"),
        domains=("yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "aim.com"),
    ),
}


def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _covers(pattern: str, name: str) -> bool:
    if pattern.startswith("."):
        return name.endswith(pattern) or name == pattern[1:]
    return name == pattern


class Operators:
    """Classify a delivery by receiving host and recipient domain (see the module docstring)."""

    def __init__(self, extra: Mapping[str, OperatorRule] | None = None) -> None:
        """``extra``: operators from the config, tried before the built-in ones."""
        extra = dict(extra or {})
        ordered = [*extra.items(), *((n, r) for n, r in BUILTIN.items() if n not in extra)]
        self._order: tuple[tuple[str, OperatorRule], ...] = tuple(
            (name, OperatorRule(tuple(map(_norm, r.hosts)), tuple(map(_norm, r.domains)))) for name, r in ordered
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Every operator name, :data:`OTHER` last (a bounded metric label)."""
        return (*(name for name, _ in self._order), OTHER)

    def of_host(self, host: str) -> str | None:
        """The operator whose host patterns cover ``host``, or None."""
        host = _norm(host)
        if not host:
            return None
        for name, rule in self._order:
            if any(_covers(p, host) for p in rule.hosts):
                return name
        return None

    def of_domain(self, domain: str) -> str | None:
        """The operator whose recipient domains cover ``domain``, or None."""
        domain = _norm(domain)
        if not domain:
            return None
        for name, rule in self._order:
            if any(domain == d or domain.endswith("." + d) for d in rule.domains):
                return name
        return None

    def of_mx(self, exchanges: Sequence[str]) -> str | None:
        """The operator of the first MX host (in preference order) that one covers, or None."""
        for host in exchanges:
            name = self.of_host(host)
            if name is not None:
                return name
        return None

    def classify(self, host: str, domain: str) -> str:
        """The operator of a delivery: by receiving host, else by recipient domain, else :data:`OTHER`."""
        return self.of_host(host) or self.of_domain(domain) or OTHER


def names_of(rules: Iterable[str]) -> tuple[str, ...]:
    """The operator labels a configuration can produce (built-ins, configured, :data:`OTHER`)."""
    return Operators({name: OperatorRule() for name in rules}).names
