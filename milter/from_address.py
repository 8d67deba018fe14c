"""The RFC 5322 From address: the one identity DKIM alignment is judged on.

Exactly one From header carrying exactly one mailbox with a usable domain;
anything else (missing, duplicated, a group, two mailboxes, no domain) is a
problem the decision names, because receivers apply DMARC to this header.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from typing import Sequence

from .signing_table import normalise_domain

_DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")


@dataclass(frozen=True)
class FromResult:
    """The From address and its domain, or the problem (``from_missing`` … ``from_unparseable``)."""

    address: str | None = None
    domain: str | None = None
    problem: str | None = None
    detail: str = ""


def header_text(value: bytes) -> str:
    """A raw header value as text; undecodable bytes survive as surrogates."""
    return value.decode("utf-8", "surrogateescape")


def parse_from(headers: Sequence[tuple[str, bytes]]) -> FromResult:
    """Find and check the From header among the message's raw headers."""
    values = [v for n, v in headers if n.lower() == "from"]
    if not values:
        return FromResult(problem="from_missing", detail="the message has no From header")
    if len(values) > 1:
        return FromResult(problem="from_duplicated", detail=f"the message has {len(values)} From headers")
    text = re.sub(r"\r?\n", "", header_text(values[0]))
    pairs = [p for p in email.utils.getaddresses([text]) if p != ("", "")]
    if len(pairs) != 1:
        shown = text.strip()[:80].encode("ascii", "backslashreplace").decode()
        what = "no address" if not pairs else f"{len(pairs)} addresses"
        return FromResult(problem="from_unparseable", detail=f"From header holds {what}: {shown!r}")
    address = pairs[0][1].strip()
    local, at, domain = address.rpartition("@")
    domain = normalise_domain(domain) if at else ""
    if not local or not at or not _DOMAIN_RE.match(domain):
        shown = text.strip()[:80].encode("ascii", "backslashreplace").decode()
        return FromResult(problem="from_unparseable", detail=f"From header has no usable user@domain: {shown!r}")
    return FromResult(address=f"{local}@{domain}", domain=domain)
