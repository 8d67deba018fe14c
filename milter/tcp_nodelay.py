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
from typing import Callable

from sendguard import logs

from .own_listener import wait_for_own_listener

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


def set_nodelay_on_listener(port: int, alive: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait until this process listens on TCP ``port``, then set TCP_NODELAY on that socket.

    Returns whether it was set; a failure is logged and the milter runs on with Nagle on.
    ``alive`` says whether libmilter still runs: once it has stopped there is nothing to wait for.
    """
    fds = wait_for_own_listener(lambda: _listening_inodes(port), alive, timeout)
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
