"""Give HTML-only mail a text/plain sibling, by surgery on the raw bytes.

Three shapes get one (docs/milter.md#a-text-part-for-html-only-mail):

* a message whose body is text/html (or multipart/related with an HTML root):
  the body becomes a multipart/alternative of the new text part and the
  original content, so the top-level Content-Type (and a base64 or
  quoted-printable Content-Transfer-Encoding, which a multipart may not have)
  must change: :attr:`TextPartResult.header_changes`;
* a multipart/alternative holding no text/plain: the text part goes in first;
* either of those as the first part of a multipart/mixed (attachments after
  it): that part is wrapped, or its alternative given the text part.

Every other byte stays as it came: preamble, epilogue, boundaries, headers
and content of every other part. The original HTML part is moved whole, its
header block included, so decoding the result gives the same parts plus one.
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass, field
from typing import Sequence

from ..links.mime_text import decode_part
from ..links.mime_tree import BrokenMime, MimeLimits, Node, part_tree
from .render import html_to_text

#: Larger messages are left alone, unread (as link repair does).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
#: An HTML part larger than this is not rendered.
MAX_HTML_BYTES = 4 * 1024 * 1024
_IDENTITY = ("", "7bit", "8bit", "binary")
#: Lines longer than this (RFC 5322's 998 less room) send the text part quoted-printable.
_LONGEST_PLAIN_LINE = 900

Header = tuple[str, bytes]


@dataclass(frozen=True)
class HeaderChange:
    """One top-level header change, as the milter's chgheader takes it: ``value`` None deletes."""

    name: str
    value: str | None
    index: int = 1  # the first field of that name


@dataclass
class TextPartResult:
    """What to do to the message; ``body`` None means leave it as it is.

    ``outcome`` is a fixed label (a metric label): added, not_html_only,
    broken_mime, too_large, empty.
    """

    outcome: str
    body: bytes | None = None
    header_changes: list[HeaderChange] = field(default_factory=list)
    #: Header fields to add at the end of the header (MIME-Version, when a text/html message had none).
    header_additions: list[tuple[str, str]] = field(default_factory=list)
    detail: str = ""


