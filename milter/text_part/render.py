"""HTML to readable plain text, for the text/plain part of HTML-only bulk mail.

Built on the standard library's :class:`html.parser.HTMLParser` (maintained
with CPython, tolerant of broken markup, no new dependency; docs/milter.md says
why not html2text): the parser tokenises, this module only decides what each
element becomes.

* links become ``text (url)`` (just ``url`` when the text is the URL);
* headings stand on their own lines, ``h1``/``h2`` underlined;
* list items start with ``- `` (``1. `` in an ``ol``);
* images are dropped, tracking pixels and all; ``script``, ``style``,
  ``head`` and ``title`` say nothing;
* entities are decoded by the parser; anything else in the text, Listmonk
  template remnants such as ``{{ UnsubscribeURL }}`` included, is kept as it is.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SILENT = frozenset({"script", "style", "head", "title", "template", "noscript"})
_BLOCKS = frozenset(
    {"p", "div", "table", "tr", "section", "article", "header", "footer", "blockquote", "center",
     "form", "fieldset", "address", "main", "nav", "aside", "figure", "figcaption", "dl", "dt", "dd", "body"}
)  # fmt: skip
_HEADINGS = {"h1": "=", "h2": "-", "h3": "", "h4": "", "h5": "", "h6": ""}
_CELLS = frozenset({"td", "th"})
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"})
_SPACES = re.compile(r"[ \t\r\n\f\v]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


class _Renderer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.line: list[str] = []
        self.silent = 0
        self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [is_ordered, next number]
        self.links: list[tuple[str, int]] = []  # href, where its text starts in self.line
        self.heading: tuple[str, int] | None = None
        self.pending_space = False

    # -- output ----------------------------------------------------------------

    def _text(self, text: str) -> None:
        if self.pre:
            parts = text.split("\n")
            self.line.append(parts[0])
            for part in parts[1:]:
                self._newline()
                self.line.append(part)
            return
        words = _SPACES.sub(" ", text)
        if not words:
            return
        if words.startswith(" "):
            self.pending_space = True
            words = words[1:]
        if words:
            if self.pending_space and self.line and not "".join(self.line).endswith(" "):
                self.line.append(" ")
            self.line.append(words.rstrip(" "))
            self.pending_space = words.endswith(" ")

    def _newline(self) -> None:
        self.out.append("".join(self.line).rstrip())
        self.line = []
        self.pending_space = False

    def _block(self) -> None:
        """End the current line, and leave one blank line (never two) before what follows."""
        if "".join(self.line).strip():
            self._newline()
        if self.out and self.out[-1] != "":
            self.out.append("")
        self.line = []
        self.pending_space = False

    # -- parser callbacks --------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SILENT:
            self.silent += 1
            return
        if self.silent:
            return
        if tag == "br":
            self._newline()
        elif tag == "hr":
            self._block()
        elif tag in _BLOCKS:
            self._block()
        elif tag in _HEADINGS:
            self._block()
            self.heading = (tag, len(self.out))
        elif tag in ("ul", "ol"):
            self._block() if not self.lists else self._line_break_if_text()
            self.lists.append([tag == "ol", 1])
        elif tag == "li":
            self._line_break_if_text()
            indent = "  " * max(0, len(self.lists) - 1)
            if self.lists and self.lists[-1][0]:
                marker = f"{self.lists[-1][1]}. "
                self.lists[-1][1] += 1
            else:
                marker = "- "
            self.line.append(indent + marker)
            self.pending_space = False
        elif tag in _CELLS:
            if "".join(self.line).strip():
                self.line.append("  ")
            self.pending_space = False
        elif tag == "pre":
            self._block()
            self.pre += 1
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self.links.append((href.strip(), len("".join(self.line))))
        # img (tracking pixels and pictures alike) and every other tag: nothing.

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SILENT:
            self.silent = max(0, self.silent - 1)
            return
        if self.silent:
            return
        if tag in _BLOCKS or tag == "pre":
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self._block()
        elif tag in _HEADINGS:
            self._end_heading(tag)
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            if not self.lists:
                self._block()
        elif tag == "li":
            self._line_break_if_text()
        elif tag == "a" and self.links:
            self._end_link()

    def handle_data(self, data: str) -> None:
        if not self.silent:
            self._text(data)

    # -- pieces ------------------------------------------------------------------

    def _line_break_if_text(self) -> None:
        if "".join(self.line).strip():
            self._newline()

    def _end_link(self) -> None:
        href, start = self.links.pop()
        current = "".join(self.line)
        label = current[start:].strip()
        if not href or href.startswith("#") or href.lower().startswith("javascript:"):
            return
        shown = href[7:] if href.lower().startswith("mailto:") else href
        if label in (href, shown):
            return
        if not label:
            self.line = [current, shown] if not current or current.endswith(" ") else [current, " ", shown]
        else:
            self.line = [current, f" ({shown})"]
        self.pending_space = False

    def _end_heading(self, tag: str) -> None:
        if self.heading is None:
            return
        self._line_break_if_text()
        _, first = self.heading
        self.heading = None
        underline = _HEADINGS[tag]
        if underline and len(self.out) > first:
            width = max(len(line) for line in self.out[first:])
            self.out.append(underline * width)
        self._block()

    def result(self) -> str:
        self.close()
        if "".join(self.line).strip():
            self._newline()
        text = "\n".join(self.out).strip("\n")
        return _BLANK_RUNS.sub("\n\n", text) + "\n" if text else ""


def html_to_text(html: str) -> str:
    """Render ``html`` as plain text with ``\\n`` line ends (empty when the HTML says nothing)."""
    renderer = _Renderer()
    renderer.feed(html)
    return renderer.result()
