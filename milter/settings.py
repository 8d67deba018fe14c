"""The ``[milter]``, ``[signing]`` and ``[links]`` sections. (Placeholder: the milter's owner fills it in.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sendguard.config import General, Section


@dataclass(frozen=True)
class MilterSettings:
    """Settings of the milter."""

    listen: str = "inet:8891@127.0.0.1"
    metrics_listen: str = "127.0.0.1:9467"


def parse_milter(top: Section, general: General, streams: list[Any]) -> MilterSettings:
    """Parse ``[milter]``, ``[signing]`` and ``[links]``."""
    for name in ("milter", "signing", "links"):
        top.sub(name)
    return MilterSettings()
