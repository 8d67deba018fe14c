"""A domain's mail exchangers, looked up in the background: the Yahoo family by MX, and the receiving operator.

Domains whose MX is Yahoo's (``*.yahoodns.net``) are in the family (brief,
incident 4); the same cached answer names the domain's receiving operator for
per-operator pauses (``Operators.of_mx``, recipient_operators.py): one lookup
per domain serves both.

A DNS lookup takes milliseconds to seconds, far more than a decision may, so
nothing here ever waits for DNS on the event loop. :meth:`MxFamily.status` and
:meth:`MxFamily.exchanges` answer from a cache at once and, for a domain not
seen yet, start a lookup in a small thread pool and answer "unknown". The daemon asks at RCPT
and again at END-OF-MESSAGE (after the DATA transfer, by when the lookup has
usually finished): a message to a Yahoo-hosted domain is held there. The first
message to such a domain can still pass when DNS is slower than the whole
DATA phase; later ones are held from RCPT on.

Answers are kept for :data:`TTL` seconds, failures (timeouts, SERVFAIL) for
:data:`FAILURE_TTL`, and the cache is bounded.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from sendguard import logs

log = logs.get("policyd")

#: The MX host suffix that marks a Yahoo-hosted domain.
YAHOO_MX_SUFFIX = ".yahoodns.net"
#: Seconds a lookup's answer is kept.
TTL = 3600.0
#: Seconds a failed lookup is kept before it is tried again.
FAILURE_TTL = 300.0
#: Seconds one lookup may take in all.
LOOKUP_TIMEOUT = 2.0
#: Domains remembered at most (the cache is emptied when full: lookups are cheap to redo).
CACHE_SIZE = 50000

RULE = "mx *.yahoodns.net"
#: The DNS port of a nameserver given without one.
DNS_PORT = 53


def parse_nameserver(value: str) -> tuple[str, int]:
    """``"IP"`` or ``"IPv4:PORT"`` (``family_mx_nameservers``) as (address, port); ValueError says what is wrong.

    An IPv6 address is taken whole: its colons leave no room for a port.
    """
    host, sep, port = value.rpartition(":") if value.count(":") == 1 else ("", "", "")
    address = host if sep else value
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (or IPv4:PORT)") from None
    if not sep:
        return address, DNS_PORT
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r}: {port!r} is not a port")
    return address, int(port)


#: What a lookup gives: the domain's MX hosts, most preferred first (none: NXDOMAIN or no MX), or
#: None when it failed.
Exchanges = tuple[str, ...]


def _resolver_lookup(nameservers: tuple[str, ...]) -> Callable[[str], Sequence[str] | None]:
    """A function ``domain -> MX hosts`` (most preferred first; None on failure) using dnspython."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        hosts, ports = [], set()
        for server in nameservers:
            host, port = parse_nameserver(server)
            hosts.append(host)
            ports.add(port)
        resolver.nameservers = hosts
        # dnspython has one port for all its nameservers: mixed ports fall back to the standard one.
        resolver.port = ports.pop() if len(ports) == 1 else DNS_PORT
    resolver.lifetime = LOOKUP_TIMEOUT

    def lookup(domain: str) -> Exchanges | None:
        try:
            answer = resolver.resolve(domain, "MX")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except dns.exception.DNSException as exc:
            log.warning("MX lookup for %s failed: %s; not treated as yahoo family, its operator not known, for %.0f s",
                        domain, exc, FAILURE_TTL)  # fmt: skip
            return None
        ranked = sorted(answer, key=lambda r: r.preference)
        return tuple(r.exchange.to_text().rstrip(".").lower() for r in ranked)

    return lookup


def is_yahoo(exchanges: Sequence[str]) -> bool:
    """Whether any of a domain's MX hosts is Yahoo's."""
    return any(ex.endswith(YAHOO_MX_SUFFIX) for ex in exchanges)


class MxFamily:
    """Non-blocking, cached MX lookups: "is this domain's mail handled by Yahoo?" and "by which hosts?"."""

    def __init__(
        self,
        nameservers: tuple[str, ...] = (),
        lookup: Callable[[str], Sequence[str] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup or _resolver_lookup(nameservers)
        self._clock = clock
        # domain -> (exchanges or None for a failed lookup, is Yahoo's, expiry)
        self._cache: dict[str, tuple[Exchanges | None, bool, float]] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sendguard-mx")

    def _known(self, domain: str) -> tuple[Exchanges | None, bool] | None:
        """The cached answer for ``domain``, or None (not known yet: a lookup is started)."""
        now = self._clock()
        hit = self._cache.get(domain)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        with self._lock:
            if domain not in self._pending:
                self._pending.add(domain)
                self._pool.submit(self._run, domain)
        return None

    def status(self, domain: str) -> bool | None:
        """True: Yahoo-hosted; False: not; None: not known yet (a lookup is started) or it failed."""
        domain = domain.strip().lower().rstrip(".")
        if not domain:
            return False
        known = self._known(domain)
        if known is None or known[0] is None:
            return None
        return known[1]

    def exchanges(self, domain: str) -> Exchanges | None:
        """The domain's MX hosts, most preferred first (none: it has no MX); None: not known yet
        (a lookup is started) or the lookup failed."""
        domain = domain.strip().lower().rstrip(".")
        if not domain:
            return ()
        known = self._known(domain)
        return None if known is None else known[0]

    def _run(self, domain: str) -> None:
        try:
            found = self._lookup(domain)
            result = None if found is None else tuple(h.strip().lower().rstrip(".") for h in found)
        except Exception as exc:  # a lookup must never take the daemon down
            log.warning("MX lookup for %s failed: %s", domain, exc)
            result = None
        ttl = TTL if result is not None else FAILURE_TTL
        yahoo = result is not None and is_yahoo(result)
        with self._lock:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[domain] = (result, yahoo, self._clock() + ttl)
            self._pending.discard(domain)
        if yahoo:
            log.info("MX of %s is Yahoo's (%s): its recipients are held as yahoo family", domain, YAHOO_MX_SUFFIX)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no lookup is running (for tests and shutdown); True when idle."""
        deadline = self._clock() + timeout
        while self._pending:
            if self._clock() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Stop the lookup threads (running lookups end within LOOKUP_TIMEOUT)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
