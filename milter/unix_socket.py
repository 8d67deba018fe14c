"""The mode and group of the milter's unix socket, set once libmilter has created it.

libmilter creates the socket file itself, in its own thread, with the process
umask, and exposes no hook in between. A umask set around start would change
every file the process creates meanwhile (the policy daemon's database in
``sendguard run``), so the milter waits until its own process listens on the
path — found in /proc/net/unix by path, and among the process's descriptors by
inode, so a stale file of an earlier run is never taken for it — and then sets
``socket_mode`` and ``socket_group`` on the file.
"""

from __future__ import annotations

from typing import Callable

from .own_listener import wait_for_own_listener

#: /proc/net/unix Flags of a listening socket (__SO_ACCEPTCON).
_ACCEPTING = 0x10000


def _listening_inodes(path: str) -> set[str]:
    """Inodes of the sockets listening on ``path``, from /proc/net/unix."""
    inodes = set()
    try:
        with open("/proc/net/unix") as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode [Path]
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & _ACCEPTING:
                    inodes.add(fields[6])
    except OSError:
        pass
    return inodes


def wait_for_unix_listener(path: str, alive: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait until this process listens on the unix socket ``path``; return whether it does.

    ``alive`` says whether libmilter still runs: once it has stopped there is nothing to wait for.
    """
    return bool(wait_for_own_listener(lambda: _listening_inodes(path), alive, timeout))
