"""Reading one TOML table of the config: types checked, unknown keys refused.

Every section of the file is read through a :class:`Section`, which checks
types and refuses unknown keys, so that a typo stops start-up instead of
silently falling back to a default. Errors carry the file, the dotted key and
the reason: ``/etc/sendguard.toml: streams.trucking.ramp: expected a list``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

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


def resolve_path(base: Path, path: str) -> Path:
    """A path from the config file: relative paths are read relative to the file's folder."""
    p = Path(path)
    return p if p.is_absolute() else base / p


# -- small value checks shared by the section parsers ---------------------------------


def check_parses(parse: Callable[[str], Any]) -> Callable[[str], str | None]:
    """A :meth:`Section.get` check from a parser: its ValueError's text is the reason."""

    def check(value: str) -> str | None:
        try:
            parse(value)
        except ValueError as exc:
            return str(exc)
        return None

    return check


def check_one_of(*allowed: str) -> Callable[[str], str | None]:
    """A check that accepts only the listed strings."""

    def check(value: str) -> str | None:
        if value not in allowed:
            return f"{value!r} is not one of {', '.join(allowed)}"
        return None

    return check
