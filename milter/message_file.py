"""A message file read as Postfix hands a message to its milters (for ``sendguard explain --message``).

Postfix gives a milter each header field as its name and its value, the
whitespace after the colon stripped and continuation lines joined with LF, and
the body with CRLF line ends (the form it has on the wire). A file saved from a
mail client or by Listmonk's "download" usually has LF line ends, and one saved
from an mbox starts with a ``From `` line: both are taken as Postfix would have
received them.
"""

from __future__ import annotations

import re

#: A header field as the milter receives it: name, and value with folding kept as LF.
Field = tuple[str, bytes]

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(rb"\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def split_message(message: bytes) -> tuple[list[Field], bytes]:
    """Split raw bytes into (name, value) pairs as Postfix hands them to a milter, and the body as it is."""
    m = _HEAD_END.search(message)
    head, body = (message[: m.start()], message[m.end() :]) if m else (message, b"")
    fields: list[list] = []
    for line in _LINE.split(head):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\n" + line
        else:
            name, _, value = line.partition(b":")
            fields.append([name.decode("utf-8", "surrogateescape"), value.lstrip(b" \t")])
    return [(n, v) for n, v in fields], body


def read_message(data: bytes) -> tuple[list[Field], bytes]:
    """A saved message's header fields and body as Postfix passes them on (mbox ``From `` line dropped, body in CRLF)."""
    if data.startswith(b"From ") and b":" not in data.split(b"\n", 1)[0].split(b" ", 2)[1]:
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    headers, body = split_message(data)
    return headers, _BARE_LF.sub(b"\r\n", body)
