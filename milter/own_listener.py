"""libmilter's listening socket, found among this process's own descriptors.

libmilter opens its listener itself, in its own thread, and exposes no
descriptor. What the kernel shows instead: the listening sockets' inodes (in
/proc/net/tcp, tcp6 or unix) and, for each of this process's descriptors, the
inode it refers to. A socket of another process (or a stale socket file of an
earlier run) is never taken for ours.
"""

from __future__ import annotations

import os
import time
from typing import Callable


def own_fds_for(inodes: set[str]) -> list[int]:
    """This process's descriptors that refer to one of the socket ``inodes``."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            fds.append(int(name))
    return fds


def wait_for_own_listener(inodes: Callable[[], set[str]], alive: Callable[[], bool], timeout: float) -> list[int]:
    """Poll until this process holds one of the listening sockets ``inodes()`` names; return its descriptors.

    Empty when the time is up or ``alive()`` says libmilter stopped (then there is nothing to wait for).
    """
    deadline = time.monotonic() + timeout
    while True:
        fds = own_fds_for(inodes())
        if fds or time.monotonic() > deadline or not alive():
            return fds
        time.sleep(0.02)
