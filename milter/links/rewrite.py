"""Link repair in a whole MIME message, run at end-of-message before signing.

Listmonk's ``@TrackLink`` marker on a per-subscriber link sends every
recipient to one captured URL, and a query whose ``?`` arrived as ``&``
404s (the brief's fifth incident). :func:`rewrite_message` removes the marker
from per-subscriber links and repairs ``&``-first queries in every text/html
and text/plain part, re-encoding only the parts it changes; docs/links.md has
the rules.

How the milter uses it, at end-of-message and before it signs::

    from sendguard_milter.links import log as link_log, metrics as link_metrics
    from sendguard_milter.links.rewrite import rewrite_message

    policy = settings.links.with_mode(stream.links if stream else None)
    result = rewrite_message(headers, body, policy)   # never raises
    link_metrics.record(result, policy.mode)
    link_log.log_result(log, queue_id, result, policy.mode)
    if result.body is not None:
        ctx.replacebody(result.body)
        body = result.body                             # sign what is sent

``headers`` are the top-level header fields as received (name, value); only
``Content-*`` fields are read. ``body`` is the raw body as the milter got it
(CRLF line ends). ``result.body`` is None whenever the message must be left as
it is: mode off or report-only, nothing to change, or ``result.error`` set
(broken MIME, too large, internal error) — the milter then signs the original.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from .mime_text import PartText, decode_part, encode_part
from .mime_tree import BrokenMime, Leaf, MimeLimits, leaf_parts
from .prescan import might_change
from .scan import FoundLink, find_links
from .url_repair import repair_url

KINDS = ("marker_stripped", "query_repaired")
#: Always per-subscriber: the brief's carrier (DOT), provider (NPI) and lab (CLIA) ids.
#: ``[links] per_subscriber_params`` adds to these, never replaces them.
BUILTIN_PARAMS: tuple[str, ...] = ("dot", "npi", "clia")
_TEXT_TYPES = ("text/html", "text/plain")


@dataclass(frozen=True)
class LinkPolicy:
    """What to do with links: ``mode`` is strip | report-only | off."""

    mode: str = "strip"
    per_subscriber_params: tuple[str, ...] = BUILTIN_PARAMS
    strip_all_markers: bool = True
    #: Larger messages are passed unchanged without a look (reason message_too_large).
    max_message_bytes: int = 32 * 1024 * 1024
    #: A text part whose raw content is larger is never decoded (reason part_too_large).
    max_part_bytes: int = 4 * 1024 * 1024
    max_depth: int = 10
    max_parts: int = 500

    def with_mode(self, mode: str | None) -> LinkPolicy:
        """This policy with a stream's own mode (``None`` keeps the global one)."""
        if mode is None or mode == self.mode:
            return self
        return dataclasses.replace(self, mode=mode)


@dataclass(frozen=True)
class LinkChange:
    """One change made (or, in report-only, that would be made) to one link.

    ``host`` and ``path`` are safe to log. ``replacement`` holds the whole new
    link text, subscriber values included: it is for tests, never for logs.
    """

    kind: str  # "marker_stripped" | "query_repaired"
    host: str
    path: str
    #: Leaf part, counted depth-first from 0 (a single-part message is part 0).
    part_index: int = 0
    #: Where the link starts and how long it is, in the part's decoded text as received.
    offset: int = -1
    length: int = 0
    form: str = "attribute"  # "attribute" | "bare" | "template"
    replacement: str = field(default="", repr=False)


@dataclass
class RewriteResult:
    """The outcome: ``body`` is None when the message must not be replaced."""

    body: bytes | None = None
    changes: list[LinkChange] = field(default_factory=list)
    error: str | None = None  # why the body was left alone (broken MIME, too large, ...)
    #: Fixed label for ``error`` (a metric label): no_boundary, bad_base64, part_too_large, ...
    reason: str | None = None
    #: Whether the MIME tree was parsed (False: mode off, or the byte pre-scan found nothing).
    parsed: bool = False
    parts_changed: int = 0


