"""The ``[links]`` config table: how the milter treats links (docs/links.md).

::

    [links]
    mode = "strip"                     # strip | report-only | off
    per_subscriber_params = ["lp"]     # added to the built-in dot, npi, clia
    strip_all_markers = true           # false: strip only on per-subscriber links (the old rule)
    max_message_bytes = 33554432
    max_part_bytes = 4194304
    max_depth = 10
    max_parts = 500

A stream may override only the mode (``[streams.NAME] links = "off"``);
:meth:`LinkPolicy.with_mode` applies it.
"""

from __future__ import annotations

import re

from sendguard.config_reader import Section, check_one_of

from .rewrite import BUILTIN_PARAMS, LinkPolicy

#: What ``[links] mode`` and a stream's ``links`` may say.
LINK_MODES = ("strip", "report-only", "off")

_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.\-\[\]]+$")


def _check_param(name: str) -> str | None:
    if not _PARAM_NAME.match(name):
        return f"{name!r} is not a query parameter name (letters, digits, _ . - [ ] only)"
    return None


def _at_least(low: int):
    def check(value: int) -> str | None:
        return None if value >= low else f"must be at least {low}"

    return check


def parse_links(section: Section) -> LinkPolicy:
    """Read ``[links]`` into a :class:`LinkPolicy`; unknown keys stop start-up."""
    defaults = LinkPolicy()
    mode = section.get("mode", str, defaults.mode, check_one_of(*LINK_MODES))
    extra = section.get_list("per_subscriber_params", str, [], _check_param)
    params: list[str] = list(BUILTIN_PARAMS)
    for name in extra:
        if name.lower() not in params:
            params.append(name.lower())
    strip_all = section.get("strip_all_markers", bool, defaults.strip_all_markers)
    max_message = section.get("max_message_bytes", int, defaults.max_message_bytes, _at_least(1024))
    max_part = section.get("max_part_bytes", int, defaults.max_part_bytes, _at_least(1024))
    max_depth = section.get("max_depth", int, defaults.max_depth, _at_least(1))
    max_parts = section.get("max_parts", int, defaults.max_parts, _at_least(1))
    if max_part > max_message:
        raise section.error("max_part_bytes", f"{max_part} is larger than max_message_bytes {max_message}")
    section.finish()
    return LinkPolicy(
        mode=mode,
        per_subscriber_params=tuple(params),
        strip_all_markers=strip_all,
        max_message_bytes=max_message,
        max_part_bytes=max_part,
        max_depth=max_depth,
        max_parts=max_parts,
    )
