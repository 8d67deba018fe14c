"""Reading one TOML table of the config: types checked, unknown keys refused.

Every section of the file is read through a :class:`Section`, which checks
types and refuses unknown keys, so that a typo stops start-up instead of
silently falling back to a default. Errors carry the file, the dotted key and
the reason: ``/etc/sendguard.toml: streams.trucking.ramp: expected a list``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

#: The default that makes a key required (what every read without a default means).
REQUIRED: Any = object()


class ConfigError(Exception):
    """A configuration problem that must stop start-up.

    ``str()`` gives ``FILE: KEY: REASON``, the one line an operator needs.
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key or '(top level)'}: {reason}")

    def all(self) -> list[ConfigError]:
        """Every problem this error stands for (one here; several in :class:`ConfigErrors`)."""
        return [self]


class ConfigErrors(ConfigError):
    """Several problems found in one pass over the file; ``str()`` gives one ``FILE: KEY: REASON`` line each.

    Its own ``file``, ``key`` and ``reason`` are the first problem's.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = [one for e in errors for one in e.all()]
        first = self.errors[0]
        super().__init__(first.file, first.key, first.reason)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def all(self) -> list[ConfigError]:
        """Every problem, in the order found."""
        return list(self.errors)


def raise_all(errors: Sequence[ConfigError]) -> None:
    """Raise the problems found, if any: one :class:`ConfigError` alone, several as :class:`ConfigErrors`."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class ErrorCollector:
    """Gathers the problems of a whole file, so that one run reports every one of them.

    Each independent part (a stream, a service's sections, a key file) is read
    through :meth:`attempt`: its error is kept and reading goes on with the next part.
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def attempt(self, read: Callable[[], T]) -> T | None:
        """``read()``, or None when it raised a :class:`ConfigError` (kept)."""
        try:
            return read()
        except ConfigError as exc:
            self.errors.extend(exc.all())
            return None

    def raise_if_any(self) -> None:
        """Raise what was collected (see :func:`raise_all`)."""
        raise_all(self.errors)


class Section:
    """A type-checking reader over one TOML table.

    Every key read is remembered; :meth:`finish` then refuses whatever was not
    read, so an unknown or misspelt key is an error, never ignored. The value
    each read returned (the default when the key is absent) is remembered too,
    with the sub-tables read: :attr:`values` and :attr:`children` are the
    effective configuration in the file's own layout (``sendguard.effective``).
    """

    def __init__(self, data: dict[str, Any], path: str, file: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"expected a table, got {_type_name(data)}")
        self.data = data
        self.path = path
        self.file = file
        self._seen: set[str] = set()
        #: What each key read gave, in reading order (None: absent, no default).
        self.values: dict[str, Any] = {}
        #: The sub-tables read, by key.
        self.children: dict[str, Section] = {}

    def key(self, name: str) -> str:
        """The dotted name of ``name`` inside this section, for messages."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        """A :class:`ConfigError` about ``name`` in this section."""
        return ConfigError(self.file, self.key(name), reason)

    def has(self, name: str) -> bool:
        """Whether the key is present (and mark it as known; its value is taken as read)."""
        self._seen.add(name)
        if name in self.data:
            self.values[name] = self.data[name]
        return name in self.data

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: Any = REQUIRED,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        """Read ``name`` as ``kind``; ``check`` returns a reason when the value is wrong."""
        self._seen.add(name)
        if name not in self.data:
            if default is REQUIRED:
                raise self.error(name, "is required")
            self.values[name] = default
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
        self.values[name] = value
        return value  # type: ignore[return-value]

    def get_list(
        self,
        name: str,
        item: type[T] | tuple[type, ...],
        default: Any = REQUIRED,
        check: Callable[[Any], str | None] | None = None,
    ) -> list[T]:
        """Read ``name`` as a list whose every item is ``item``; ``check`` runs per item."""
        value = self.get(name, list, default)
        if value is default and default is not REQUIRED and name not in self.data:
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

    def get_path(self, name: str, base: Path, default: Any = None) -> Path | None:
        """Read ``name`` as a path, relative paths resolved against ``base`` (remembered absolute).

        Absent, it is ``default`` (None unless given; the module's required marker makes it required).
        """
        value = self.get(name, str, default)
        if value is None:
            return None
        path = resolve_path(base, value)
        self.values[name] = str(path)
        return path

    def sub(self, name: str, default_empty: bool = True) -> Section:
        """The sub-table ``name`` as a Section (empty when absent and allowed)."""
        self._seen.add(name)
        if name in self.children:
            return self.children[name]
        if name not in self.data:
            if not default_empty:
                raise self.error(name, "is required")
            child = Section({}, self.key(name), self.file)
        else:
            child = Section(self.data[name], self.key(name), self.file)
        self.children[name] = child
        return child

    def tables(self, name: str) -> list[tuple[str, Section]]:
        """The named sub-tables of table ``name``, in file order."""
        parent = self.sub(name)
        out = []
        for key in parent.data:
            parent._seen.add(key)
            if key not in parent.children:
                parent.children[key] = Section(parent.data[key], parent.key(key), self.file)
            out.append((key, parent.children[key]))
        return out

    def finish(self) -> None:
        """Refuse every key that no parser asked for."""
        raise_all([self.error(name, "unknown key") for name in sorted(set(self.data) - self._seen)])


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
