"""One text part's content: raw bytes to text and back, same encoding both ways.

Decoding undoes the transfer encoding (7bit/8bit/binary as is,
quoted-printable, base64) and then the charset. Re-encoding applies the same
charset and the same transfer encoding with the part's own line breaks (and,
for base64, its line length), so only the edited links differ once decoded.

Charsets in which a byte below 0x80 always means that ASCII character
(UTF-8, ISO-8859-*, windows-125x, EUC-*) are read byte for byte as Latin-1:
every edit touches ASCII only, so the part's other bytes, valid or not in its
declared charset, come back exactly as they were. Other charsets (UTF-16,
Shift_JIS, ISO-2022-JP, ...) are decoded for real and must encode back to the
very same bytes, or the part is refused.
"""

from __future__ import annotations

import binascii
import codecs
import re
from dataclasses import dataclass

from .mime_tree import BrokenMime

_IDENTITY = ("", "7bit", "8bit", "binary")
_WHITESPACE = b" \t\r\n"
# '=' must start a hex pair or a soft line break (trailing white space allowed).
_BAD_QP_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*(?:\r?\n|\Z))")

# Codec names (as codecs.lookup() spells them) whose bytes < 0x80 are always ASCII.
_ASCII_TRANSPARENT = frozenset(
    {"ascii", "utf-8", "koi8-r", "koi8-u", "euc_jp", "euc_kr", "gb2312", "mac-roman"}
    | {f"iso8859-{n}" for n in range(1, 17)}
    | {f"cp125{n}" for n in range(0, 9)}
)


@dataclass(frozen=True)
class PartText:
    """The decoded text of a part and what is needed to encode it back."""

    text: str
    codec: str  # codec used for text <-> bytes ("latin-1" for ASCII-transparent charsets)
    charset: str  # the declared charset (or us-ascii), for messages
    transfer_encoding: str
    raw: bytes  # the part's content exactly as it arrived


def opaque_charset(charset: str) -> bool:
    """Whether ``charset`` is known but may spell ASCII characters with other bytes."""
    try:
        return codecs.lookup(charset).name not in _ASCII_TRANSPARENT
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return False


def _undo_transfer(raw: bytes, cte: str) -> bytes:
    if cte in _IDENTITY:
        return raw
    if cte == "quoted-printable":
        bad = _BAD_QP_ESCAPE.search(raw)
        if bad is not None:
            # Decoders disagree on what a broken escape means; re-encoding would pick one.
            raise BrokenMime("bad_quoted_printable", f"invalid escape {raw[bad.start() : bad.start() + 3]!r}")
        return binascii.a2b_qp(raw)
    if cte == "base64":
        compact = raw.translate(None, _WHITESPACE)
        try:
            return binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error as exc:
            raise BrokenMime("bad_base64", f"base64 part does not decode: {exc}") from None
    raise BrokenMime("unknown_transfer_encoding", f"Content-Transfer-Encoding {cte!r}")


def decode_part(raw: bytes, transfer_encoding: str, charset: str | None, max_bytes: int) -> PartText:
    """Decode a text part's raw content; raise :class:`BrokenMime` when it cannot be trusted."""
    if len(raw) > max_bytes:
        raise BrokenMime("part_too_large", f"text part of {len(raw)} bytes exceeds {max_bytes}")
    data = _undo_transfer(raw, transfer_encoding)
    declared = charset or "us-ascii"
    try:
        codec = codecs.lookup(declared).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise BrokenMime("unknown_charset", f"charset {declared!r} is unknown") from None
    if codec in _ASCII_TRANSPARENT:
        return PartText(data.decode("latin-1"), "latin-1", declared, transfer_encoding, raw)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise BrokenMime("bad_charset_data", f"part is not valid {declared}: {exc.reason}") from None
    except LookupError:  # a codec that is not a charset (charset=base64, zlib ...): bytes to bytes
        raise BrokenMime("unknown_charset", f"charset {declared!r} is not a text charset") from None
    if text.encode(codec) != data:
        raise BrokenMime("charset_not_reversible", f"{declared} text does not encode back to the same bytes")
    return PartText(text, codec, declared, transfer_encoding, raw)


def _line_break(raw: bytes) -> bytes:
    return b"\r\n" if b"\r\n" in raw else b"\n"


def _base64_lines(data: bytes, raw: bytes) -> bytes:
    eol = _line_break(raw)
    lines = raw.split(eol)
    width = len(lines[0].strip(_WHITESPACE)) if len(lines) > 1 else 76
    if width <= 0 or width % 4:
        width = 76
    encoded = binascii.b2a_base64(data, newline=False)
    out = eol.join(encoded[i : i + width] for i in range(0, len(encoded), width))
    if raw.endswith(eol):
        out += eol
    return out


def _quoted_printable(data: bytes, raw: bytes) -> bytes:
    out = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    if _line_break(raw) == b"\r\n":
        # b2a_qp breaks soft lines with LF when the text has no CRLF of its own.
        out = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if binascii.a2b_qp(out) != data:
        raise BrokenMime("qp_not_reversible", "rewritten part does not survive quoted-printable encoding")
    return out


def encode_part(part: PartText, text: str) -> bytes:
    """The raw content for ``text``, in the part's own charset and transfer encoding."""
    try:
        data = text.encode(part.codec)
    except UnicodeEncodeError:
        raise BrokenMime("charset_not_reversible", f"rewritten text does not fit {part.charset}") from None
    if part.transfer_encoding in _IDENTITY:
        return data
    if part.transfer_encoding == "base64":
        return _base64_lines(data, part.raw)
    return _quoted_printable(data, part.raw)
