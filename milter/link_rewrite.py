"""Link repair in a whole MIME message. (Placeholder with the agreed interface: the links owner replaces it.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class LinkPolicy:
    """What to do with links: ``mode`` is strip | report-only | off."""

    mode: str = "strip"
    per_subscriber_params: tuple[str, ...] = ("dot", "npi", "clia")
    strip_all_markers: bool = False


@dataclass(frozen=True)
class LinkChange:
    """One change made (or, in report-only, that would be made) to one link."""

    kind: str  # "marker_stripped" | "query_repaired"
    host: str
    path: str


@dataclass
class RewriteResult:
    """The outcome: ``body`` is None when the message must not be replaced."""

    body: bytes | None = None
    changes: list[LinkChange] = field(default_factory=list)
    error: str | None = None  # why the body was left alone (broken MIME, too large, ...)


def rewrite_message(headers: Sequence[tuple[str, bytes | str]], body: bytes, policy: LinkPolicy) -> RewriteResult:
    """Rewrite the links of a message whose top-level headers and raw body are given."""
    return RewriteResult()
