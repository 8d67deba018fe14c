"""Which key signs which From domain: exact rows first, then ``*.domain`` wildcards.

The signing domain (d=) is always the key's domain, and it must align with
every From domain a row serves — d= equal to the From domain or a parent of it,
so DMARC's relaxed alignment holds without consulting the public suffix list.
A row that would sign a From domain with an unrelated d= is refused at start-up:
such a signature helps no one and hides the missing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def normalise_domain(domain: str) -> str:
    """Lower-case, strip a trailing dot, convert a Unicode domain to its ASCII (IDNA) form."""
    d = domain.strip().rstrip(".").lower()
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


@dataclass(frozen=True)
class TableRow:
    """One ``[signing.table]`` entry: ``pattern`` (``example.net`` or ``*.example.net``) → key name."""

    pattern: str
    key: str

    @property
    def wildcard(self) -> bool:
        """Whether the row serves subdomains (``*.domain``) rather than one domain."""
        return self.pattern.startswith("*.")

    @property
    def base(self) -> str:
        """The domain of the pattern without ``*.``."""
        return self.pattern[2:] if self.wildcard else self.pattern

    def matches(self, domain: str) -> bool:
        """Whether this row serves From domain ``domain`` (already normalised)."""
        if self.wildcard:
            return domain.endswith("." + self.base)
        return domain == self.pattern


def aligned(from_domain: str, signing_domain: str) -> bool:
    """DMARC-style relaxed alignment without a suffix list: d= equals the From domain or is its parent."""
    return from_domain == signing_domain or from_domain.endswith("." + signing_domain)


def alignment_problem(row: TableRow, signing_domain: str) -> str | None:
    """Why ``row`` may not be signed with d=``signing_domain`` (None when it may)."""
    if aligned(row.base, signing_domain):
        return None
    served = f"subdomains of {row.base}" if row.wildcard else row.base
    return (
        f"row {row.pattern!r} would sign From {served} with d={signing_domain}, which does not align"
        f" (d= must be the From domain or a parent of it)"
    )


@dataclass(frozen=True)
class SigningTable:
    """The rows of ``[signing.table]``, looked up exact first, then the most specific wildcard."""

    rows: tuple[TableRow, ...] = ()
    _exact: dict[str, TableRow] = field(init=False, repr=False, compare=False)
    _wild: tuple[TableRow, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "_exact", {r.pattern: r for r in self.rows if not r.wildcard})
        # Longest base first: *.send.example.net beats *.example.net.
        object.__setattr__(self, "_wild", tuple(sorted((r for r in self.rows if r.wildcard), key=lambda r: -len(r.base))))

    def lookup(self, from_domain: str) -> TableRow | None:
        """The row that serves ``from_domain``, or None."""
        domain = normalise_domain(from_domain)
        row = self._exact.get(domain)
        if row is not None:
            return row
        for row in self._wild:
            if row.matches(domain):
                return row
        return None
