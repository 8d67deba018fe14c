"""Locate the leaf parts of a MIME message on its raw bytes.

The milter must be able to replace the content of one part and leave every
other byte of the message exactly as it arrived: preamble, epilogue,
boundaries, part headers and untouched parts. So nothing here re-serialises a
parsed message; :func:`leaf_parts` only returns, for every leaf part, where its
content lies in the raw body and how it is declared (type, charset, transfer
encoding, disposition); :func:`part_tree` returns the same walk with the
multiparts kept (where each part and its first delimiter start), for the text
part's surgery (``text_part/add.py``).

Anything that cannot be walked with certainty raises :class:`BrokenMime` with a
short, fixed reason (used as a metric label) and a human detail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from typing import Sequence

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
# Line breaks as mail has them; str.splitlines() would also break at 0x85, 0x1c-0x1e,
# 0x0b and 0x0c, which raw UTF-8 in a header holds ("Å" is C3 85).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class BrokenMime(Exception):
    """The message's structure cannot be trusted; ``reason`` is a fixed label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class MimeLimits:
    """Bounds that keep the walk cheap on hostile or absurd input."""

    max_depth: int = 10
    max_parts: int = 500


@dataclass(frozen=True)
class Leaf:
    """One non-multipart part: its content is ``body[start:end]``."""

    index: int
    content_type: str
    charset: str | None
    transfer_encoding: str
    attachment: bool
    start: int
    end: int


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return _UNFOLD.sub("", value)


