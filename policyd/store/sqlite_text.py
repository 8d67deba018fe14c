"""Request values that are not UTF-8, as the SQLite store keeps them: the bytes, unchanged.

The protocol keeps undecodable bytes of a request as surrogate escapes
(``protocol.py``), and Python's sqlite3 refuses to bind such a string. A
``queue_id`` or ``instance`` holding them is bound as a BLOB of the very bytes
Postfix sent: SQLite never finds a BLOB equal to a TEXT, so it cannot collide
with any UTF-8 value, and the same bytes again (a Postfix retry) find their
record. Read back, the BLOB becomes the same surrogate-escaped string.
"""

from __future__ import annotations


def to_sql(value: str) -> str | bytes:
    """``value`` as the store binds it: the text itself, or its bytes when it is not valid UTF-8."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def from_sql(value: str | bytes) -> str:
    """A value read back from the store, as the request carried it."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
