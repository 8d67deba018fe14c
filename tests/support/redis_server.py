"""A real ``redis-server`` for tests and benchmarks: loopback only, no persistence, its own temp dir.

It can be stopped and started again on the same port, as an operator
restarting Redis under running daemons would.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ports import free_port, wait_listening


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, started by :meth:`start`, stopped by :meth:`stop`."""

    def __init__(self, directory: Path, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        found = shutil.which("redis-server")
        assert found, "redis-server is not installed (scripts/bootstrap.sh installs it)"
        self.command = found
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        #: More redis-server options (``--user ...``, say).
        self.extra_args = extra_args
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The URL the store connects with."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on the same port as before, if it ran before) and wait until it listens."""
        log = self.directory / "redis.log"
        self.proc = subprocess.Popen(
            [
                self.command, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--logfile", str(log), "--protected-mode", "yes",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        proc = self.proc
        wait_listening(self.port, proc, lambda: _tail(log) + (proc.stderr.read().decode() if proc.stderr else ""))

    def stop(self) -> None:
        """Stop the server (SIGTERM; nothing is saved) and wait until it has gone."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


def _tail(path: Path) -> str:
    try:
        return path.read_text()[-2000:]
    except OSError:
        return ""
