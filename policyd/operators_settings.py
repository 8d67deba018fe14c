"""``[operators.NAME]``: receiving operators added to the built-in ones (google, microsoft, yahoo).

::

    [operators.ovh]
    hosts = [".mail.ovh.net"]        # receiving hosts: ".suffix" covers every name under it
    domains = ["ovh.fr"]             # recipient domains (and their subdomains), when no host is known

A configured name is tried before the built-ins, and a configured built-in name
(``[operators.google]``) replaces the built-in rule. The name is a metric label:
lower-case letters, digits, ``-`` and ``_``; ``other`` is reserved for mail no
operator covers.
"""

from __future__ import annotations

import re

from sendguard.config import ConfigDocument
from sendguard.config_reader import ConfigError, Section
from sendguard_policyd.operators import OTHER, OperatorRule

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_HOST = re.compile(r"\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?", re.I)


def _check_host(value: str) -> str | None:
    if not _HOST.fullmatch(value.strip()):
        return f"{value!r} is not a host name or a .suffix pattern (like \".mail.example.net\")"
    return None


def _check_domain(value: str) -> str | None:
    if value.strip().startswith(".") or not _HOST.fullmatch(value.strip()):
        return f"{value!r} is not a domain (like \"example.net\"; it covers its subdomains too)"
    return None


def parse_operators(doc: ConfigDocument) -> dict[str, OperatorRule]:
    """Parse every ``[operators.NAME]`` table; each one's problems are collected, all reported."""
    rules: dict[str, OperatorRule] = {}
    for name, table in doc.top.tables("operators"):

        def read(name: str = name, table: Section = table) -> OperatorRule:
            if not _NAME.fullmatch(name) or name == OTHER:
                raise ConfigError(
                    table.file, table.path,
                    f"{name!r} cannot name an operator (a metric label: a-z, 0-9, '-', '_', at most 32; not {OTHER!r})",
                )  # fmt: skip
            hosts = table.get_list("hosts", str, [], _check_host)
            domains = table.get_list("domains", str, [], _check_domain)
            table.finish()
            if not hosts and not domains:
                raise table.error("hosts", "an operator needs hosts or domains (or both) to be recognised by")
            return OperatorRule(tuple(h.strip().lower() for h in hosts), tuple(d.strip().lower() for d in domains))

        rule = doc.errors.attempt(read)
        if rule is not None:
            rules[name] = rule
    return rules
