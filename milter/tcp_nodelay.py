"""TCP_NODELAY on libmilter's listening socket, so every accepted connection has it.

libmilter writes each reply with its own ``writev``: at end of message the
signature (``SMFIR_INSHEADER``) and then ``SMFIR_CONTINUE``. With Nagle's
algorithm on, the kernel holds the second small write until the MTA has
acknowledged the first; the MTA, still waiting for the final reply, delays that
acknowledgement (40 ms on Linux). Measured through Postfix on loopback, that is
one ~40 ms stall per message, most of the milter's cost on TCP
(benchmarks/RESULTS-relay.md). Replies are complete protocol packets, never
worth holding back, so the milter turns Nagle off.

libmilter opens the socket itself and exposes no descriptor, so the listener is
found by its port among the process's own descriptors, once it listens. Linux
copies TCP_NODELAY from a listening socket to the connections it accepts.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable

from sendguard import logs

log = logs.get("milter")


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on ``port`` (any address, IPv4 and IPv6), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def _own_fds_for(inodes: set[str]) -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            fds.append(int(name))
    return fds


def set_nodelay_on_listener(port: int, alive: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait until this process listens on TCP ``port``, then set TCP_NODELAY on that socket.

    Returns whether it was set; a failure is logged and the milter runs on with Nagle on.
    ``alive`` says whether libmilter still runs: once it has stopped there is nothing to wait for.
    """
    deadline = time.monotonic() + timeout
    while True:
        fds = _own_fds_for(_listening_inodes(port))
        if fds or time.monotonic() > deadline or not alive():
            break
        time.sleep(0.02)
    if not fds:
        if not alive():
            return False  # it never listened: the caller reports why
        log.warning("TCP_NODELAY: no listening socket of this process on port %d found; replies may wait 40 ms for ACKs", port)
        return False
    for fd in fds:
        # socket.socket(fileno=dup) shares the one kernel socket; closing the dup leaves libmilter's.
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        finally:
            sock.close()
    return True
