"""Forward-confirmed reverse DNS of an egress address: its PTR name resolves back to it.

Gmail, Microsoft and Yahoo all reject or junk mail from an address without
one; the PTR is set at the address's provider, the A/AAAA in the domain's zone.
"""

from __future__ import annotations

import ipaddress

import dns.resolver
import dns.reversename

from .dns_records import Finding, LookupFailed, lookup


def check_fcrdns(ip: str, stream: str, resolver: dns.resolver.Resolver) -> Finding:
    """Whether a PTR name of ``ip`` has an A (AAAA for IPv6) record back to ``ip``."""
    address = ipaddress.ip_address(ip)
    reverse = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
    rdtype = "AAAA" if address.version == 6 else "A"
    try:
        names = lookup(resolver, reverse, "PTR").texts
    except LookupFailed as exc:
        return Finding("fcrdns", "fail", reverse, f"stream {stream}: lookup failed: {exc}", "check the nameserver answers for the reverse zone")
    if not names:
        return Finding(
            "fcrdns", "fail", reverse, f"stream {stream}: no PTR record for {ip}",
            f"have the provider of {ip} set its PTR to a host name whose {rdtype} record is {ip}",
        )  # fmt: skip
    seen: list[str] = []
    for name in names:
        try:
            forward = lookup(resolver, name, rdtype).texts
        except LookupFailed as exc:
            seen.append(f"{name}: {exc}")
            continue
        if any(ipaddress.ip_address(a) == address for a in forward):
            return Finding("fcrdns", "ok", reverse, f"stream {stream}: {ip} -> {name} -> {ip}")
        seen.append(f"{name} {rdtype} {', '.join(forward) or 'none'}")
    return Finding(
        "fcrdns", "fail", reverse, f"stream {stream}: PTR of {ip} does not resolve back to it ({'; '.join(seen)})",
        f"add {rdtype} {names[0]} -> {ip}, or point the PTR at a name that has it",
    )  # fmt: skip
