"""The whole configuration: the core's part, then each service's sections, then unknown keys refused.

Each service parses its own sections (``sendguard_policyd.settings``,
``sendguard_milter.settings``) from one :class:`~sendguard.config.ConfigDocument`;
this module is where they are put together, in a fixed order, so a key that
no part reads stops start-up with ``FILE: KEY: unknown key``. A problem in
one part (a stream, a service's sections) does not stop the others from being
read: :class:`~sendguard.config_reader.ConfigErrors` carries every problem found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sendguard import config as core
from sendguard.config_reader import ConfigError, Section
from sendguard.streams import Stream
from sendguard_milter.keys import KeyLoadError, load_key
from sendguard_milter.settings import MilterSettings, parse_milter
from sendguard_policyd.dmarc.settings import DmarcSettings, parse_dmarc
from sendguard_policyd.listmonk.settings import ListmonkSettings, parse_listmonk
from sendguard_policyd.settings import PolicydSettings, parse_policyd
from sendguard_policyd.stop_signals_settings import StopSignalSettings, parse_stop_signals


@dataclass(frozen=True)
class Settings:
    """Everything both services run with (key files are opened by the milter, once, at its start)."""

    config: core.Config
    policyd: PolicydSettings
    milter: MilterSettings
    #: ``[listmonk.NAME]``: the Listmonk instances told their stream's cap.
    listmonk: tuple[ListmonkSettings, ...] = ()
    #: The file as every part read it (values and defaults): what ``check-config`` prints.
    source: Section = field(default_factory=lambda: Section({}, "", core.EMBEDDED), compare=False, repr=False)
    #: ``[stop_signals.*]``: the rules that pause a stream (read by the watcher's consumers).
    stop_signals: StopSignalSettings = field(default_factory=StopSignalSettings)
    #: ``[dmarc]``: where the DMARC aggregate reports are read from.
    dmarc: DmarcSettings = field(default_factory=DmarcSettings)

    @property
    def file(self) -> str:
        """The config file's path, or ``<embedded defaults>``."""
        return self.config.file

    @property
    def streams(self) -> tuple[Stream, ...]:
        """The streams, in file order."""
        return self.config.streams


def _check_key_files(file: str, milter: MilterSettings) -> list[ConfigError]:
    problems = []
    for spec in milter.keys:
        try:
            load_key(spec)
        except KeyLoadError as exc:
            problems.append(ConfigError(file, f"signing.keys.{spec.name}.{exc.field}", str(exc)))
    return problems


def _compose(doc: core.ConfigDocument, check_keys: bool = False) -> Settings:
    # Each service reads on past the other's error, so one run reports every problem.
    policyd = doc.errors.attempt(lambda: parse_policyd(doc))
    milter = doc.errors.attempt(lambda: parse_milter(doc))
    stop_signals = doc.errors.attempt(lambda: parse_stop_signals(doc))
    listmonk = parse_listmonk(doc)  # collects its own problems, one per table
    dmarc = doc.errors.attempt(lambda: parse_dmarc(doc))
    if check_keys and milter is not None:
        doc.errors.errors.extend(_check_key_files(doc.config.file, milter))
    doc.finish()  # raises every problem collected
    assert policyd is not None and milter is not None and stop_signals is not None and dmarc is not None
    return Settings(
        config=doc.config, policyd=policyd, milter=milter, listmonk=listmonk, source=doc.top, stop_signals=stop_signals,
        dmarc=dmarc,
    )


def parse(data: dict[str, Any], file: str = core.EMBEDDED) -> Settings:
    """Validate a decoded TOML document as start-up does (key files aside)."""
    return _compose(core.parse(data, file))


def load(path: str | os.PathLike[str] | None, check_keys: bool = False) -> Settings:
    """Read and validate the config file at ``path``; ``None`` gives the embedded defaults.

    With ``check_keys`` every key file is also read and checked as the milter's
    start does (and its problems reported with the rest); the keys are not kept.
    """
    return _compose(core.read(path), check_keys)
