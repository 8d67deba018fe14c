"""What the DNS checks share: a finding, and lookups that say why nothing came back.

Every lookup goes through one injected :class:`dns.resolver.Resolver`, so
``sendguard dns-check --nameserver`` (and the tests' own NSD) answer every
question, the SPF evaluation's included.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass

import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver

#: How long one lookup may take, retries included, seconds.
LOOKUP_LIFETIME = 5.0

#: Finding levels, best first; ``ok`` and ``info`` pass, ``warn`` and ``fail`` do not.
LEVELS = ("ok", "info", "warn", "fail")


@dataclass(frozen=True)
class Finding:
    """One result of a check: which record, how it stands, and what to do about it."""

    check: str  # dkim, dnssec, spf, dmarc, fcrdns, config
    level: str  # one of LEVELS
    record: str  # the DNS name (or config key) the finding is about
    message: str
    fix: str = ""

    @property
    def passed(self) -> bool:
        """Whether the finding lets ``dns-check`` exit 0."""
        return self.level in ("ok", "info")

    def line(self) -> str:
        """The finding as one line of text."""
        text = f"{self.level.upper():4} {self.check} {self.record}: {self.message}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def as_dict(self) -> dict[str, str]:
        """The finding as a JSON object."""
        return asdict(self)


class LookupFailed(Exception):
    """The DNS could not answer (timeout, SERVFAIL, refused): not the same as no record."""


@dataclass(frozen=True)
class Answer:
    """The records of one lookup (empty when the name or type does not exist)."""

    texts: tuple[str, ...]
    #: Whether the resolver set the AD flag: it validated the answer with DNSSEC.
    authenticated: bool


def make_resolver(nameserver: str | None) -> dns.resolver.Resolver:
    """A resolver that asks ``nameserver`` (``IP``, ``IP:PORT``, ``[IPv6]:PORT``), or the system's resolvers.

    Raises ValueError with the reason when ``nameserver`` does not parse or the system has none.
    """
    if nameserver is None:
        try:
            resolver = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise ValueError("no nameserver in /etc/resolv.conf: give one (IP[:PORT])") from None
    else:
        host, port = parse_nameserver(nameserver)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = LOOKUP_LIFETIME
    # RFC 6840 §5.7: asking with AD set gets AD back from a validating resolver, without DO.
    resolver.flags = dns.flags.RD | dns.flags.AD
    return resolver


def parse_nameserver(value: str) -> tuple[str, int]:
    """``IP[:PORT]`` (``[IPv6]:PORT`` for a v6 address with a port) as (address, port); ValueError with the reason."""
    host, port = value, "53"
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: expected [IPv6]:PORT")
        port = rest[1:] or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: {port!r} is not a port")
    return host, int(port)


def lookup(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> Answer:
    """The ``rdtype`` records at ``name`` as text (TXT strings joined); raise :class:`LookupFailed` when DNS fails."""
    try:
        answer = resolver.resolve(dns.name.from_text(name), rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return Answer((), False)
    except dns.exception.Timeout:
        raise LookupFailed(f"no answer for {name} {rdtype} within {resolver.lifetime:.0f} s") from None
    except dns.resolver.NoNameservers as exc:
        raise LookupFailed(f"{name} {rdtype}: every nameserver failed ({exc})") from None
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"{name} {rdtype}: {exc}") from None
    texts = []
    for rdata in answer:
        if rdata.rdtype == dns.rdatatype.TXT:
            texts.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        elif rdata.rdtype == dns.rdatatype.PTR:
            texts.append(rdata.target.to_text(omit_final_dot=True).lower())
        else:
            texts.append(rdata.to_text())
    authenticated = answer.response is not None and bool(answer.response.flags & dns.flags.AD)
    return Answer(tuple(texts), authenticated)


def tags(record: str) -> dict[str, str]:
    """The ``tag=value`` pairs of a DKIM or DMARC record (tags lower-cased, whitespace dropped)."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        tag, sep, value = part.partition("=")
        if sep:
            out.setdefault(tag.strip().lower(), "".join(value.split()))
    return out
