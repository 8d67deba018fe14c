"""The effective configuration, as ``sendguard check-config`` prints it.

Defaults filled in, relative paths resolved, rules normalised: what the
services will actually run with, in TOML-like form an operator can read and
diff against the file they wrote.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
from pathlib import Path
from typing import Any, Mapping, Sequence

from sendguard.config import Config


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if v is None:
        return '""  # unset'
    if isinstance(v, enum.Enum):
        return _value(v.value)
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=str) if isinstance(v, (set, frozenset)) else list(v)
        return "[" + ", ".join(_value(i) for i in items) + "]"
    if isinstance(v, (Path, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return _value(str(v))
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    text = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _is_table(v: Any) -> bool:
    return dataclasses.is_dataclass(v) and not isinstance(v, type) or isinstance(v, dict)


def _fields(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    out = []
    for f in dataclasses.fields(obj):
        if f.name.startswith("_") or f.metadata.get("effective") is False:
            continue
        out.append((f.name, getattr(obj, f.name)))
    return out


def _table(name: str, obj: Any, lines: list[str], array: bool = False) -> None:
    scalars = [(k, v) for k, v in _fields(obj) if not _is_table(v) and not _is_table_list(v)]
    tables = [(k, v) for k, v in _fields(obj) if _is_table(v) or _is_table_list(v)]
    lines.append(f"\n[[{name}]]" if array else f"\n[{name}]")
    for key, value in scalars:
        if value is None:
            lines.append(f"# {key} = (unset)")
        elif key.endswith("_mode") and isinstance(value, int) and not isinstance(value, bool):
            lines.append(f'{key} = "{value:04o}"')
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in tables:
        if _is_table_list(value):
            for item in value:
                _table(f"{name}.{key}", item, lines, array=True)
        else:
            _table(f"{name}.{key}", value, lines)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(_is_table(i) for i in v)


def render(
    config: Config,
    sections: Sequence[tuple[str, object]],
    stream_keys: Sequence[Mapping[str, object]] = (),
) -> str:
    """The effective configuration as TOML-like text, one table per section and stream.

    ``sections`` are the services' settings (dataclasses) by table name;
    ``stream_keys`` maps stream names to what a service reads of each stream's
    table (a dataclass of its own), shown in that stream's table.
    """
    lines = [f"# effective configuration of {config.file}"]
    _table("general", config.general, lines)
    for name, settings in sections:
        _table(name, settings, lines)
    for stream in config.streams:
        fields = dict(_fields(stream))
        rule = fields.pop("rule")
        fields["ramp"] = [list(step) for step in stream.ramp]
        for keys in stream_keys:
            extra = keys.get(stream.name)
            if extra is not None:
                fields.update(_fields(extra))
        _table(f"streams.{stream.name}", fields, lines)
        lines.append(f"# match: {rule.describe()}")
    return "\n".join(lines).lstrip("\n") + "\n"
