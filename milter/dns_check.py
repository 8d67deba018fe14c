"""``sendguard dns-check``: what receivers will find in the DNS for the mail sendguard signs.

For every ``[signing.keys.NAME]``: the DKIM record exists, parses and holds
the key file's public half (``dns_check_dkim``). For every stream with an
``egress_ip``: forward-confirmed reverse DNS of the address, and for each of
its ``from_domains`` SPF for the address and a DMARC policy that our d=
aligns with (``dns_check_spf``, ``dns_check_dmarc``, ``dns_check_fcrdns``).
``ok`` and ``info`` findings pass; any ``warn`` or ``fail`` makes the exit status 1.
"""

from __future__ import annotations

import json
from typing import Sequence

import dns.resolver

from sendguard.streams import Stream

from .dns_check_dkim import check_key
from .dns_check_dmarc import check_dmarc
from .dns_check_fcrdns import check_fcrdns
from .dns_check_spf import check_spf
from .dns_records import Finding
from .settings import MilterSettings


def run_checks(settings: MilterSettings, streams: Sequence[Stream], resolver: dns.resolver.Resolver) -> list[Finding]:
    """Every finding, keys first, then each stream in file order."""
    findings: list[Finding] = []
    for spec in settings.keys:
        findings.extend(check_key(spec, resolver))
    if not settings.keys:
        findings.append(Finding("config", "info", "signing.keys", "no [signing.keys.*]: no DKIM record to check"))
    for stream in streams:
        findings.extend(_check_stream(stream, settings, resolver))
    return findings


def _check_stream(stream: Stream, settings: MilterSettings, resolver: dns.resolver.Resolver) -> list[Finding]:
    rules = settings.rules_for(stream)
    key = f"streams.{stream.name}"
    if rules.egress_ip is None:
        if not rules.bulk:
            return []
        return [Finding("config", "info", f"{key}.egress_ip", f"stream {stream.name}: unset, so SPF and reverse DNS are not checked",
                        f"set streams.{stream.name}.egress_ip to the address its mail leaves from")]  # fmt: skip
    findings = [check_fcrdns(rules.egress_ip, stream.name, resolver)]
    if not rules.from_domains:
        findings.append(Finding("config", "info", f"{key}.from_domains", f"stream {stream.name}: unset, so no SPF or DMARC is checked",
                                f"list the From domains of its mail in streams.{stream.name}.from_domains"))  # fmt: skip
    for domain in rules.from_domains:
        findings.append(check_spf(domain, rules.egress_ip, stream.name, resolver))
        findings.extend(check_dmarc(domain, settings, resolver))
    return findings


def passed(findings: Sequence[Finding]) -> bool:
    """Whether every finding passes (``ok`` or ``info``)."""
    return all(f.passed for f in findings)


def render_text(findings: Sequence[Finding]) -> str:
    """One line per finding, then a summary line."""
    lines = [f.line() for f in findings]
    bad = sum(1 for f in findings if not f.passed)
    lines.append(f"# {len(findings)} findings, {bad} to fix" if bad else f"# {len(findings)} findings, all pass")
    return "\n".join(lines) + "\n"


def render_json(findings: Sequence[Finding]) -> str:
    """The findings as a JSON list of objects (check, level, record, message, fix)."""
    return json.dumps([f.as_dict() for f in findings], indent=2) + "\n"
