"""Checks of the ``[policyd]`` keys that reach Redis: the URL, the password file, the timeout.

A password never sits in the config file (which operators paste into tickets):
a URL carrying one is refused, and the password comes from
``redis_password_file``, a file only its owner (and group) may read.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import parse_qs, urlsplit

#: The schemes redis-py connects with: TCP, TCP over TLS, a unix-domain socket.
REDIS_SCHEMES = ("redis", "rediss", "unix")

#: The largest ``redis_timeout``. A request waits at most about four timeouts (connect and
#: command, once more after a dropped connection): 40 s stays well under Postfix's
#: ``smtpd_policy_service_timeout`` (100 s), past which smtpd gives up on the policy service.
MAX_TIMEOUT = 10.0


def check_redis_url(value: str) -> str | None:
    """Why ``value`` cannot be ``redis_url`` (None: it can)."""
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - parsing the port is what raises on a malformed one
    except ValueError as exc:
        return f"{value!r} is not a URL: {exc}"
    if url.scheme not in REDIS_SCHEMES:
        return f"{value!r}: the scheme must be one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
    if url.password is not None or "password" in parse_qs(url.query):
        return "carries a password: put it in the file named by redis_password_file instead (the URL is logged)"
    if url.scheme == "unix" and not url.path:
        return f"{value!r}: a unix:// URL names the socket's path, like unix:///run/redis/redis.sock"
    if url.scheme != "unix" and not url.hostname:
        return f"{value!r}: no host (like redis://127.0.0.1:6379/0)"
    return None


def check_redis_timeout(value: float) -> str | None:
    """Why ``value`` cannot be ``redis_timeout`` (None: it can)."""
    if not 0 < value <= MAX_TIMEOUT:
        return (
            f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds, so a request answers well within"
            " Postfix's smtpd_policy_service_timeout (100 s)"
        )
    return None


def check_host_name(value: str) -> str | None:
    """Why ``value`` cannot be ``redis_host_name`` (None: it can)."""
    if any(c.isspace() for c in value):
        return f"{value!r}: a host name has no white space"
    return None


def read_password_file(path: str) -> str:
    """The password in ``path`` (its first line); ValueError with the reason when it cannot be used."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if info.st_mode & stat.S_IROTH:
        raise ValueError(f"{path} is readable by every user (mode {stat.S_IMODE(info.st_mode):04o}): chmod o-r it")
    if not line:
        raise ValueError(f"{path} is empty: its first line is the password")
    return line
