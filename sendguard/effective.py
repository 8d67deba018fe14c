"""The effective configuration, as ``sendguard check-config`` prints it: TOML in the config's own layout.

Every key the services read is printed with the value they run with —
defaults filled in, relative paths made absolute — from what the
:class:`~sendguard.config_reader.Section` readers remembered while parsing.
Being the same layout as the file, the output reads back: ``sendguard
check-config <(sendguard check-config FILE)`` passes and prints the same text.
A key with no value (unset, no default) is a comment.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Mapping

from sendguard.config_reader import Section

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: What a TOML basic string must escape (control characters other than tab, DEL, quote, backslash).
_ESCAPE = re.compile(r'[\x00-\x08\x0a-\x1f\x7f"\\]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f"}

HEADER = "# effective configuration: every key sendguard reads, defaults filled in, paths absolute"


def _string(text: str) -> str:
    return '"' + _ESCAPE.sub(lambda m: _SHORT.get(m.group(), f"\\u{ord(m.group()):04x}"), text) + '"'


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _string(name)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(i)}" for k, i in v.items()) + "}"
    return _string(str(v))


def _table(path: tuple[str, ...], section: Section, lines: list[str], notes: Mapping[tuple[str, ...], str]) -> None:
    values = [(k, v) for k, v in section.values.items() if k not in section.children]
    note = notes.get(path)
    if path and (values or note or not section.children):
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
    if note:
        lines.append(f"# {note}")
    for key, value in values:
        lines.append(f"# {key}: unset" if value is None else f"{_key(key)} = {_value(value)}")
    for name, child in section.children.items():
        _table((*path, name), child, lines, notes)


def render(top: Section, notes: Mapping[tuple[str, ...], str] | None = None) -> str:
    """The effective configuration as TOML, from the top-level Section after every part has parsed it.

    ``notes`` adds a comment under a table, by its key path (e.g. a stream's match rule in words).
    """
    lines = [HEADER]
    _table((), top, lines, notes or {})
    return "\n".join(lines) + "\n"