def _header_fields(block: bytes) -> dict[str, str]:
    """The first occurrence of each Content-* field in a raw header block."""
    fields: dict[str, str] = {}
    name = None
    value: list[str] = []
    for line in _LINE_BREAK.split(block.decode("latin-1")):
        if line[:1] in (" ", "\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None and name not in fields:
            fields[name] = " ".join(value)
        head, sep, rest = line.partition(":")
        name = head.strip().lower() if sep and head.strip().lower().startswith("content-") else None
        value = [rest]
    if name is not None and name not in fields:
        fields[name] = " ".join(value)
    return fields


def _describe(fields: dict[str, str], default_type: str) -> tuple[str, dict[str, str], str, bool]:
    msg = Message()
    msg.set_default_type(default_type)
    if "content-type" in fields:
        msg["Content-Type"] = fields["content-type"]
    ctype = msg.get_content_type()
    params = {}
    for key in ("boundary", "charset"):
        value = msg.get_param(key)
        if isinstance(value, tuple):  # RFC 2231 form
            value = value[2]
        if value is not None:
            params[key] = str(value)
    cte = fields.get("content-transfer-encoding", "").strip().strip('"').lower()
    disposition = fields.get("content-disposition", "").strip().lower()
    return ctype, params, cte, disposition.startswith("attachment")


@dataclass(frozen=True)
class _Delimiter:
    start: int  # the first '-'
    end: int  # after the boundary (and "--", and transport padding), before the line break
    closing: bool


# What may follow "--boundary" on a delimiter line: "--" when closing, padding, the line break.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?=\r?\n|\Z)")


def _delimiters(body: bytes, boundary: bytes, start: int, end: int) -> list[_Delimiter]:
    """The delimiter lines of one multipart, up to and including the closing one."""
    needle = b"--" + boundary
    found = []
    pos = body.find(needle, start, end)
    while pos >= 0:
        # A literal search (fast) and then the checks: at a line start, nothing but
        # "--" and padding after it ("--b" must not match the line "--bc").
        if pos == start or body[pos - 1] == 0x0A:
            tail = _DELIMITER_TAIL.match(body, pos + len(needle), end)
            if tail is not None:
                found.append(_Delimiter(pos, tail.end(), tail.group(1) is not None))
                if tail.group(1):
                    break
        pos = body.find(needle, pos + len(needle), end)
    return found


def _line_end(body: bytes, pos: int, end: int) -> int:
    """The position just after the line break at ``pos`` (if there is one)."""
    if body.startswith(b"\r\n", pos) and pos + 2 <= end:
        return pos + 2
    if body.startswith(b"\n", pos) and pos + 1 <= end:
        return pos + 1
    return pos


def _before_line_break(body: bytes, pos: int, floor: int) -> int:
    """Step back over the line break that belongs to the delimiter starting at ``pos``."""
    if pos - 2 >= floor and body[pos - 2 : pos] == b"\r\n":
        return pos - 2
    if pos - 1 >= floor and body[pos - 1 : pos] == b"\n":
        return pos - 1
    return pos


def leaf_parts(headers: Sequence[tuple[str, bytes | str]], body: bytes, limits: MimeLimits) -> list[Leaf]:
    """Every leaf part of the message in depth-first order, with its content span."""
    out: list[Leaf] = []
    _collect(part_tree(headers, body, limits), out)
    return out


def _collect(node: "Node", out: list[Leaf]) -> None:
    if node.content_type.startswith("multipart/"):
        for child in node.children:
            _collect(child, out)
        return
    out.append(Leaf(len(out), node.content_type, node.charset, node.transfer_encoding, node.attachment, node.content_start, node.end))


@dataclass
class Node:
    """One part of the MIME tree, with where it lies in the raw body.

    ``part_start`` is where the part's own header block starts (for the top
    level: 0, its headers are the message's); ``content_start``..``end`` is its
    content. A multipart keeps the start of its first delimiter line, where a
    new first child can go in.
    """

    content_type: str
    charset: str | None
    transfer_encoding: str
    attachment: bool
    part_start: int
    content_start: int
    end: int
    boundary: str | None = None
    first_delimiter: int = -1
    children: list["Node"] = field(default_factory=list)


def part_tree(headers: Sequence[tuple[str, bytes | str]], body: bytes, limits: MimeLimits) -> Node:
    """The whole MIME tree of a message, multiparts and leaves, each with its spans in ``body``."""
    fields: dict[str, str] = {}
    for name, value in headers:
        key = name.strip().lower()
        if key.startswith("content-") and key not in fields:
            fields[key] = _text(value)
    counter = [0]
    return _node(fields, "text/plain", body, 0, 0, len(body), 0, limits, counter)


def _node(
    fields: dict[str, str],
    default_type: str,
    body: bytes,
    part_start: int,
    start: int,
    end: int,
    depth: int,
    limits: MimeLimits,
    counter: list[int],
) -> Node:
    ctype, params, cte, attachment = _describe(fields, default_type)
    node = Node(ctype, params.get("charset"), cte, attachment, part_start, start, end)
    if not ctype.startswith("multipart/"):
        counter[0] += 1
        if counter[0] > limits.max_parts:
            raise BrokenMime("too_many_parts", f"more than {limits.max_parts} parts")
        return node
    if depth >= limits.max_depth:
        raise BrokenMime("too_deep", f"multiparts nested deeper than {limits.max_depth}")
    if cte not in ("", "7bit", "8bit", "binary"):
        # RFC 2045 forbids encoding a multipart; its boundaries would be hidden.
        raise BrokenMime("encoded_multipart", f"{ctype} with Content-Transfer-Encoding {cte}")
    boundary = params.get("boundary")
    if not boundary:
        raise BrokenMime("no_boundary", f"{ctype} without a boundary parameter")
    delims = _delimiters(body, boundary.encode("latin-1", "replace"), start, end)
    if not delims:
        raise BrokenMime("boundary_not_found", f"{ctype} boundary {boundary!r} never occurs")
    if not delims[-1].closing:
        raise BrokenMime("unterminated_multipart", f"{ctype} boundary {boundary!r} is never closed")
    if len(delims) < 2:
        raise BrokenMime("empty_multipart", f"{ctype} has no parts")
    node.boundary = boundary
    node.first_delimiter = delims[0].start
    child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    for opening, closing in zip(delims, delims[1:]):
        child_start = _line_end(body, opening.end, end)
        child_end = max(child_start, _before_line_break(body, closing.start, child_start))
        if body.startswith(b"\r\n", child_start) or body.startswith(b"\n", child_start):
            child_fields: dict[str, str] = {}
            content_start = _line_end(body, child_start, child_end)
        else:
            # Searched up to the delimiter itself: a part that is all headers
            # ends them with the line break the delimiter line then claims.
            blank = _HEADER_END.search(body, child_start, closing.start)
            if blank is None:
                raise BrokenMime("bad_part_headers", f"a part of {ctype} has no end of headers")
            child_fields = _header_fields(body[child_start : blank.start()])
            content_start = min(blank.end(), child_end)
        node.children.append(
            _node(child_fields, child_default, body, child_start, content_start, child_end, depth + 1, limits, counter)
        )
    return node
