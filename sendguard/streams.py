"""Streams: which mail belongs to which sending budget.

A stream is one sending identity with its own warmup ramp, caps and counters
(in the brief: ``trucking`` on port 25 from Listmonk, ``healthcare`` on port
2526 from the second Listmonk). Both services pick the stream of a message with
the same rules, so the policy daemon's caps and the milter's bulk and link
settings always agree on what a message is.

A stream's ``match`` table lists request attributes; every attribute given must
match (AND), any value in an attribute's list may match (OR). Streams are tried
in file order and the first match wins, but two streams whose rules could both
match one request are refused at start-up: an overlap would let one stream
spend the other's budget depending on the order of the file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sendguard.config import ConfigError, Section, check_network, check_one_of

#: The request attributes a stream may match on (names as in SMTPD_POLICY_README).
MATCH_ATTRIBUTES = ("server_port", "policy_context", "client_address", "sender", "sasl_username")

#: How the milter treats links in a stream (``None`` on a stream: use ``[links]``).
LINK_MODES = ("strip", "report-only", "off")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_client_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as Postfix reports it (``IPv6:`` prefix and IPv4-mapped IPv6 allowed), or None.

    Both services read client addresses through this one function, so the
    milter's trusted scope and the streams can never disagree about a client.
    """
    text = value.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True)
class MatchRule:
    """The ``match`` table of one stream, normalised for fast comparison."""

    server_port: frozenset[int] = frozenset()
    policy_context: frozenset[str] = frozenset()
    client_address: tuple[IPNetwork, ...] = ()
    sender_addresses: frozenset[str] = frozenset()
    sender_domains: frozenset[str] = frozenset()
    sasl_username: frozenset[str] = frozenset()

    def matches(self, attrs: Mapping[str, str]) -> bool:
        """Whether a request with these attributes belongs to the stream."""
        if self.server_port:
            port = attrs.get("server_port", "")
            if not port.isdigit() or int(port) not in self.server_port:
                return False
        if self.policy_context and attrs.get("policy_context", "") not in self.policy_context:
            return False
        if self.client_address:
            addr = parse_client_address(attrs.get("client_address", ""))
            if addr is None or not any(addr in net for net in self.client_address):
                return False
        if self.sender_addresses or self.sender_domains:
            sender = attrs.get("sender", "").lower()
            domain = sender.rpartition("@")[2]
            if sender not in self.sender_addresses and domain not in self.sender_domains:
                return False
        if self.sasl_username and attrs.get("sasl_username", "") not in self.sasl_username:
            return False
        return True

    def may_overlap(self, other: MatchRule) -> bool:
        """Whether some request could match both rules.

        An attribute only one rule constrains cannot keep them apart, so two
        rules overlap unless some attribute both constrain has disjoint values.
        """
        if self.server_port and other.server_port and not self.server_port & other.server_port:
            return False
        if self.policy_context and other.policy_context and not self.policy_context & other.policy_context:
            return False
        if self.client_address and other.client_address:
            if not any(a.version == b.version and a.overlaps(b) for a in self.client_address for b in other.client_address):  # type: ignore[arg-type]
                return False
        mine = self.sender_addresses | self.sender_domains
        theirs = other.sender_addresses | other.sender_domains
        if mine and theirs and not _senders_overlap(self, other):
            return False
        if self.sasl_username and other.sasl_username and not self.sasl_username & other.sasl_username:
            return False
        return True

    def describe(self) -> str:
        """A short human description, for status and logs."""
        parts = []
        if self.server_port:
            parts.append("port " + "|".join(str(p) for p in sorted(self.server_port)))
        if self.policy_context:
            parts.append("context " + "|".join(sorted(self.policy_context)))
        if self.client_address:
            parts.append("client " + "|".join(str(n) for n in self.client_address))
        senders = sorted(self.sender_addresses | self.sender_domains)
        if senders:
            parts.append("sender " + "|".join(senders))
        if self.sasl_username:
            parts.append("sasl " + "|".join(sorted(self.sasl_username)))
        return ", ".join(parts)


def _senders_overlap(a: MatchRule, b: MatchRule) -> bool:
    if a.sender_addresses & b.sender_addresses or a.sender_domains & b.sender_domains:
        return True
    if any(addr.rpartition("@")[2] in b.sender_domains for addr in a.sender_addresses):
        return True
    return any(addr.rpartition("@")[2] in a.sender_domains for addr in b.sender_addresses)


@dataclass(frozen=True)
class Stream:
    """One sending stream: its match rule, warmup ramp, caps and per-stream settings."""

    name: str
    rule: MatchRule
    #: (first warmup day, hourly cap) pairs, ascending, the first at day 0. Empty: uncapped.
    ramp: tuple[tuple[int, int], ...] = ()
    #: The hard hourly ceiling, whatever the ramp says.
    hourly_ceiling: int | None = None
    #: The rolling-24-hour ceiling.
    daily_cap: int | None = None
    #: A file holding the warmup start as a Unix epoch (re-read when it changes).
    start_file: Path | None = None
    #: The warmup start as a fixed instant (from ``start_date`` in the config).
    start_epoch: float | None = None
    #: Mail in this stream is bulk for the milter (it must leave signed).
    bulk: bool = False
    #: The milter's link mode for this stream; None means the global ``[links]`` mode.
    links: str | None = None

    @property
    def capped(self) -> bool:
        """Whether the stream has any cap at all."""
        return bool(self.ramp) or self.daily_cap is not None or self.hourly_ceiling is not None

    def ramp_cap(self, warmup_day: int) -> int | None:
        """The hourly cap in force on ``warmup_day``: the ramp's step, never above the ceiling."""
        cap: int | None = None
        for first_day, step_cap in self.ramp:
            if warmup_day >= first_day:
                cap = step_cap
        if self.hourly_ceiling is not None:
            cap = self.hourly_ceiling if cap is None else min(cap, self.hourly_ceiling)
        return cap


