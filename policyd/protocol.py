"""The Postfix policy delegation protocol: parse a request block, format a reply.

A request is ``name=value`` lines ended by an empty line; the reply is
``action=TEXT`` and an empty line (SMTPD_POLICY_README). Postfix sends
attributes this daemon does not know about, and newer versions add more, so
unknown names are ignored; what makes a request *bad* is only what would make
a decision on it a guess (see :class:`BadRequest`).
"""

from __future__ import annotations

import re
from operator import methodcaller

#: A longer line is refused: Postfix's longest attributes (addresses, certificate
#: subjects) stay far below this, so a longer line is not Postfix talking.
MAX_LINE_BYTES = 8192
#: A request larger than this (without its empty line) is refused.
MAX_REQUEST_BYTES = 65536
#: More attributes than this in one request is refused (Postfix 3.8 sends about 30).
MAX_ATTRIBUTES = 200

REQUEST_TYPE = "smtpd_access_policy"

_SPLIT_NAME = methodcaller("split", "=", 1)
_NAMES = re.compile(r"[A-Za-z0-9_]+\Z", re.ASCII)
#: One well-formed line (``$`` ends at the line break: values are the rest of the line).
_LINE = re.compile(r"^([A-Za-z0-9_]+)=(.*)$", re.MULTILINE)


class BadRequest(Exception):
    """A request this daemon cannot decide on.

    ``reason`` is a short fixed label (the metric label); ``detail`` is the log text.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


#: The metric labels of :class:`BadRequest`, fixed so the metric stays low-cardinality.
BAD_REASONS = (
    "line_too_long",
    "request_too_large",
    "too_many_attributes",
    "garbage",
    "missing_request",
    "wrong_request",
    "missing_protocol_state",
    "unterminated",
)


def parse_request(block: bytes) -> dict[str, str]:
    """Parse one request (its lines, without the terminating empty line) into attributes.

    Raises :class:`BadRequest` for a line that is not ``name=value``, a NUL
    byte, too many attributes, or a missing ``request``/``protocol_state``.
    Values are UTF-8 (Postfix passes SMTPUTF8 addresses as is); undecodable
    bytes are kept as surrogate escapes rather than refusing the request.
    """
    if b"\0" in block:
        raise BadRequest("garbage", "request holds a NUL byte")
    text = block.decode("utf-8", "surrogateescape")
    # The fast path, for what Postfix sends: one C-level scan when every line is a clean
    # name=value and no limit is near (so the careful checks below cannot fail). Anything
    # else takes the careful path, which finds the same attributes or names what is wrong.
    if len(text) <= MAX_LINE_BYTES:
        breaks = text.count("\n")
        if breaks < MAX_ATTRIBUTES:
            pairs = _LINE.findall(text)
            if len(pairs) == breaks + 1:  # every line matched: nothing was skipped
                return _checked(dict(pairs))  # as below, the last of a repeated name wins
    return _parse_careful(text)


def _parse_careful(text: str) -> dict[str, str]:
    lines = text.split("\n")
    if len(lines) > MAX_ATTRIBUTES:
        raise BadRequest("too_many_attributes", f"request has {len(lines)} attributes, more than {MAX_ATTRIBUTES}")
    if max(map(len, lines)) > MAX_LINE_BYTES:
        longest = max(map(len, lines))
        raise BadRequest("line_too_long", f"request line of {longest} characters, more than {MAX_LINE_BYTES}")
    try:
        # Postfix never sends a name twice; if a client did, the last one wins.
        attrs = dict(map(_SPLIT_NAME, lines))
    except ValueError:  # a line without "="
        bad = next(line for line in lines if "=" not in line)
        raise BadRequest("garbage", f"request line is not name=value: {bad[:60]!r}") from None
    # Names are ASCII letters, digits and "_": checked for all of them in one regex match.
    if "" in attrs or not _NAMES.match("_".join(attrs)):
        bad = next(name for name in attrs if not name or not _NAMES.match(name))
        raise BadRequest("garbage", f"request line is not name=value: {bad[:60]!r}")
    return _checked(attrs)


def _checked(attrs: dict[str, str]) -> dict[str, str]:
    """``attrs`` when they hold what a decision needs; else :class:`BadRequest`."""
    request = attrs.get("request")
    if request is None:
        raise BadRequest("missing_request", "request has no request= attribute")
    if request != REQUEST_TYPE:
        raise BadRequest("wrong_request", f"request={request[:40]!r} is not {REQUEST_TYPE}")
    if not attrs.get("protocol_state"):
        raise BadRequest("missing_protocol_state", "request has no protocol_state= attribute")
    return attrs


def format_reply(action: str) -> bytes:
    """The reply bytes for one action text (line breaks, which would end the reply early, become spaces)."""
    if "\n" in action or "\r" in action:
        action = action.replace("\r", " ").replace("\n", " ")
    return b"action=" + action.encode("utf-8", "replace") + b"\n\n"


def format_request(attrs: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """Encode a request as Postfix does (for clients, tests and the benchmark)."""
    items = attrs.items() if isinstance(attrs, dict) else attrs
    return b"".join(f"{k}={v}\n".encode() for k, v in items) + b"\n"