def add_text_part(headers: Sequence[Header], body: bytes, limits: MimeLimits = MimeLimits()) -> TextPartResult:
    """The message with a text/plain part rendered from its HTML, when it has HTML and no text. Never raises on bad mail."""
    if len(body) > MAX_MESSAGE_BYTES:
        return TextPartResult("too_large", detail=f"message of {len(body)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        tree = part_tree(headers, body, limits)
        target = _target(tree)
        if target is None:
            return TextPartResult("not_html_only")
        action, node, html = target
        text = _render(body, html)
        if not text.strip():
            return TextPartResult("empty", detail="the HTML renders to no text")
    except BrokenMime as exc:
        outcome = "too_large" if exc.reason == "part_too_large" else "broken_mime"
        return TextPartResult(outcome, detail=str(exc))
    eol = b"\n" if b"\n" in body and b"\r\n" not in body else b"\r\n"
    text_part = _text_part(text, eol)
    if action == "insert":
        assert node.boundary is not None  # a multipart walked without error has one
        at = node.first_delimiter
        new_part = b"--" + node.boundary.encode("latin-1") + eol + text_part + eol
        return TextPartResult("added", body=body[:at] + new_part + body[at:])
    boundary = _new_boundary(body)
    if node.part_start == 0 and node is tree:
        return _wrap_top(headers, body, text_part, boundary, eol)
    original = body[node.part_start : node.end]
    wrapped = (
        b'Content-Type: multipart/alternative; boundary="' + boundary + b'"' + eol + eol
        + b"--" + boundary + eol + text_part + eol
        + b"--" + boundary + eol + original + eol
        + b"--" + boundary + b"--"
    )  # fmt: skip
    return TextPartResult("added", body=body[: node.part_start] + wrapped + body[node.end :])


def _wrap_top(headers: Sequence[Header], body: bytes, text_part: bytes, boundary: bytes, eol: bytes) -> TextPartResult:
    """A top-level HTML (or related) body moves into a part; the message's own Content-* fields say multipart."""
    own: list[bytes] = []
    changes = [HeaderChange("Content-Type", f'multipart/alternative; boundary="{boundary.decode("ascii")}"')]
    ctype = _first(headers, "content-type")
    cte = _first(headers, "content-transfer-encoding")
    assert ctype is not None  # only a declared text/html or multipart/related is wrapped
    own.append(b"Content-Type: " + ctype.replace(b"\r\n", b"\n").replace(b"\n", eol))
    if cte is not None:
        own.append(b"Content-Transfer-Encoding: " + cte.replace(b"\r\n", b"\n").replace(b"\n", eol))
        if cte.strip().lower() not in (b"7bit", b"8bit", b"binary"):
            # RFC 2045 §6.4: a multipart is 7bit, 8bit or binary; the encoding now belongs to the part.
            changes.append(HeaderChange("Content-Transfer-Encoding", None))
    additions = [] if _first(headers, "mime-version") is not None else [("MIME-Version", "1.0")]
    new_body = (
        b"--" + boundary + eol + text_part + eol
        + b"--" + boundary + eol + eol.join(own) + eol + eol + body + eol
        + b"--" + boundary + b"--" + eol
    )  # fmt: skip
    return TextPartResult("added", body=new_body, header_changes=changes, header_additions=additions)


def changed_headers(headers: Sequence[Header], result: TextPartResult) -> list[Header]:
    """``headers`` as the MTA holds them once ``result``'s changes are applied (what is then signed)."""
    out = list(headers)
    for change in result.header_changes:
        seen = 0
        for i, (name, _) in enumerate(out):
            if name.lower() == change.name.lower():
                seen += 1
                if seen == change.index:
                    if change.value is None:
                        del out[i]
                    else:
                        out[i] = (name, change.value.encode("ascii"))
                    break
        else:
            if change.value is not None:
                out.append((change.name, change.value.encode("ascii")))
    out.extend((name, value.encode("ascii")) for name, value in result.header_additions)
    return out


def _first(headers: Sequence[Header], name: str) -> bytes | None:
    for field_name, value in headers:
        if field_name.lower() == name:
            return value
    return None


def _is_html(node: Node) -> bool:
    return not node.children and node.content_type == "text/html" and not node.attachment


def _has_plain(node: Node) -> bool:
    if not node.children:
        return node.content_type == "text/plain" and not node.attachment
    return any(_has_plain(child) for child in node.children)


def _target(node: Node) -> tuple[str, Node, Node] | None:
    """What to do (wrap or insert), to which node, rendering which HTML leaf; None: not HTML-only."""
    if _is_html(node):
        return "wrap", node, node
    if node.content_type == "multipart/related" and node.children and _is_html(node.children[0]):
        return "wrap", node, node.children[0]
    if node.content_type == "multipart/alternative":
        if _has_plain(node):
            return None
        # The last alternative is the sender's preferred one (RFC 2046 §5.1.4).
        for child in reversed(node.children):
            if _is_html(child):
                return "insert", node, child
            if child.content_type == "multipart/related" and child.children and _is_html(child.children[0]):
                return "insert", node, child.children[0]
        return None
    if node.content_type == "multipart/mixed" and node.children and not node.children[0].attachment:
        # The message's body is its first part; the parts after it are attachments or extras.
        return _target(node.children[0])
    return None


def _render(body: bytes, html: Node) -> str:
    part = decode_part(body[html.content_start : html.end], html.transfer_encoding, html.charset, MAX_HTML_BYTES)
    if part.codec == "latin-1":  # an ASCII-transparent charset, read as bytes: now read it for real
        try:
            source = part.text.encode("latin-1").decode(html.charset or "utf-8", "replace")
        except LookupError:
            source = part.text
    else:
        source = part.text
    return html_to_text(source)


def _text_part(text: str, eol: bytes) -> bytes:
    data = text.replace("\r\n", "\n").encode("utf-8")
    lines = data.split(b"\n")
    if data.isascii() and max(len(line) for line in lines) <= _LONGEST_PLAIN_LINE:
        encoding, content = b"7bit", eol.join(lines)
    else:
        encoding = b"quoted-printable"
        content = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        content = content.replace(b"\r\n", b"\n").replace(b"\n", eol)
    return (
        b'Content-Type: text/plain; charset="utf-8"' + eol
        + b"Content-Transfer-Encoding: " + encoding + eol + eol + content.rstrip(b"\r\n")
    )  # fmt: skip


def _new_boundary(body: bytes) -> bytes:
    # "=_" cannot occur in base64 or quoted-printable content; the random part makes a clash with 8-bit content absurd.
    while True:
        boundary = b"=_sendguard_" + secrets.token_hex(12).encode("ascii")
        if boundary not in body:
            return boundary
