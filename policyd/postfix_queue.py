"""Postfix's hold queue, through Postfix's own commands: ``postqueue -j``, ``postsuper -H``, ``postconf -h``.

The releaser never touches queue files itself. ``postqueue -j`` (Postfix 3.1+)
lists the queue as JSON lines; ``postsuper -H QUEUEID`` moves a held message
to the deferred queue (keeping its original arrival time), and ``postqueue -i
QUEUEID`` then schedules it at once: without it the message would wait for the
next deferred-queue scan (``queue_run_delay``, 300 s by default).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

#: Seconds one Postfix command may take before the pass gives up on it.
COMMAND_TIMEOUT = 60.0

_QUEUE_ID = re.compile(r"^[0-9A-Za-z]+$")
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class PostfixError(Exception):
    """A Postfix command failed or answered nonsense: the message says which and why."""


@dataclass(frozen=True)
class QueuedMessage:
    """One message of ``postqueue -j``."""

    queue_id: str
    queue_name: str
    #: When Postfix received it (epoch seconds).
    arrival_time: float


class PostfixQueue:
    """Postfix's commands for one configuration directory ("" = Postfix's default)."""

    def __init__(self, config_dir: str = "") -> None:
        self.config_dir = config_dir

    def _run(self, *args: str) -> str:
        cmd = [args[0], *(["-c", self.config_dir] if self.config_dir else []), *args[1:]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        except FileNotFoundError:
            raise PostfixError(f"{args[0]} not found: the releaser must run on the Postfix host") from None
        except subprocess.TimeoutExpired:
            raise PostfixError(f"`{' '.join(cmd)}` did not finish in {COMMAND_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise PostfixError(f"`{' '.join(cmd)}` failed: {detail[:300]}")
        return proc.stdout

    def held(self) -> dict[str, QueuedMessage]:
        """Every message in the hold queue, by queue id."""
        out: dict[str, QueuedMessage] = {}
        for line in self._run("postqueue", "-j").splitlines():
            message = parse_json_line(line)
            if message is not None and message.queue_name == "hold":
                out[message.queue_id] = message
        return out

    def release(self, queue_id: str) -> None:
        """Let one held message go: out of the hold queue, then scheduled at once."""
        if not _QUEUE_ID.match(queue_id):
            raise PostfixError(f"{queue_id!r} is not a Postfix queue id")
        self._run("postsuper", "-H", queue_id)
        try:
            self._run("postqueue", "-i", queue_id)
        except PostfixError:
            pass  # released all the same: the next deferred-queue scan delivers it

    def lifetime(self) -> float:
        """``maximal_queue_lifetime`` in seconds."""
        return parse_postfix_time(self._run("postconf", "-h", "maximal_queue_lifetime").strip(), default_unit="d")


def parse_json_line(line: str) -> QueuedMessage | None:
    """One line of ``postqueue -j`` (None for a blank line); :class:`PostfixError` when it is not JSON."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
        return QueuedMessage(str(obj["queue_id"]), str(obj["queue_name"]), float(obj["arrival_time"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise PostfixError(f"postqueue -j printed a line that is not a queue entry: {line[:120]!r} ({exc})") from None


def parse_postfix_time(value: str, default_unit: str = "s") -> float:
    """A Postfix time value (``5d``, ``3600s``, ``10`` in ``default_unit``) in seconds."""
    m = re.fullmatch(r"(\d+)([smhdw]?)", value.strip())
    if not m:
        raise PostfixError(f"{value!r} is not a Postfix time value")
    return float(int(m.group(1)) * _TIME_UNITS[m.group(2) or default_unit])
