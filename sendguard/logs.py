"""Logging set-up shared by both services.

One line per decision, Postfix-style: the queue id first when there is one, so
``grep QUEUEID`` over the mail log and sendguard's log tells a message's story.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(name)s[%(process)d]: %(levelname)s: %(message)s"


def setup(level: str = "info", stream=None) -> None:
    """Send all sendguard logging to stderr (or ``stream``) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger("sendguard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    """The logger for one part, named ``sendguard.<name>``."""
    return logging.getLogger(f"sendguard.{name}")


def set_level(level: str) -> None:
    """Change the level of every sendguard logger (a reloaded ``log_level``)."""
    logging.getLogger("sendguard").setLevel(level.upper())