def match_stream(streams: list[Stream], attrs: Mapping[str, str]) -> Stream | None:
    """The first stream whose rule matches, or None."""
    for stream in streams:
        if stream.rule.matches(attrs):
            return stream
    return None


def read_stamp(path: Path) -> float:
    """Read a warmup start stamp: a file holding one Unix epoch (integer or decimal).

    Raises ValueError with the reason when the file cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ValueError(f"stamp file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"stamp file {path} cannot be read: {exc}") from None
    try:
        epoch = float(text)
    except ValueError:
        raise ValueError(f"stamp file {path} does not hold a Unix epoch: {text[:40]!r}") from None
    if not 0 < epoch < 1e11:
        raise ValueError(f"stamp file {path} holds an implausible epoch {text!r}")
    return epoch


def _parse_rule(section: Section) -> MatchRule:
    ports = section.get_list("server_port", int, [], lambda p: None if 0 < p < 65536 else f"{p} is not a port")
    contexts = section.get_list("policy_context", str, [])
    nets = section.get_list("client_address", str, [], check_network)
    senders = section.get_list("sender", str, [], lambda s: None if s.strip() else "empty sender")
    sasl = section.get_list("sasl_username", str, [])
    section.finish()
    lowered = [s.strip().lower() for s in senders]
    rule = MatchRule(
        server_port=frozenset(ports),
        policy_context=frozenset(contexts),
        client_address=tuple(ipaddress.ip_network(n, strict=False) for n in nets),
        sender_addresses=frozenset(s for s in lowered if "@" in s),
        sender_domains=frozenset(s for s in lowered if "@" not in s),
        sasl_username=frozenset(sasl),
    )
    if rule == MatchRule():
        raise section.error("", "a stream needs at least one match attribute: " + ", ".join(MATCH_ATTRIBUTES))
    return rule


def _parse_ramp(section: Section) -> tuple[tuple[int, int], ...]:
    raw = section.get("ramp", list, [])
    steps: list[tuple[int, int]] = []
    for i, step in enumerate(raw):
        if (
            not isinstance(step, list)
            or len(step) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in step)
        ):
            raise section.error(f"ramp[{i}]", "expected [warmup_day, hourly_cap], two integers")
        day, cap = step
        if day < 0 or cap < 0:
            raise section.error(f"ramp[{i}]", "days and caps cannot be negative")
        if steps and day <= steps[-1][0]:
            raise section.error(f"ramp[{i}]", "warmup days must increase")
        steps.append((day, cap))
    if steps and steps[0][0] != 0:
        raise section.error("ramp[0]", "the ramp must start at warmup day 0")
    return tuple(steps)


def _parse_start(section: Section, base: Path) -> tuple[Path | None, float | None]:
    start_file = section.get("start_file", str, None)
    start_date = section.get("start_date", (dt.date, dt.datetime), None)
    if start_file is not None and start_date is not None:
        raise section.error("start_date", "give start_file or start_date, not both")
    if start_file is not None:
        path = Path(start_file)
        if not path.is_absolute():
            path = base / path
        try:
            read_stamp(path)
        except ValueError as exc:
            raise section.error("start_file", str(exc)) from None
        return path, None
    if start_date is not None:
        if isinstance(start_date, dt.datetime):
            when = start_date if start_date.tzinfo else start_date.replace(tzinfo=dt.timezone.utc)
        else:
            when = dt.datetime.combine(start_date, dt.time(), tzinfo=dt.timezone.utc)
        return None, when.timestamp()
    return None, None


def parse_stream(name: str, section: Section, base: Path) -> Stream:
    """Parse one ``[streams.NAME]`` table."""
    rule = _parse_rule(section.sub("match", default_empty=False))
    ramp = _parse_ramp(section)
    positive = lambda v: None if v > 0 else "must be positive"  # noqa: E731
    ceiling = section.get("hourly_ceiling", int, None, positive)
    daily = section.get("daily_cap", int, None, positive)
    start_file, start_epoch = _parse_start(section, base)
    bulk = section.get("bulk", bool, False)
    links = section.get("links", str, None, check_one_of(*LINK_MODES))
    if ramp and start_file is None and start_epoch is None:
        raise section.error("start_file", "a stream with a ramp needs start_file or start_date")
    section.finish()
    return Stream(
        name=name,
        rule=rule,
        ramp=ramp,
        hourly_ceiling=ceiling,
        daily_cap=daily,
        start_file=start_file,
        start_epoch=start_epoch,
        bulk=bulk,
        links=links,
    )


def parse_streams(top: Section, base: Path) -> list[Stream]:
    """Parse every ``[streams.NAME]`` table and refuse overlapping rules."""
    streams: list[Stream] = []
    for name, section in top.tables("streams"):
        if not name.replace("-", "").replace("_", "").isalnum():
            raise section.error("", "stream names may hold letters, digits, '-' and '_' only")
        stream = parse_stream(name, section, base)
        for earlier in streams:
            if earlier.rule.may_overlap(stream.rule):
                raise ConfigError(
                    top.file,
                    f"streams.{name}.match",
                    f"overlaps stream {earlier.name!r} ({earlier.rule.describe()} vs {stream.rule.describe()}):"
                    " a request could match both",
                )
        streams.append(stream)
    return streams
