"""SPF: does the From domain's policy authorise the stream's egress address?

Evaluated by pyspf (``include:``, ``redirect=``, macros and the lookup limit as
receivers apply them), with its DNS pointed at the resolver ``dns-check`` uses.
The From domain stands for the envelope sender here: Listmonk's bounce
address is on the same domain, and SPF aligns for DMARC only then.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Iterator

import dns.resolver
import spf

from .dns_records import Finding

#: pyspf reads dnspython's process-wide default resolver: one evaluation at a time may set it.
_default_resolver_lock = threading.Lock()


@contextlib.contextmanager
def _resolving_with(resolver: dns.resolver.Resolver) -> Iterator[None]:
    with _default_resolver_lock:
        saved = dns.resolver.default_resolver
        dns.resolver.default_resolver = resolver
        try:
            with warnings.catch_warnings():
                # pyspf calls dns.resolver.query(), which dnspython 2 keeps but marks deprecated.
                warnings.simplefilter("ignore", DeprecationWarning)
                yield
        finally:
            dns.resolver.default_resolver = saved


def check_spf(domain: str, egress_ip: str, stream: str, resolver: dns.resolver.Resolver) -> Finding:
    """Whether ``domain``'s SPF policy passes mail from ``egress_ip``."""
    with _resolving_with(resolver):
        result, explanation = spf.check2(i=egress_ip, s=f"postmaster@{domain}", h=domain, querytime=resolver.lifetime)
    subject = f"stream {stream}: SPF of {domain} for {egress_ip}"
    if result == "pass":
        return Finding("spf", "ok", domain, f"{subject}: pass")
    if result == "none":
        return Finding("spf", "fail", domain, f"{subject}: no SPF record", f'publish TXT {domain} "v=spf1 {_mechanism(egress_ip)}{egress_ip} -all"')
    if result in ("permerror", "temperror"):
        return Finding("spf", "fail", domain, f"{subject}: {result} ({explanation})", f"repair the SPF record of {domain}")
    return Finding(
        "spf", "fail", domain, f"{subject}: {result} ({explanation})",
        f"add {_mechanism(egress_ip)}{egress_ip} to the SPF record of {domain} (before its -all or ~all)",
    )  # fmt: skip


def _mechanism(ip: str) -> str:
    return "ip6:" if ":" in ip else "ip4:"
