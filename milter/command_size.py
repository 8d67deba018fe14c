"""libmilter's limit on one milter command, raised so that a long header field is read, not dropped.

libmilter refuses any command from the MTA longer than its ``Maxdatasize``
(65535 bytes by default, ``MILTER_MAX_DATA_SIZE``) by closing the connection,
before any callback runs and with nothing in sendguard's log. Postfix sends each
header field as one command, whole, and its own ``header_size_limit`` is 100 KiB
(102400 bytes) by default, so a 64-100 KiB header field that Postfix accepted
would make the milter drop the connection, and with ``default_action=tempfail``
Postfix would defer that message on every retry until it bounced. Body content
always comes in chunks of at most 65535 bytes, so only header fields (and, in
theory, macros) reach the limit.

pymilter does not wrap libmilter's ``smfi_setmaxdatasize``; it is called
through ``ctypes``, looked up through pymilter's own extension so it is the
libmilter that pymilter runs. The limit chosen, :data:`COMMAND_LIMIT`, is
1 MiB: ten times Postfix's default ``header_size_limit``. It is deliberately
not libmilter's ``MILTER_MDS_1M`` (1 MiB - 1): with that exact value libmilter
announces ``SMFIP_MDS_1M`` in the option negotiation, a flag Postfix does not
know; any other value only changes what libmilter accepts.
"""

from __future__ import annotations

import ctypes

import milter as libmilter  # pymilter's C extension

from sendguard import logs

log = logs.get("milter")

#: The longest milter command accepted from the MTA (bytes).
COMMAND_LIMIT = 1 << 20


def raise_command_limit(limit: int = COMMAND_LIMIT) -> int:
    """Set libmilter's command size limit to ``limit`` bytes; return the limit it had before.

    Call before libmilter starts serving. Raises ``RuntimeError`` when the
    libmilter in use has no ``smfi_setmaxdatasize`` (before sendmail 8.14).
    """
    try:
        setmax = ctypes.CDLL(libmilter.__file__).smfi_setmaxdatasize
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"libmilter has no smfi_setmaxdatasize ({exc}); header fields over 64 KiB would drop the connection") from None
    setmax.argtypes = [ctypes.c_size_t]
    setmax.restype = ctypes.c_size_t
    return int(setmax(limit))