def rewrite_message(headers: Sequence[tuple[str, bytes | str]], body: bytes, policy: LinkPolicy) -> RewriteResult:
    """Rewrite the links of a message whose top-level headers and raw body are given.

    Never raises: any failure gives a result with ``error``/``reason`` set and
    ``body`` None, so the caller passes (and signs) the message unchanged.
    """
    if policy.mode == "off":
        return RewriteResult()
    try:
        if len(body) > policy.max_message_bytes:
            return RewriteResult(
                error=f"message of {len(body)} bytes exceeds max_message_bytes {policy.max_message_bytes}",
                reason="message_too_large",
            )
        if not might_change(headers, body):
            return RewriteResult()
        return _rewrite(headers, body, policy)
    except BrokenMime as exc:
        return RewriteResult(error=f"broken MIME: {exc.detail}", reason=exc.reason, parsed=True)
    except Exception as exc:  # the message must pass whatever happens here
        return RewriteResult(error=f"internal error: {type(exc).__name__}: {exc}", reason="internal_error", parsed=True)


def _rewrite(headers: Sequence[tuple[str, bytes | str]], body: bytes, policy: LinkPolicy) -> RewriteResult:
    params = frozenset(p.lower() for p in policy.per_subscriber_params)
    limits = MimeLimits(max_depth=policy.max_depth, max_parts=policy.max_parts)
    changes: list[LinkChange] = []
    replaced: list[tuple[Leaf, bytes]] = []
    for leaf in leaf_parts(headers, body, limits):
        if leaf.content_type not in _TEXT_TYPES or leaf.attachment:
            continue
        part = decode_part(body[leaf.start : leaf.end], leaf.transfer_encoding, leaf.charset, policy.max_part_bytes)
        new_text, part_changes = _rewrite_text(part, leaf, params, policy.strip_all_markers)
        if not part_changes:
            continue
        changes.extend(part_changes)
        if policy.mode == "strip":
            replaced.append((leaf, encode_part(part, new_text)))
    result = RewriteResult(changes=changes, parsed=True, parts_changed=len({c.part_index for c in changes}))
    if replaced:
        out = []
        pos = 0
        for leaf, raw in replaced:
            out.append(body[pos : leaf.start])
            out.append(raw)
            pos = leaf.end
        out.append(body[pos:])
        result.body = b"".join(out)
    return result


def _rewrite_text(part: PartText, leaf: Leaf, params: frozenset[str], strip_all: bool) -> tuple[str, list[LinkChange]]:
    text = part.text
    html = leaf.content_type == "text/html"
    pieces: list[str] = []
    changes: list[LinkChange] = []
    pos = 0
    for link in find_links(text, html):
        replacement, kinds, host, path = _repair_link(text, link, params, strip_all)
        if not kinds:
            continue
        if part.codec == "latin-1":
            # The part was read byte for byte; show host and path in its real charset.
            host, path = _recode(host, part.charset), _recode(path, part.charset)
        for kind in kinds:
            changes.append(
                LinkChange(kind, host, path, leaf.index, link.start, link.end - link.start, link.form, replacement)
            )
        pieces.append(text[pos : link.start])
        pieces.append(replacement)
        pos = link.end
    if not changes:
        return text, []
    pieces.append(text[pos:])
    return "".join(pieces), changes


def _repair_link(text: str, link: FoundLink, params: frozenset[str], strip_all: bool) -> tuple[str, list[str], str, str]:
    """The new text of one link and the kinds of change made to it."""
    url = text[link.url_start : link.url_end]
    if link.form != "template" and "TrackLink" not in url:
        # Without a marker only an '&' before any '?' can need a change (most links have neither).
        amp, query = url.find("&"), url.find("?")
        if amp < 0 or 0 <= query < amp:
            return "", [], "", ""
    verdict = repair_url(url, params, strip_all)
    kinds = []
    if link.form == "template":
        if verdict.per_subscriber or strip_all:
            # The whole {{ TrackLink "…" }} form gives way to its (repaired) URL.
            kinds.append("marker_stripped")
            if verdict.query_repaired:
                kinds.append("query_repaired")
            return verdict.text, kinds, verdict.host, verdict.path
        if not verdict.changed:
            return "", [], verdict.host, verdict.path
        new = text[link.start : link.url_start] + verdict.text + text[link.url_end : link.end]
    else:
        new = verdict.text
    if verdict.marker_stripped:
        kinds.append("marker_stripped")
    if verdict.query_repaired:
        kinds.append("query_repaired")
    return new, kinds, verdict.host, verdict.path


def _recode(value: str, charset: str) -> str:
    try:
        return value.encode("latin-1").decode(charset, "replace")
    except (LookupError, UnicodeEncodeError):
        return value
