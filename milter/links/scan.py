"""Find the links in the decoded text of one message part.

HTML parts: the values of ``href`` and ``src`` attributes (quoted or not)
that are absolute http(s) URLs or start with an unrendered ``{{`` token. Text
outside attributes is not a link in HTML and is left alone.

Plain-text parts: bare http(s) URLs, including Listmonk's "text (url)" form,
whose closing parenthesis is not part of the URL.

Both: Listmonk's template form ``{{ TrackLink "URL" }}`` / ``{{ TrackLink "URL" . }}``
(quotes may be ``"``, a backtick, or HTML-escaped ``&quot;`` / ``&#34;``), found
when a template reached the message unrendered. A link inside such a form is
reported once, as part of the form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

_TEMPLATE_FORM = re.compile(
    r"\{\{-?\s*TrackLink\s+"
    r"(?:\"(?P<u1>[^\"{}\r\n]*)\"|`(?P<u2>[^`{}\r\n]*)`|&quot;(?P<u3>[^{}\r\n]*?)&quot;|&#0*34;(?P<u4>[^{}\r\n]*?)&#0*34;"
    r"|&#[xX]0*22;(?P<u5>[^{}\r\n]*?)&#[xX]0*22;)"
    r"\s*(?:\.\s*)?-?\}\}"
)

# Link starts are found on lower-cased text with literal patterns (fast: the
# engine skips ahead to the literal); the value is then read from the original.
_ATTR_START = re.compile(r"(?:href|src)\s*=\s*")
_ATTR_START_CI = re.compile(r"(?i)(?:href|src)\s*=\s*")
# An unquoted value ends at white space or '>' only: browsers keep a '=' in it.
_ATTR_VALUE = re.compile(r"\"(?P<d>[^\"]*)\"|'(?P<s>[^']*)'|(?P<u>[^\s>]+)")
_ATTR_LINK_START = re.compile(r"(?i)\s*(?:https?://|\{\{)")
_NAME_CHAR = re.compile(r"[\w-]")

_URL_START = re.compile(r"https?://|\{\{")
_URL_START_CI = re.compile(r"(?i)https?://|\{\{")
# An unrendered token is one unit, spaces and all, so "?dot={{ .X }}" stays one URL.
_BARE_URL = re.compile(r"(?:[hH][tT][tT][pP][sS]?://)?(?:\{\{[^{}\r\n]{0,500}\}\}|[^\s<>\"{}])+")
_TRAILING = ".,;:!?'\"*"
_CLOSERS = {")": "(", "]": "["}


@dataclass(frozen=True)
class FoundLink:
    """One link in a part's text: ``text[start:end]`` is the link as written.

    For the template form, ``url_start``/``url_end`` locate the URL inside it;
    for every other form they equal ``start``/``end``.
    """

    start: int
    end: int
    url_start: int
    url_end: int
    form: str  # "attribute" | "bare" | "template"


def _template_forms(text: str) -> list[FoundLink]:
    out = []
    if "TrackLink" not in text:
        return out
    for m in _TEMPLATE_FORM.finditer(text):
        group = next(g for g in ("u1", "u2", "u3", "u4", "u5") if m.group(g) is not None)
        out.append(FoundLink(m.start(), m.end(), m.start(group), m.end(group), "template"))
    return out


def _inside(spans: list[FoundLink], start: int, end: int) -> bool:
    return any(f.start < end and start < f.end for f in spans)


def _trim_bare(text: str, start: int, end: int) -> int:
    while end > start:
        last = text[end - 1]
        if last in _TRAILING:
            end -= 1
        elif last in _CLOSERS:
            segment = text[start:end]
            if segment.count(_CLOSERS[last]) < segment.count(last):
                end -= 1
            else:
                break
        else:
            break
    return end


def _starts(text: str, fast: re.Pattern[str], slow: re.Pattern[str]) -> Iterator[re.Match[str]]:
    low = text.lower()
    # lower() keeps offsets for every Latin-1 character; a real-charset part
    # with a character whose lower case is longer takes the slower path.
    return fast.finditer(low) if len(low) == len(text) else slow.finditer(text)


def find_links(text: str, html: bool) -> Iterator[FoundLink]:
    """Yield the links of a part's decoded ``text`` in order of position."""
    forms = _template_forms(text)
    found: list[FoundLink] = list(forms)
    done = 0  # links never start inside the previous one
    if html:
        for m in _starts(text, _ATTR_START, _ATTR_START_CI):
            if m.start() < done or (m.start() > 0 and _NAME_CHAR.match(text, m.start() - 1)):
                continue  # inside a value, or data-href and the like
            value = _ATTR_VALUE.match(text, m.end())
            if value is None:
                continue
            group = "d" if value.group("d") is not None else "s" if value.group("s") is not None else "u"
            start, end = value.start(group), value.end(group)
            done = value.end()
            if not _ATTR_LINK_START.match(text, start, end):
                continue
            # Browsers ignore white space around a URL attribute; so do we.
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if not (forms and _inside(forms, start, end)):
                found.append(FoundLink(start, end, start, end, "attribute"))
    else:
        for m in _starts(text, _URL_START, _URL_START_CI):
            if m.start() < done:
                continue
            url = _BARE_URL.match(text, m.start())
            if url is None:
                continue
            start = m.start()
            end = _trim_bare(text, start, url.end())
            done = url.end()
            if end > start and not (forms and _inside(forms, start, end)):
                found.append(FoundLink(start, end, start, end, "bare"))
    found.sort(key=lambda f: f.start)
    return iter(found)
