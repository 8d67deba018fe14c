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

The core reads what every part needs of a stream (its rule, ramp, caps and
start); a service may keep per-stream keys of its own in the same table (the
milter's ``bulk`` and ``links``): :func:`parse_streams` leaves each stream's
:class:`Section` open for them, and whoever composes the services closes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from sendguard.addresses import IPNetwork, check_network, parse_client_address, parse_network
from sendguard.config_reader import ConfigError, ErrorCollector, Section
from sendguard.senders import SenderSet, check_sender

#: The request attributes a stream may match on (names as in SMTPD_POLICY_README).
MATCH_ATTRIBUTES = ("server_port", "policy_context", "client_address", "sender", "sasl_username")


@dataclass(frozen=True)
class MatchRule:
    """The ``match`` table of one stream, normalised for fast comparison."""

    server_port: frozenset[int] = frozenset()
    policy_context: frozenset[str] = frozenset()
    client_address: tuple[IPNetwork, ...] = ()
    senders: SenderSet = field(default_factory=SenderSet)
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
        if self.senders and not self.senders.matches(attrs.get("sender", "")):
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
        if self.senders and other.senders and not self.senders.may_overlap(other.senders):
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
        if self.senders:
            parts.append("sender " + "|".join(self.senders.entries()))
        if self.sasl_username:
            parts.append("sasl " + "|".join(sorted(self.sasl_username)))
        return ", ".join(parts)


@dataclass(frozen=True)
class Stream:
    """One sending stream: its match rule, warmup ramp and caps."""

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


def match_stream(streams: Sequence[Stream], attrs: Mapping[str, str]) -> Stream | None:
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
    senders = section.get_list("sender", str, [], check_sender)
    sasl = section.get_list("sasl_username", str, [])
    section.finish()
    rule = MatchRule(
        server_port=frozenset(ports),
        policy_context=frozenset(contexts),
        client_address=tuple(parse_network(n) for n in nets),
        senders=SenderSet.parse(senders),
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
    path = section.get_path("start_file", base)
    start_date = section.get("start_date", (dt.date, dt.datetime), None)
    if path is not None and start_date is not None:
        raise section.error("start_date", "give start_file or start_date, not both")
    if path is not None:
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
    """Parse what the core reads of one ``[streams.NAME]`` table (the caller finishes the section)."""
    rule = _parse_rule(section.sub("match", default_empty=False))
    ramp = _parse_ramp(section)
    positive = lambda v: None if v > 0 else "must be positive"  # noqa: E731
    ceiling = section.get("hourly_ceiling", int, None, positive)
    daily = section.get("daily_cap", int, None, positive)
    start_file, start_epoch = _parse_start(section, base)
    if ramp and start_file is None and start_epoch is None:
        raise section.error("start_file", "a stream with a ramp needs start_file or start_date")
    return Stream(
        name=name,
        rule=rule,
        ramp=ramp,
        hourly_ceiling=ceiling,
        daily_cap=daily,
        start_file=start_file,
        start_epoch=start_epoch,
    )


def parse_streams(
    top: Section, base: Path, errors: ErrorCollector | None = None
) -> tuple[tuple[Stream, ...], dict[str, Section]]:
    """Parse every ``[streams.NAME]`` table and refuse overlapping rules.

    Returns the streams in file order and each stream's table, still open for
    the services' own per-stream keys. With ``errors``, a stream that fails is
    left out and its error kept, so the next streams are still checked.
    """
    collector = errors if errors is not None else ErrorCollector()
    streams: list[Stream] = []
    tables: dict[str, Section] = {}
    for name, section in top.tables("streams"):

        def read(name: str = name, section: Section = section) -> Stream:
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
            return stream

        stream = collector.attempt(read)
        if stream is not None:
            streams.append(stream)
            tables[name] = section
    if errors is None:
        collector.raise_if_any()
    return tuple(streams), tables
