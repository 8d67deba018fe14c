"""The receiving operator of a recipient at decision time, for per-operator pauses and held records.

A per-operator pause holds a stream's mail to one mailbox provider, and
receivers are recognised by the hosts that receive their mail (operators.py):
a Workspace domain is Google's by its MX, not its name. So the operator of a
recipient domain comes from its MX hosts first, through the same cached
background lookup as the Yahoo family by MX (family_mx.py, on with
``family_mx_check``), and from the domain itself when no hosts are known.

With the MX lookups on, a domain whose lookup has not answered yet (or failed)
and whose name names no operator has an operator that is not known:
:data:`~sendguard_policyd.store.UNKNOWN_OPERATOR`, which a pause treats as any
operator (it could be the paused one). With them off, the domain decides alone,
and a domain it does not name is :data:`~sendguard_policyd.operators.OTHER`.
Nothing here waits for DNS.
"""

from __future__ import annotations

from typing import Iterable

from sendguard_policyd.family_mx import MxFamily
from sendguard_policyd.operators import OTHER, Operators
from sendguard_policyd.store import UNKNOWN_OPERATOR


class RecipientOperators:
    """``of(domain)``: the receiving operator of a recipient domain now (never waits)."""

    def __init__(self, operators: Operators, mx: MxFamily | None) -> None:
        self.operators = operators
        self.mx = mx

    def of(self, domain: str) -> str:
        """An operator name, :data:`OTHER`, or :data:`UNKNOWN_OPERATOR` (MX not known yet)."""
        by_name = self.operators.of_domain(domain)
        if self.mx is None:
            return by_name or OTHER
        exchanges = self.mx.exchanges(domain)
        if exchanges is None:
            return by_name or UNKNOWN_OPERATOR
        return self.operators.of_mx(exchanges) or by_name or OTHER

    def of_all(self, domains: Iterable[str]) -> tuple[str, ...]:
        """The operators of ``domains``, sorted, each once; (UNKNOWN_OPERATOR,) for no domain at all."""
        found = {self.of(d) for d in domains}
        return tuple(sorted(found)) if found else (UNKNOWN_OPERATOR,)
