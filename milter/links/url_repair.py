"""Classify one link and produce its repaired text, byte for byte.

A link arrives as the exact text found in a message part (an HTML attribute
value, a bare URL in plain text, or the URL inside Listmonk's
``{{ TrackLink "…" }}`` form). Its *logical* URL is that text with character
references decoded (``&amp;`` → ``&``), because Listmonk stores and renders
tracked URLs with ``&amp;`` (listmonk #844) and a browser follows the decoded
form. Every decision is taken on the logical URL; every edit is made on the
original text, so whatever is not changed stays exactly as it was: percent
encodings, fragments, entity spelling, non-ASCII characters.

Two repairs exist:

* ``marker_stripped``: a literal ``@TrackLink`` is removed. Listmonk turns every
  marker it processes into a ``/link/<uuid>`` redirect, and a delivered message
  is never processed again, so a literal marker at the MTA only damages the
  URL. It is removed from per-subscriber links always, from every link when
  ``strip_all`` is set (``[links] strip_all_markers``, on by default).
* ``query_repaired``: a URL whose query begins with ``&`` because a template
  token that should have carried the ``?`` rendered after capture
  (``/order/slug&utm_source=x``) gets ``?`` in place of that first ``&``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import unquote

#: The marker, as Listmonk writes it and as an HTML editor may escape its ``@``.
_MARKER = "@TrackLink"

# Only references closed by ';' are decoded: HTML keeps "&copy=2" in an
# attribute as written, and a guessed decoding must never move an edit.
_CHAR_REF = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

# An unrendered template token, raw or percent-encoded by a WYSIWYG editor.
_TOKEN = re.compile(r"\{\{.*?\}\}|%7[Bb]%7[Bb].*?%7[Dd]%7[Dd]")

# Listmonk's own click redirect: /link/<link uuid>/<campaign uuid>[/<subscriber uuid>].
_LISTMONK_REDIRECT = re.compile(r"/link/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/")

# The first name=value pair after an '&'-first query: the name holds no '/',
# which keeps a path such as /a&b/c (legal, if odd) out of the repair.
_QUERY_PAIR = re.compile(r"[^/=&#?\s]+=")

_NOT_URL = re.compile(r"[ \t\n\r\f\v\"'<>]")  # ASCII only, as in prescan's bytes pattern
_SCHEME = re.compile(r"(?i)https?://")

#: Longest path kept for logs.
PATH_LOG_LIMIT = 200


@dataclass(frozen=True)
class UrlVerdict:
    """What :func:`repair_url` found and did to one link."""

    text: str  # the link text after repair (equal to the input when nothing changed)
    marker_stripped: bool
    query_repaired: bool
    per_subscriber: bool
    has_marker: bool
    host: str
    path: str

    @property
    def changed(self) -> bool:
        """Whether the text differs from the input."""
        return self.marker_stripped or self.query_repaired


def _logical(raw: str) -> tuple[str, list[tuple[int, int, int]]]:
    """The decoded URL, and each decoded reference as (logical index, raw start, raw end)."""
    if "&" not in raw:
        return raw, []
    refs: list[tuple[int, int, int]] = []
    out: list[str] = []
    pos = 0
    shrink = 0  # how much shorter the logical text is than the raw one so far
    for m in _CHAR_REF.finditer(raw):
        decoded = html.unescape(m.group())
        if len(decoded) != 1:
            continue  # unknown or multi-character reference: kept as plain text
        out.append(raw[pos : m.start()])
        out.append(decoded)
        refs.append((m.start() - shrink, m.start(), m.end()))
        shrink += m.end() - m.start() - 1
        pos = m.end()
    out.append(raw[pos:])
    return "".join(out), refs


def _raw_span(refs: list[tuple[int, int, int]], index: int) -> tuple[int, int]:
    """The raw span of the logical character at ``index``."""
    shrink = 0
    for logical, start, end in refs:
        if logical == index:
            return start, end
        if logical > index:
            break
        shrink += end - start - 1
    return index + shrink, index + shrink + 1


def _query_names(query: str) -> list[str]:
    names = []
    for pair in query.split("&"):
        name = pair.partition("=")[0]
        if name:
            names.append(unquote(name).strip().lower())
    return names


def _split(url: str) -> tuple[str, str, int, int]:
    """Host, path, and the index of the first '?' and of the query-starting '&' (or -1)."""
    m = _SCHEME.match(url)
    end_frag = url.find("#")
    if end_frag < 0:
        end_frag = len(url)
    qmark = url.find("?", 0, end_frag)
    if not m:
        return "", "", qmark, -1
    rest_start = m.end()
    path_start = rest_start
    while path_start < end_frag and url[path_start] not in "/?":
        path_start += 1
    host = url[rest_start:path_start].rpartition("@")[2]
    amp = -1
    if qmark < 0:
        first_amp = url.find("&", path_start, end_frag)
        # White space, a quote or a tag character before the '&' means this is
        # not one URL (prescan relies on the same rule).
        if first_amp > path_start and not _NOT_URL.search(url, rest_start, first_amp):
            if _QUERY_PAIR.match(url, first_amp + 1):
                amp = first_amp
    path_end = qmark if qmark >= 0 else (amp if amp >= 0 else end_frag)
    return host, url[path_start:path_end], qmark, amp


def repair_url(raw: str, per_subscriber_params: frozenset[str], strip_all: bool) -> UrlVerdict:
    """Classify the link text ``raw`` and return its repaired text.

    ``per_subscriber_params`` holds lower-case query parameter names. The
    returned text differs from ``raw`` only where a marker was removed or the
    query-starting ``&`` (or its ``&amp;`` spelling) became ``?``.
    """
    logical, refs = _logical(raw)
    has_marker = _MARKER in logical
    clean = logical.replace(_MARKER, "") if has_marker else logical
    host, path, qmark, amp = _split(clean)
    if len(path) > PATH_LOG_LIMIT:
        path = path[:PATH_LOG_LIMIT] + "…"

    if _LISTMONK_REDIRECT.match(path):
        return UrlVerdict(raw, False, False, False, has_marker, host, path)

    per_subscriber = bool(_TOKEN.search(clean))
    if not per_subscriber:
        end_frag = clean.find("#")
        end_frag = len(clean) if end_frag < 0 else end_frag
        start = qmark + 1 if qmark >= 0 else (amp + 1 if amp >= 0 else -1)
        if start > 0:
            per_subscriber = any(n in per_subscriber_params for n in _query_names(clean[start:end_frag]))

    strip = has_marker and (per_subscriber or strip_all)
    edits: list[tuple[int, int, str]] = []
    if strip:
        # Marker positions come from the logical URL, so "&#64;TrackLink" in
        # HTML is removed whole, exactly as a browser would have read it.
        i = logical.find(_MARKER)
        while i >= 0:
            edits.append((_raw_span(refs, i)[0], _raw_span(refs, i + len(_MARKER) - 1)[1], ""))
            i = logical.find(_MARKER, i + len(_MARKER))
    if amp >= 0:
        # Map the '&' of the marker-free URL back to the logical URL, then to raw.
        logical_amp = _index_with_markers(logical, amp) if has_marker else amp
        edits.append((*_raw_span(refs, logical_amp), "?"))
    if not edits:
        return UrlVerdict(raw, False, False, per_subscriber, has_marker, host, path)
    edits.sort()
    out = []
    pos = 0
    for s, e, rep in edits:
        out.append(raw[pos:s])
        out.append(rep)
        pos = e
    out.append(raw[pos:])
    return UrlVerdict("".join(out), strip, amp >= 0, per_subscriber, has_marker, host, path)


def _index_with_markers(logical: str, clean_index: int) -> int:
    """Index in ``logical`` of the character at ``clean_index`` once markers are removed."""
    removed = 0
    pos = 0
    while True:
        i = logical.find(_MARKER, pos)
        if i < 0 or i - removed > clean_index:
            return clean_index + removed
        removed += len(_MARKER)
        pos = i + len(_MARKER)
