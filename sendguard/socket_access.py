"""Who may connect to a unix socket the services listen on: its file mode and its group.

Postfix connects as the ``postfix`` user (and, chrooted, through
``/var/spool/postfix/private``); connecting to a unix socket needs write
permission on the socket file. A mode and a group set on the socket itself let
Postfix in without a global umask and without opening the socket to every
local user. Both services read ``socket_mode`` and ``socket_group`` with the
checks below and apply them with :func:`apply_access` once the socket exists.
"""

from __future__ import annotations

import grp
import os


def check_octal_mode(value: str) -> str | None:
    """The reason ``value`` is not an octal file mode like ``"0660"`` (None when it is one)."""
    try:
        mode = int(value, 8)
    except ValueError:
        return f"{value!r} is not an octal file mode like \"0660\""
    return None if 0 <= mode <= 0o777 else f"{value!r} is not a file mode"


def check_group(value: str) -> str | None:
    """The reason ``value`` names no group on this host (None when it names one, by name or number)."""
    try:
        group_id(value)
    except KeyError:
        return f"no group {value!r} on this host (getent group {value})"
    return None


def group_id(value: str) -> int:
    """The numeric id of group ``value`` (a name, or a number as written); KeyError when there is none."""
    if value.isdigit():
        return int(value)
    return grp.getgrnam(value).gr_gid


class AccessError(OSError):
    """The socket's mode or group could not be set (e.g. EPERM: only root, or a member of the group,
    may give a file to a group)."""


def apply_access(path: str, mode: int | None, group: str | None) -> None:
    """Give the socket file at ``path`` its ``mode`` and ``group`` (None leaves that one as it is).

    Raises :class:`AccessError`.
    """
    try:
        if group is not None:
            os.chown(path, -1, group_id(group))
        if mode is not None:
            os.chmod(path, mode)
    except OSError as exc:
        raise AccessError(exc.errno, exc.strerror) from exc
