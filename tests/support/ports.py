"""Free TCP ports for tests that start real listeners, and waiting until one listens."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from typing import Callable

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


def wait_listening(port: int, proc: subprocess.Popen, exit_detail: Callable[[], str], timeout: float = 20.0) -> None:
    """Return once something accepts on 127.0.0.1:``port``.

    Fails at once if ``proc`` (the server being started) exits first, with
    ``exit_detail()`` (its log, say) in the message, and after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited: {exit_detail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port} after {timeout} s: {exit_detail()}")
