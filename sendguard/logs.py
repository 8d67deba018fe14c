"""Logging set-up shared by both services.

One line per decision, Postfix-style: the queue id first when there is one, so
``grep QUEUEID`` over the mail log and sendguard's log tells a message's story.
"""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(name)s[%(process)d]: %(levelname)s: %(message)s"


class LineFormatter(logging.Formatter):
    """The standard line format, with the date and time rendered once per second.

    A busy policy daemon logs thousands of lines a second; ``time.strftime`` for
    each of them was a quarter of the cost of a line.
    """

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """``YYYY-MM-DD HH:MM:SS,mmm`` in local time, as :class:`logging.Formatter` writes it."""
        second = int(record.created)
        if second != self._second:
            # Two threads may both render a new second: each writes the same text, so no lock.
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return "%s,%03d" % (self._stamp, record.msecs)


def setup(level: str = "info", stream=None) -> None:
    """Send all sendguard logging to stderr (or ``stream``) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter())
    root = logging.getLogger("sendguard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    """The logger for one part, named ``sendguard.<name>``."""
    return logging.getLogger(f"sendguard.{name}")
