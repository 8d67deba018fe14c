"""The one configuration file both services share: loading it, ``[general]`` and ``[streams]``.

The file is TOML, read with :mod:`tomllib` and checked table by table through
:class:`~sendguard.config_reader.Section` readers. This module reads what every
part shares; each service parses its own sections from the same
:class:`ConfigDocument` (``sendguard_policyd.settings``,
``sendguard_milter.settings``), and whoever composes the services — the CLI —
calls :meth:`ConfigDocument.finish` once all have read, so a key nobody asked
for stops start-up: ``/etc/sendguard.toml: streams.trucking.ramps: unknown key``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sendguard.config_reader import ConfigError, ErrorCollector, Section, check_one_of, resolve_path
from sendguard.streams import Stream, parse_streams

#: Where the embedded defaults keep state when no config names a directory.
DEFAULT_STATE_DIR = "/var/lib/sendguard"
#: The file name reported for the embedded defaults (no file at all).
EMBEDDED = "<embedded defaults>"


@dataclass(frozen=True)
class General:
    """``[general]``: what both services share."""

    state_dir: str = DEFAULT_STATE_DIR
    log_level: str = "info"


@dataclass(frozen=True)
class Config:
    """What every part reads of the file: where it is, ``[general]`` and the streams."""

    file: str
    #: Relative paths in the file (stamps, keys) are read relative to this folder.
    base_dir: Path
    general: General
    streams: tuple[Stream, ...] = ()

    def resolve(self, path: str) -> Path:
        """``path`` from the file, made absolute against :attr:`base_dir`."""
        return resolve_path(self.base_dir, path)


@dataclass
class ConfigDocument:
    """A config file being read: the shared part parsed, the services' sections waiting for them."""

    config: Config
    #: The whole file; each service reads its own sections from it.
    top: Section
    #: Each ``[streams.NAME]`` table, for the services' per-stream keys.
    stream_tables: dict[str, Section]
    #: The problems found so far; every part goes on reading past another's error.
    errors: ErrorCollector = field(default_factory=ErrorCollector)

    def finish(self) -> None:
        """Refuse every key no parser read, and raise every problem found (once every service has parsed).

        After a part failed, keys it had not come to yet would look unknown, so
        unknown keys are only looked for when every part read its sections.
        """
        if not self.errors.errors:
            for table in self.stream_tables.values():
                self.errors.attempt(table.finish)
            self.errors.attempt(self.top.finish)
        self.errors.raise_if_any()


def _parse_general(section: Section) -> General:
    state_dir = section.get("state_dir", str, os.environ.get("SENDGUARD_STATE_DIR", DEFAULT_STATE_DIR))
    level = section.get("log_level", str, "info", check_one_of("debug", "info", "warning", "error"))
    section.finish()
    return General(state_dir=state_dir, log_level=level)


def parse(data: dict[str, Any], file: str = EMBEDDED) -> ConfigDocument:
    """Validate the shared part of a decoded TOML document; the services' sections stay open.

    Problems are collected in the document's ``errors``, not raised:
    :meth:`ConfigDocument.finish` raises them all.
    """
    errors = ErrorCollector()
    top = Section(data, "", file)
    general = errors.attempt(lambda: _parse_general(top.sub("general"))) or General()
    base = Path(file).resolve().parent if file != EMBEDDED else Path.cwd()
    streams, tables = parse_streams(top, base, errors)
    config = Config(file=file, base_dir=base, general=general, streams=streams)
    return ConfigDocument(config, top, tables, errors)


def read(path: str | os.PathLike[str] | None) -> ConfigDocument:
    """Read the config file at ``path`` (``None``: the embedded defaults) and parse the shared part."""
    if path is None:
        return parse({})
    file = str(path)
    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except PermissionError:
        raise ConfigError(file, "", "permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
    return parse(data, file)
