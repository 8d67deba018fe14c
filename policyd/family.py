"""The Yahoo / Verizon-Media family: recipient domains that are held, never mailed (brief, incident 4).

An entry is either a domain, which also covers its subdomains
(``att.net`` holds ``bob@att.net`` and ``bob@mail.att.net``), or a
``label.*`` pattern, which covers that label in front of any country or
generic suffix (``yahoo.*`` holds yahoo.com, yahoo.fr, yahoo.co.uk,
yahoo.com.br, and their subdomains, but not ``yahoo.example.net``).
"""

from __future__ import annotations

from typing import Iterable

#: The family as the brief lists it, plus AOL's other free-mail domains.
BUILTIN_FAMILY: tuple[str, ...] = (
    "yahoo.*",
    "ymail.com",
    "rocketmail.com",
    "aol.*",
    "aim.com",
    "love.com",
    "games.com",
    "wow.com",
    "ygm.com",
    "att.net",
    "sbcglobal.net",
    "bellsouth.net",
    "pacbell.net",
    "ameritech.net",
    "swbell.net",
    "flash.net",
    "nvbell.net",
    "prodigy.net",
    "snet.net",
    "wans.net",
    "verizon.net",
    "frontier.com",
    "frontiernet.net",
    "netscape.net",
    "compuserve.com",
    "cs.com",
    "wmconnect.com",
    "rogers.com",
)

# The second-level labels that countries put under their code (co.uk, com.br, ne.jp ...).
# Without a public suffix list, "label.<sld>.<cc>" is a country domain only for these.
_COUNTRY_SECOND_LEVELS = frozenset(
    {"co", "com", "net", "org", "ne", "or", "ac", "gov", "edu", "gen", "ltd", "plc", "web", "nom", "gob", "biz"}
)


#: Recipient domains whose answer is remembered (the memo is emptied when full).
CACHE_SIZE = 8192


class FamilyMatcher:
    """Tells whether a recipient address belongs to the held family, and by which rule."""

    def __init__(self, entries: Iterable[str] = BUILTIN_FAMILY) -> None:
        self.domains: frozenset[str] = frozenset()
        self.brands: frozenset[str] = frozenset()
        domains, brands = set(), set()
        for entry in entries:
            entry = entry.strip().lower().rstrip(".")
            if entry.endswith(".*"):
                brands.add(entry[:-2])
            elif entry:
                domains.add(entry)
        self.domains = frozenset(domains)
        self.brands = frozenset(brands)
        # Answers by domain as written: a campaign repeats a few domains endlessly.
        self._cache: dict[str, str | None] = {}

    @classmethod
    def with_extra(cls, extra: Iterable[str]) -> FamilyMatcher:
        """The built-in family plus ``extra`` entries from the config."""
        return cls((*BUILTIN_FAMILY, *extra))

    def rule_for_domain(self, domain: str) -> str | None:
        """The family rule (``"att.net"`` or ``"yahoo.*"``) that covers ``domain``, or None."""
        labels = domain.strip().lower().rstrip(".").split(".")
        n = len(labels)
        for i in range(n):
            if ".".join(labels[i:]) in self.domains:
                return ".".join(labels[i:])
            if labels[i] in self.brands:
                rest = n - i - 1
                if rest == 1 or (rest == 2 and labels[i + 1] in _COUNTRY_SECOND_LEVELS and len(labels[i + 2]) == 2):
                    return labels[i] + ".*"
        return None

    def rule_for(self, address: str) -> str | None:
        """The family rule covering a recipient address's domain, or None (no domain: None)."""
        at = address.rfind("@")
        if at < 0:
            return None
        domain = address[at + 1 :]
        try:
            return self._cache[domain]
        except KeyError:
            pass
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        rule = self._cache[domain] = self.rule_for_domain(domain)
        return rule
