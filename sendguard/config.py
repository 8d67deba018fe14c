"""The one configuration file both services share.

The file is TOML, read with :mod:`tomllib`. Every section is parsed by a
:class:`Section` reader, which checks types and refuses unknown keys, so that a
typo stops start-up instead of silently falling back to a default. Errors carry
the file, the dotted key and the reason: ``/etc/sendguard.toml: streams.trucking.ramp:
expected a list``.

Each service owns the parsing of its own sections (``sendguard_policyd.settings``,
``sendguard_milter.settings``); this module owns loading, the error type, the
``[general]`` section and the assembly of the whole :class:`Config`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

#: Where the embedded defaults keep state when no config names a directory.
DEFAULT_STATE_DIR = "/var/lib/sendguard"

_REQUIRED: Any = object()


class ConfigError(Exception):
    """A configuration problem that must stop start-up.

    ``str()`` gives ``FILE: KEY: REASON``, the one line an operator needs.
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key or '(top level)'}: {reason}")


class Section:
    """A type-checking reader over one TOML table.

    Every key read is remembered; :meth:`finish` then refuses whatever was not
    read, so an unknown or misspelt key is an error, never ignored.
    """

    def __init__(self, data: dict[str, Any], path: str, file: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"expected a table, got {_type_name(data)}")
        self.data = data
        self.path = path
        self.file = file
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        """The dotted name of ``name`` inside this section, for messages."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        """A :class:`ConfigError` about ``name`` in this section."""
        return ConfigError(self.file, self.key(name), reason)

    def has(self, name: str) -> bool:
        """Whether the key is present (and mark it as known)."""
        self._seen.add(name)
        return name in self.data

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: Any = _REQUIRED,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        """Read ``name`` as ``kind``; ``check`` returns a reason when the value is wrong."""
        self._seen.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.error(name, "is required")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; TOML keeps them apart and so do we.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"expected {_kinds_name(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.error(name, f"expected {_kinds_name(kinds)}, got {_type_name(value)}")
        if check is not None:
            reason = check(value)
            if reason:
                raise self.error(name, reason)
        return value  # type: ignore[return-value]

    def get_list(
        self,
        name: str,
        item: type[T] | tuple[type, ...],
        default: Any = _REQUIRED,
        check: Callable[[Any], str | None] | None = None,
    ) -> list[T]:
        """Read ``name`` as a list whose every item is ``item``; ``check`` runs per item."""
        value = self.get(name, list, default)
        if value is default and default is not _REQUIRED and name not in self.data:
            return list(value)
        items = item if isinstance(item, tuple) else (item,)
        for i, v in enumerate(value):
            if isinstance(v, bool) and bool not in items or not isinstance(v, items):
                raise self.error(f"{name}[{i}]", f"expected {_kinds_name(items)}, got {_type_name(v)}")
            if check is not None:
                reason = check(v)
                if reason:
                    raise self.error(f"{name}[{i}]", reason)
        return list(value)

    def sub(self, name: str, default_empty: bool = True) -> Section:
        """The sub-table ``name`` as a Section (empty when absent and allowed)."""
        self._seen.add(name)
        if name not in self.data:
            if not default_empty:
                raise self.error(name, "is required")
            return Section({}, self.key(name), self.file)
        return Section(self.data[name], self.key(name), self.file)

    def tables(self, name: str) -> list[tuple[str, Section]]:
        """The named sub-tables of table ``name``, in file order."""
        parent = self.sub(name)
        out = []
        for key in parent.data:
            parent._seen.add(key)
            out.append((key, Section(parent.data[key], parent.key(key), self.file)))
        return out

    def finish(self) -> None:
        """Refuse every key that no parser asked for."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _type_name(value: Any) -> str:
    return {
        dict: "a table",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), type(value).__name__)


def _kinds_name(kinds: tuple[type, ...]) -> str:
    names = {dict: "a table", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# -- small value checks shared by the section parsers ---------------------------------


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); raise ValueError on nonsense."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def check_parses(parse: Callable[[str], Any]) -> Callable[[str], str | None]:
    """A :meth:`Section.get` check from a parser: its ValueError's text is the reason."""

    def check(value: str) -> str | None:
        try:
            parse(value)
        except ValueError as exc:
            return str(exc)
        return None

    return check


#: A :meth:`Section.get` check for ``host:port`` strings.
check_hostport = check_parses(parse_hostport)


def check_network(value: str) -> str | None:
    """A :meth:`Section.get` check for CIDR networks (a bare address is a /32 or /128)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"{value!r} is not an IP network"
    return None


def check_one_of(*allowed: str) -> Callable[[str], str | None]:
    """A check that accepts only the listed strings."""

    def check(value: str) -> str | None:
        if value not in allowed:
            return f"{value!r} is not one of {', '.join(allowed)}"
        return None

    return check


# -- the whole file ----------------------------------------------------------------------


@dataclass(frozen=True)
class General:
    """``[general]``: what both services share."""

    state_dir: str = DEFAULT_STATE_DIR
    log_level: str = "info"


@dataclass
class Config:
    """The parsed, validated configuration of both services."""

    file: str
    general: General
    streams: list[Any] = field(default_factory=list)  # sendguard.streams.Stream
    policyd: Any = None  # sendguard_policyd.settings.PolicydSettings
    milter: Any = None  # sendguard_milter.settings.MilterSettings
    raw: dict[str, Any] = field(default_factory=dict)


def _parse_general(section: Section) -> General:
    state_dir = section.get("state_dir", str, os.environ.get("SENDGUARD_STATE_DIR", DEFAULT_STATE_DIR))
    level = section.get("log_level", str, "info", check_one_of("debug", "info", "warning", "error"))
    section.finish()
    return General(state_dir=state_dir, log_level=level)


def parse(data: dict[str, Any], file: str = "<embedded defaults>") -> Config:
    """Validate a TOML document (already decoded) into a :class:`Config`."""
    # Imported here: each service's parser imports this module for Section.
    from sendguard.streams import parse_streams
    from sendguard_milter.settings import parse_milter
    from sendguard_policyd.settings import parse_policyd

    top = Section(data, "", file)
    general = _parse_general(top.sub("general"))
    # Relative stamp and key paths are read relative to the config file.
    base = Path(file).resolve().parent if file != "<embedded defaults>" else Path.cwd()
    streams = parse_streams(top, base)
    policyd = parse_policyd(top, general)
    milter = parse_milter(top, general, streams)
    top.finish()
    return Config(file=file, general=general, streams=streams, policyd=policyd, milter=milter, raw=data)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate the config file at ``path``; ``None`` gives the embedded defaults."""
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
