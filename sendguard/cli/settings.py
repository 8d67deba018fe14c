"""The whole configuration: the core's part, then each service's sections, then unknown keys refused.

Each service parses its own sections (``sendguard_policyd.settings``,
``sendguard_milter.settings``) from one :class:`~sendguard.config.ConfigDocument`;
this module is where they are put together, in a fixed order, so a key that
no part reads stops start-up with ``FILE: KEY: unknown key``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sendguard import config as core
from sendguard.streams import Stream
from sendguard_milter.settings import MilterSettings, parse_milter
from sendguard_policyd.settings import PolicydSettings, parse_policyd


@dataclass(frozen=True)
class Settings:
    """Everything both services run with (key files are opened by the milter, once, at its start)."""

    config: core.Config
    policyd: PolicydSettings
    milter: MilterSettings

    @property
    def file(self) -> str:
        """The config file's path, or ``<embedded defaults>``."""
        return self.config.file

    @property
    def streams(self) -> tuple[Stream, ...]:
        """The streams, in file order."""
        return self.config.streams


def _compose(doc: core.ConfigDocument) -> Settings:
    policyd = parse_policyd(doc)
    milter = parse_milter(doc)
    doc.finish()
    return Settings(config=doc.config, policyd=policyd, milter=milter)


def parse(data: dict[str, Any], file: str = core.EMBEDDED) -> Settings:
    """Validate a decoded TOML document as start-up does (key files aside)."""
    return _compose(core.parse(data, file))


def load(path: str | os.PathLike[str] | None) -> Settings:
    """Read and validate the config file at ``path``; ``None`` gives the embedded defaults."""
    return _compose(core.read(path))
