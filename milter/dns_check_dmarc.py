"""DMARC: a policy for the From domain (its own or its organisational domain's), and DKIM alignment.

The organisational domain is the registrable domain by the Public Suffix List
that the ``publicsuffixlist`` package ships (no download at run time), as
RFC 7489 §3.2 defines it: ``send.example.net`` falls back to ``_dmarc.example.net``.
"""

from __future__ import annotations

import functools

import dns.resolver
from publicsuffixlist import PublicSuffixList

from .dns_records import Finding, LookupFailed, lookup, tags
from .settings import MilterSettings


@functools.lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    """The registrable domain of ``domain`` (itself when it is one, or when the list knows no better)."""
    return _suffixes().privatesuffix(domain) or domain


def check_dmarc(domain: str, settings: MilterSettings, resolver: dns.resolver.Resolver) -> list[Finding]:
    """The DMARC record that governs From ``domain``, its policy and reports, and whether our d= aligns."""
    org = organisational_domain(domain)
    candidates = [domain] if org == domain else [domain, org]
    found: tuple[str, str] | None = None
    for owner in candidates:
        name = f"_dmarc.{owner}"
        try:
            answer = lookup(resolver, name, "TXT")
        except LookupFailed as exc:
            return [Finding("dmarc", "fail", name, f"lookup failed: {exc}", "check the nameserver answers for the domain")]
        records = [t for t in answer.texts if t.replace(" ", "").lower().startswith("v=dmarc1")]
        if len(records) > 1:
            return [Finding("dmarc", "fail", name, f"{len(records)} DMARC records: receivers ignore them all", "keep one")]
        if records:
            found = (owner, records[0])
            break
    if found is None:
        where = " or ".join(f"_dmarc.{c}" for c in candidates)
        missing = Finding("dmarc", "fail", f"_dmarc.{org}", f"no DMARC record for From {domain} (looked at {where})",
                          f'publish TXT _dmarc.{org} "v=DMARC1; p=none; rua=mailto:dmarc-reports@{org}"')  # fmt: skip
        # Alignment still matters: it decides what the record, once published, will do to this mail.
        return [missing, *_alignment(domain, settings, "r")]
    owner, record = found
    return [*_policy(domain, owner, record), *_alignment(domain, settings, tags(record).get("adkim", "r"))]


def _policy(domain: str, owner: str, record: str) -> list[Finding]:
    name = f"_dmarc.{owner}"
    found = tags(record)
    # A subdomain without a record of its own is governed by the organisational record's sp= (else p=).
    policy = found.get("sp", found.get("p")) if owner != domain else found.get("p")
    if policy not in ("none", "quarantine", "reject"):
        return [Finding("dmarc", "fail", name, f"no valid p= in {record!r}", f"set p=none, quarantine or reject in {name}")]
    rua = found.get("rua", "")
    inherited = f" (inherited by {domain})" if owner != domain else ""
    findings = [Finding("dmarc", "ok", name, f"policy {policy}{inherited}, reports to {rua or 'nobody'}")]
    if not rua:
        findings.append(
            Finding("dmarc", "warn", name, "no rua=: nobody receives the aggregate reports that show failing mail",
                    f"add rua=mailto:dmarc-reports@{owner} to {name}")
        )  # fmt: skip
    return findings


def _alignment(domain: str, settings: MilterSettings, adkim: str) -> list[Finding]:
    row = settings.table.lookup(domain)
    if row is None:
        return [
            Finding("dmarc", "fail", domain, f"no [signing.table] row signs From {domain}: its bulk mail is refused unsigned",
                    f'add "{domain}" = "KEYNAME" to [signing.table]')
        ]  # fmt: skip
    spec = settings.key_spec(row.key)
    assert spec is not None  # the settings refuse a row without its key
    strict = adkim.lower() == "s"
    ok = spec.domain == domain if strict else organisational_domain(spec.domain) == organisational_domain(domain)
    mode = "strict" if strict else "relaxed"
    if ok:
        return [Finding("dmarc", "ok", domain, f"DKIM d={spec.domain} (key {spec.name}) aligns with From {domain} ({mode})")]
    return [
        Finding("dmarc", "fail", domain, f"DKIM d={spec.domain} (key {spec.name}) does not align with From {domain} ({mode}, adkim={adkim})",
                f"sign {domain} with a key whose domain is {domain}" + (" or set adkim=r" if strict else ""))
    ]  # fmt: skip
