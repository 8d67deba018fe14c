"""The other daemons on this host that count in the same SQLite file, seen through abstract sockets.

Each store binds an abstract unix socket named after its database path (and
its pid). Abstract sockets are not files: they outlive an ``rm -rf`` of the
state directory, so a daemon about to create a store file that is missing
can tell whether another daemon still counts in a file of that name that was
deleted or moved. Creating an empty store then would start the windows from
zero beside a daemon that knows they are not empty: the cap could be spent
twice. Abstract sockets belong to a network namespace: daemons in separate
containers on one shared store file (without a shared network namespace) do
not see each other's marks.
"""

from __future__ import annotations

import hashlib
import os
import socket

_PREFIX = "sendguard-store:"
_PROC_NET_UNIX = "/proc/net/unix"


def _tag(path: str) -> str:
    return hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]


class StoreMark:
    """This process's mark that it counts in ``path``, held while the store is open."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # id(self): one process may hold the store open twice (the daemon and its releaser).
            self._sock.bind(f"\0{_PREFIX}{_tag(path)}:{os.getpid()}:{id(self)}")
        except OSError:
            self._sock.close()
            raise

    def close(self) -> None:
        """Remove the mark."""
        self._sock.close()


def other_daemons(path: str) -> list[int]:
    """The pids of other processes on this host whose mark names ``path`` (empty when unknown)."""
    wanted = f"@{_PREFIX}{_tag(path)}:"
    try:
        with open(_PROC_NET_UNIX, encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return []
    pids = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith(wanted):
            pid = fields[7][len(wanted) :].split(":", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid():
                pids.add(int(pid))
    return sorted(pids)
