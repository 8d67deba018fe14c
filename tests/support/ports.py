"""Free TCP ports for tests that start real listeners."""

from __future__ import annotations

import random
import socket

#: Ports handed out come from below Linux's ephemeral range (32768-60999 by default): the kernel
#: picks the local port of every outgoing connection from that range, so a port found free there
#: can be taken by some test's client connection before the test binds it.
LOW, HIGH = 20000, 32767

_rng = random.Random()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, from outside the ephemeral range."""
    for _ in range(200):
        port = _rng.randint(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port between {LOW} and {HIGH} on 127.0.0.1")
