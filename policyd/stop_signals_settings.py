"""``[stop_signals.NAME]``: the stop-signal rules in force, the built-in ones changed or added to by the config.

A table with a built-in rule's name changes only the keys it gives (``threshold
= 3`` keeps the built-in's pattern, action and duration); ``enabled = false``
turns a rule off. Any other name is a new rule and needs ``pattern``,
``threshold``, ``action`` and ``duration``. Every problem (a pattern that is
not a regular expression, an unknown action, a duration that does not parse, a
status or operator nobody sends) is reported as ``FILE: KEY: REASON``, each
rule's own, all of them at once.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

from sendguard.config import ConfigDocument
from sendguard.config_reader import REQUIRED, ConfigError, ErrorCollector, Section, check_one_of
from sendguard.timetext import format_duration, parse_duration
from sendguard_policyd.operators import BUILTIN as BUILTIN_OPERATORS
from sendguard_policyd.operators import OTHER
from sendguard_policyd.stop_signal_rules import ACTIONS, BUILTIN, DEFAULT_STATUSES, PROBLEM_STATUSES, Rule

#: ``duration`` of a pause that lasts until resumed by hand.
UNTIL_RESUMED = "until_resumed"

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_DSN = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class StopSignalSettings:
    """The rules in force (built-in ones first, in their order, then the config's new ones)."""

    rules: tuple[Rule, ...] = tuple(BUILTIN.values())

    @property
    def enabled(self) -> tuple[Rule, ...]:
        """The rules that count."""
        return tuple(r for r in self.rules if r.enabled)


def _check_pattern(value: str) -> str | None:
    if not value:
        return "cannot be empty (it would match every reply)"
    try:
        re.compile(value)
    except re.error as exc:
        return f"{value!r} is not a regular expression: {exc}"
    return None


def _check_duration(value: str) -> str | None:
    if value == UNTIL_RESUMED:
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        return f"{exc}, or {UNTIL_RESUMED!r}"
    return None


def _check_operator(known: Collection[str]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value and value not in known:  # "": any operator
            return f"{value!r} is not a receiving operator (known: {', '.join(sorted(known))})"
        return None

    return check


def _check_dsn(value: str) -> str | None:
    return None if not value or _DSN.fullmatch(value) else f"{value!r} is not an enhanced status code like 5.7.1"


def _between(low: int, high: int) -> Callable[[int], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _rule(name: str, section: Section, known_operators: Collection[str]) -> Rule:
    """One rule; every key's problem is raised at once (a ConfigErrors)."""
    base = BUILTIN.get(name)
    if base is None and not _NAME.fullmatch(name):
        raise ConfigError(section.file, section.path, "a rule's name is lower-case letters, digits, '_' and '-'")
    errors = ErrorCollector()

    def read(key: str, kind: type, default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
        # A new rule has no default: the key is required. Each key's problem is kept, and reading goes on.
        return errors.attempt(lambda: section.get(key, kind, default if base is not None else REQUIRED, check))

    pattern = read("pattern", str, base and base.pattern, _check_pattern)
    threshold = read("threshold", int, base and base.threshold, _between(1, 100000))
    action = read("action", str, base and base.action, check_one_of(*ACTIONS))
    duration = read("duration", str, _duration_text(base), _check_duration)
    operator = errors.attempt(lambda: section.get("operator", str, base.operator if base else "", _check_operator(known_operators)))
    dsn = errors.attempt(lambda: section.get("dsn", str, base.dsn if base else "", _check_dsn))
    statuses = errors.attempt(lambda: _statuses(section, base))
    step_back = errors.attempt(
        lambda: section.get("step_back_days", int, base.step_back_days if base else 0, _between(0, 365))
    )
    enabled = errors.attempt(lambda: section.get("enabled", bool, base.enabled if base else True))
    errors.attempt(section.finish)
    errors.raise_if_any()
    fields = dict(
        pattern=pattern, threshold=threshold, action=action,
        duration=None if duration == UNTIL_RESUMED else parse_duration(duration), operator=operator, dsn=dsn,
        statuses=statuses, step_back_days=step_back, enabled=enabled,
    )  # fmt: skip
    if base is not None:
        return dataclasses.replace(base, **fields)
    return Rule(name, **fields)


def _statuses(section: Section, base: Rule | None) -> tuple[str, ...]:
    default = list(base.statuses if base else DEFAULT_STATUSES)
    statuses = section.get_list("status", str, default, check_one_of(*PROBLEM_STATUSES))
    if not statuses:
        raise section.error("status", f"cannot be empty (one or more of {', '.join(PROBLEM_STATUSES)})")
    return tuple(dict.fromkeys(statuses))


def _duration_text(base: Rule | None) -> str:
    if base is None or base.duration is None:
        return UNTIL_RESUMED
    return format_duration(base.duration)


def known_operators(data: Mapping[str, Any]) -> set[str]:
    """The receiving operators a rule or a pause may name in the config file ``data``: the built-in ones,
    ``[operators.NAME]``'s (whatever their keys: the watcher's settings check those), and "other"."""
    configured = data.get("operators", {})
    return {*BUILTIN_OPERATORS, *(configured if isinstance(configured, dict) else ()), OTHER}


def parse_stop_signals(doc: ConfigDocument) -> StopSignalSettings:
    """Parse ``[stop_signals.*]`` onto the built-in rules; raise every problem found."""
    errors = ErrorCollector()
    operators = known_operators(doc.top.data)
    changed: dict[str, Rule] = {}
    for name, section in doc.top.tables("stop_signals"):
        rule = errors.attempt(lambda name=name, section=section: _rule(name, section, operators))
        if rule is not None:
            changed[name] = rule
    errors.raise_if_any()
    rules = [changed.pop(name, rule) for name, rule in BUILTIN.items()]
    return StopSignalSettings(rules=(*rules, *changed.values()))
