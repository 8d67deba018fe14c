"""The ``[policyd]`` section. (Placeholder: the policy daemon's owner fills it in.)"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sendguard.config import General, Section, check_hostport


@dataclass(frozen=True)
class PolicydSettings:
    """Settings of the policy daemon."""

    listen: str = "127.0.0.1:10040"
    metrics_listen: str = "127.0.0.1:9466"
    database: str = ""


def parse_policyd(top: Section, general: General) -> PolicydSettings:
    """Parse ``[policyd]``."""
    section = top.sub("policyd")
    listen = section.get("listen", str, "127.0.0.1:10040", check_hostport)
    metrics = section.get("metrics_listen", str, "127.0.0.1:9466", check_hostport)
    database = section.get("database", str, os.path.join(general.state_dir, "policyd.sqlite"))
    section.finish()
    return PolicydSettings(listen=listen, metrics_listen=metrics, database=database)
