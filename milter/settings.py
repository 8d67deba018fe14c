"""The milter's part of the config: ``[milter]``, ``[milter.bulk]``, ``[signing]``, ``[links]``
(parsed by links.settings) and the milter's keys in each ``[streams.NAME]`` table.

Everything that can be checked without opening a file is checked here, so a
config that starts is a config that signs: listen syntax, networks (public
addresses in the scope need an explicit, bounded acknowledgement), every signing-table row (its key exists and
its d= aligns with the From domains it serves) and the signed-header lists.
The key files themselves are opened once, by :func:`sendguard_milter.keys.open_keys`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Mapping

from sendguard.addresses import check_hostport, check_network, parse_network
from sendguard.config import Config, ConfigDocument
from sendguard.config_reader import REQUIRED, Section, check_one_of, check_parses
from sendguard.public_space import public_addresses, total_public_addresses
from sendguard.senders import SenderSet, check_sender
from sendguard.socket_access import check_group, check_octal_mode
from sendguard.streams import Stream

from .bulk import DEFAULT_HEADERS, DEFAULT_PRECEDENCE, BulkRules
from .dkim_sign import NEVER_SIGN
from .dns_records import parse_nameserver
from .keys import KeySpec
from .links.rewrite import LinkPolicy
from .links.settings import LINK_MODES, parse_links
from .message_id import DEFAULT_BAD_HOSTS, MessageIdPolicy
from .signing_table import SigningTable, TableRow, alignment_problem, normalise_domain
from .trusted_scope import LOOPBACK, TrustedScope

#: Headers signed when present (From is mandatory). RFC 6376 §5.4.1's list plus one-click unsubscribe.
DEFAULT_SIGNED_HEADERS = (
    "From", "Reply-To", "Sender", "Subject", "Date", "To", "Cc", "Message-ID", "In-Reply-To",
    "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-ID",
    "Content-Description", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID",
)  # fmt: skip

#: Reply codes a refusal may use, with the enhanced status code that goes with each.
REFUSAL_CODES = {550: "5.7.1", 451: "4.7.1"}

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_SELECTOR_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_HEADER_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


def check_domain(domain: str) -> str | None:
    """Why ``domain`` (normalised) cannot be a signing domain, or None."""
    return None if _DOMAIN_RE.match(domain) else f"{domain!r} is not a domain name with at least two labels"


def check_selector(selector: str) -> str | None:
    """Why ``selector`` cannot be a DKIM selector, or None."""
    return None if _SELECTOR_RE.match(selector) else f"{selector!r} is not a DKIM selector (letters, digits, '-', '.')"


@dataclass(frozen=True)
class StreamRules:
    """The milter's keys in one ``[streams.NAME]`` table."""

    #: Mail in this stream is bulk (it must leave signed).
    bulk: bool = False
    #: The link mode for this stream; None means the ``[links]`` mode.
    links: str | None = None
    #: The public address this stream's mail leaves from (what SPF and FCrDNS are checked for).
    egress_ip: str | None = None
    #: The From domains of this stream's bulk mail (what ``dns-check`` checks SPF and DMARC of).
    from_domains: tuple[str, ...] = ()
    #: Give this stream's HTML-only mail a text/plain part; None means ``[milter] add_text_part``.
    add_text_part: bool | None = None


#: The rules of mail in no stream, and of a stream that sets none of the milter's keys.
NO_STREAM_RULES = StreamRules()


@dataclass(frozen=True)
class MilterSettings:
    """Settings of the milter (``[milter]`` + ``[signing]`` + ``[links]``)."""

    listen: str = "inet:8891@127.0.0.1"
    #: The mode given to a unix ``listen`` socket once libmilter has created it (None: the umask's).
    socket_mode: int | None = None
    #: The group given to that socket (None: the process's own), e.g. "postfix" with socket_mode 0o660.
    socket_group: str | None = None
    metrics_listen: str = "127.0.0.1:9467"
    #: libmilter's I/O timeout towards Postfix, seconds.
    timeout: int = 600
    scope: TrustedScope = field(default_factory=lambda: TrustedScope(tuple(parse_network(n) for n in LOOPBACK)))
    refusal_code: int = 550
    bulk: BulkRules = field(default_factory=BulkRules)
    keys: tuple[KeySpec, ...] = ()
    table: SigningTable = field(default_factory=SigningTable)
    signed_headers: tuple[str, ...] = DEFAULT_SIGNED_HEADERS
    oversign_headers: tuple[str, ...] = ("From",)
    #: Seconds between checks for changed key files (0: only SIGHUP reloads).
    key_check_interval: float = 10.0
    links: LinkPolicy = field(default_factory=LinkPolicy)
    #: Per stream name, the milter's keys of ``[streams.NAME]`` (rendered with each stream).
    stream_rules: Mapping[str, StreamRules] = field(default_factory=dict)
    #: Re-check each key's DNS record while running; refuse bulk mail for a key whose record differs.
    verify_published_keys: bool = False
    #: Seconds between those checks.
    published_key_interval: float = 300.0
    #: The nameserver (``IP[:PORT]``) they ask; None: the system's resolvers.
    published_key_nameserver: str | None = None
    #: Give HTML-only mail a text/plain part (mail in no stream, and streams that do not say).
    add_text_part: bool = False
    #: ``[milter] message_id_*``: Message-ID repair.
    message_id: MessageIdPolicy = field(default_factory=MessageIdPolicy)

    @property
    def refusal_xcode(self) -> str:
        """The enhanced status code of a refusal (5.7.1 or 4.7.1)."""
        return REFUSAL_CODES[self.refusal_code]

    def rules_for(self, stream: Stream | None) -> StreamRules:
        """The milter's rules for mail in ``stream`` (None: in no stream)."""
        if stream is None:
            return NO_STREAM_RULES
        return self.stream_rules.get(stream.name, NO_STREAM_RULES)

    def link_policy(self, stream: Stream | None) -> LinkPolicy:
        """The link policy for mail in ``stream``: ``[links]``, with the stream's mode if it sets one."""
        return self.links.with_mode(self.rules_for(stream).links)

    def text_part(self, stream: Stream | None) -> bool:
        """Whether HTML-only mail in ``stream`` gets a text/plain part: the stream's ``add_text_part``, else ``[milter]``'s."""
        own = self.rules_for(stream).add_text_part
        return self.add_text_part if own is None else own

    def key_spec(self, name: str) -> KeySpec | None:
        """The key named ``name``."""
        for spec in self.keys:
            if spec.name == name:
                return spec
        return None


def milter_socket(value: str) -> str:
    """Turn a listen address into libmilter's connection spec; raise ValueError with the reason.

    Accepts libmilter's ``inet:PORT@HOST``, ``inet6:PORT@HOST``, ``unix:/path``
    (also ``local:/path``), and OpenDKIM/Postfix-style ``inet:HOST:PORT``.
    """
    scheme, sep, rest = value.partition(":")
    scheme = scheme.lower()
    if not sep or not rest:
        raise ValueError(f"{value!r} is not a milter socket (inet:PORT@HOST, inet:HOST:PORT or unix:/path)")
    if scheme in ("unix", "local"):
        if not rest.startswith("/"):
            raise ValueError(f"{value!r}: a unix socket path must be absolute")
        return f"unix:{rest}"
    if scheme in ("inet", "inet6"):
        if "@" in rest:
            port, _, host = rest.partition("@")
        else:
            host, _, port = rest.rpartition(":")
            host = host.strip("[]")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: {port!r} is not a port")
        if not host:
            raise ValueError(f"{value!r}: no host (listening on every address must be written out, e.g. inet:8891@0.0.0.0)")
        if ":" in host and scheme == "inet":
            scheme = "inet6"
        return f"{scheme}:{int(port)}@{host}"
    raise ValueError(f"{value!r}: unknown socket type {scheme!r} (inet, inet6 or unix)")


def _check_header_name(value: str) -> str | None:
    return None if _HEADER_RE.match(value) else f"{value!r} is not a header field name"


#: The default of ``max_public_addresses``: a few egress hosts, never a provider's range.
DEFAULT_MAX_PUBLIC = 256


def _parse_scope(section: Section) -> TrustedScope:
    """``trusted_hosts`` (private ranges), ``trusted_public_hosts`` (acknowledged public ones) and their bound.

    A scope is judged by the addresses it covers, so splitting ``0.0.0.0/0``
    into halves, or writing ``2000::/3``, is refused like ``/0`` itself.
    """
    if section.has("allow_open_trusted_hosts"):
        raise section.error(
            "allow_open_trusted_hosts",
            "is no longer read: list public clients in trusted_public_hosts (at most max_public_addresses"
            f" public addresses, default {DEFAULT_MAX_PUBLIC}) and delete this key",
        )
    private = [parse_network(n) for n in section.get_list("trusted_hosts", str, list(LOOPBACK), check_network)]
    public = [parse_network(n) for n in section.get_list("trusted_public_hosts", str, [], check_network)]
    limit = section.get("max_public_addresses", int, DEFAULT_MAX_PUBLIC, lambda v: None if v >= 0 else "cannot be negative")
    for i, net in enumerate(private):
        count = public_addresses(net)
        if count:
            raise section.error(
                f"trusted_hosts[{i}]",
                f"{net} covers {count} publicly routable address{'es' if count > 1 else ''}; trusted_hosts is for"
                " private, loopback and link-local ranges: if these are your own sending hosts, move the entry to"
                " trusted_public_hosts (e.g. trusted_public_hosts = [\"203.0.113.94/32\"])",
            )
    total = total_public_addresses(public)
    if total > limit:
        raise section.error(
            "trusted_public_hosts",
            f"covers {total} publicly routable addresses, more than max_public_addresses = {limit}: every client"
            " there could have its mail signed as yours; list only your own egress hosts (/32, /128)"
            " or have the clients authenticate with SASL",
        )
    return TrustedScope(
        networks=tuple(private),
        public_networks=tuple(public),
        trust_sasl=section.get("trust_sasl", bool, True),
        trust_local_submission=section.get("trust_local_submission", bool, True),
    )


def _parse_bulk(section: Section) -> BulkRules:
    headers = section.get_list("headers", str, list(DEFAULT_HEADERS), _check_header_name)
    precedence = section.get_list("precedence", str, list(DEFAULT_PRECEDENCE))
    senders = section.get_list("senders", str, [], check_sender)
    section.finish()
    return BulkRules(
        headers=tuple(headers),
        precedence=tuple(p.strip().lower() for p in precedence),
        senders=SenderSet.parse(senders),
    )


def _parse_keys(signing: Section, config: Config) -> tuple[KeySpec, ...]:
    specs: list[KeySpec] = []
    for name, section in signing.tables("keys"):
        domain = normalise_domain(section.get("domain", str))
        problem = check_domain(domain)
        if problem:
            raise section.error("domain", problem)
        selector = section.get("selector", str, REQUIRED, check_selector)
        key_file = section.get_path("key_file", config.base_dir, REQUIRED)
        assert key_file is not None  # required: absent raised
        algorithm = section.get("algorithm", str, "rsa-sha256")
        if algorithm != "rsa-sha256":
            raise section.error(
                "algorithm",
                f"{algorithm!r} is not supported (only rsa-sha256; an Ed25519 signature beside it: ed25519_key_file)",
            )
        ed_selector = section.get("ed25519_selector", str, None, check_selector)
        ed_file = section.get_path("ed25519_key_file", config.base_dir)
        if (ed_selector is None) != (ed_file is None):
            missing, given = ("ed25519_selector", "ed25519_key_file") if ed_selector is None else ("ed25519_key_file", "ed25519_selector")
            raise section.error(missing, f"required with {given}: the Ed25519 signature needs its key and its own selector")
        if ed_selector is not None and ed_selector.lower() == selector.lower():
            # One DNS record holds one key: the same selector cannot publish both.
            raise section.error(
                "ed25519_selector",
                f"must differ from selector ({selector!r}): each key has its own record at SELECTOR._domainkey.{domain}",
            )
        if ed_file is not None and ed_file == key_file:
            raise section.error("ed25519_key_file", f"is key_file ({key_file}): the Ed25519 key is a file of its own")
        section.finish()
        specs.append(
            KeySpec(
                name=name, domain=domain, selector=selector, key_file=key_file, algorithm=algorithm,
                ed25519_selector=ed_selector, ed25519_key_file=ed_file,
            )
        )  # fmt: skip
    return tuple(specs)


def _parse_table(signing: Section, keys: tuple[KeySpec, ...]) -> SigningTable:
    table = signing.sub("table")
    by_name = {k.name: k for k in keys}
    rows: list[TableRow] = []
    seen: set[str] = set()
    for pattern, key_name in table.data.items():
        table.has(pattern)
        if not isinstance(key_name, str):
            raise table.error(
                pattern,
                "expected the name of a [signing.keys.NAME] table (quote domains: \"send.example.net\" = \"send\")",
            )
        wildcard = pattern.startswith("*.")
        domain = normalise_domain(pattern[2:] if wildcard else pattern)
        if not _DOMAIN_RE.match(domain):
            raise table.error(pattern, "expected a domain (example.net) or a wildcard (*.example.net)")
        norm = ("*." if wildcard else "") + domain
        if norm in seen:
            raise table.error(pattern, "listed twice")
        seen.add(norm)
        spec = by_name.get(key_name)
        if spec is None:
            known = ", ".join(sorted(by_name)) or "none defined"
            raise table.error(pattern, f"no key named {key_name!r} in [signing.keys] ({known})")
        row = TableRow(pattern=norm, key=key_name)
        problem = alignment_problem(row, spec.domain)
        if problem:
            raise table.error(pattern, problem)
        rows.append(row)
    return SigningTable(tuple(rows))


@dataclass(frozen=True)
class _PublishedCheck:
    enabled: bool
    interval: float
    nameserver: str | None


def _parse_published_check(signing: Section) -> _PublishedCheck:
    enabled = signing.get("verify_published_keys", bool, False)
    interval = signing.get(
        "published_key_interval", (int, float), 300.0, lambda v: None if v >= 1 else "must be at least 1 second"
    )
    nameserver = signing.get("published_key_nameserver", str, None, check_parses(parse_nameserver))
    return _PublishedCheck(enabled, float(interval), nameserver)


def _parse_signing(
    top: Section, config: Config
) -> tuple[tuple[KeySpec, ...], SigningTable, tuple[str, ...], tuple[str, ...], _PublishedCheck]:
    signing = top.sub("signing")
    published = _parse_published_check(signing)
    keys = _parse_keys(signing, config)
    table = _parse_table(signing, keys)
    signed = signing.get_list("signed_headers", str, list(DEFAULT_SIGNED_HEADERS), _check_header_name)
    if "from" not in {h.lower() for h in signed}:
        raise signing.error("signed_headers", "must include From (RFC 6376 requires it)")
    oversign = signing.get_list("oversign_headers", str, ["From"], _check_header_name)
    for key, names in (("signed_headers", signed), ("oversign_headers", oversign)):
        for i, h in enumerate(names):
            if h.lower() in NEVER_SIGN:
                raise signing.error(f"{key}[{i}]", f"{h} changes in transit and must not be signed")
    # From is always oversigned: a second From added later must break the signature.
    if "from" not in {h.lower() for h in oversign}:
        oversign = ["From", *oversign]
    signing.finish()
    return keys, table, _dedupe(signed), _dedupe(oversign), published


def _dedupe(names: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out = []
    for n in names:
        if n.lower() not in seen:
            seen.add(n.lower())
            out.append(n)
    return tuple(out)


def check_egress_ip(value: str) -> str | None:
    """Why ``value`` cannot be an egress address (one address, no network), or None."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address (one address, e.g. \"203.0.113.94\")"
    return None


def _check_from_domain(value: str) -> str | None:
    return check_domain(normalise_domain(value))


def _check_bad_host(value: str) -> str | None:
    host = value.strip().lower()
    if not host or any(c in host for c in "<>@ \t"):
        return f"{value!r} is not a host name (the part after @ in a Message-ID)"
    return None


def _parse_message_id(section: Section) -> MessageIdPolicy:
    repair = section.get("message_id_repair", bool, False)
    bad = section.get_list("message_id_bad_hosts", str, list(DEFAULT_BAD_HOSTS), _check_bad_host)
    host = section.get("message_id_host", str, None, lambda v: check_domain(normalise_domain(v)))
    keep = section.get("message_id_keep_original", bool, False)
    return MessageIdPolicy(
        repair=repair,
        bad_hosts=tuple(_dedupe([h.strip().lower() for h in bad])),
        host=normalise_domain(host) if host is not None else None,
        keep_original=keep,
    )


def _parse_stream_rules(doc: ConfigDocument) -> dict[str, StreamRules]:
    rules: dict[str, StreamRules] = {}
    for name, table in doc.stream_tables.items():
        bulk = table.get("bulk", bool, False)
        links = table.get("links", str, None, check_one_of(*LINK_MODES))
        egress = table.get("egress_ip", str, None, check_egress_ip)
        domains = table.get_list("from_domains", str, [], _check_from_domain)
        text_part = table.get("add_text_part", bool, None)
        rules[name] = StreamRules(
            add_text_part=text_part,
            bulk=bulk,
            links=links,
            egress_ip=str(ipaddress.ip_address(egress)) if egress is not None else None,
            from_domains=_dedupe([normalise_domain(d) for d in domains]),
        )
    return rules


def parse_milter(doc: ConfigDocument) -> MilterSettings:
    """Parse ``[milter]``, ``[milter.bulk]``, ``[signing]``, ``[links]`` and the streams' milter keys."""
    top = doc.top
    section = top.sub("milter")
    listen = section.get("listen", str, "inet:8891@127.0.0.1", check_parses(milter_socket))
    mode = section.get("socket_mode", str, None, check_octal_mode)
    group = section.get("socket_group", str, None, check_group)
    for key, value in (("socket_mode", mode), ("socket_group", group)):
        if value is not None and not milter_socket(listen).startswith("unix:"):
            raise section.error(key, f"applies only to a unix socket, and listen is {listen!r}")
    metrics = section.get("metrics_listen", str, "127.0.0.1:9467", check_hostport)
    timeout = section.get("timeout", int, 600, lambda v: None if 0 < v <= 86400 else "must be 1..86400 seconds")
    code = section.get(
        "refusal_code", int, 550, lambda v: None if v in REFUSAL_CODES else "must be 550 (permanent) or 451 (temporary)"
    )
    interval = section.get(
        "key_check_interval", (int, float), 10.0, lambda v: None if v >= 0 else "cannot be negative"
    )
    scope = _parse_scope(section)
    add_text_part = section.get("add_text_part", bool, False)
    message_id = _parse_message_id(section)
    bulk = _parse_bulk(section.sub("bulk"))
    section.finish()
    keys, table, signed, oversign, published = _parse_signing(top, doc.config)
    links = parse_links(top.sub("links"))
    stream_rules = _parse_stream_rules(doc)
    return MilterSettings(
        listen=milter_socket(listen),
        socket_mode=None if mode is None else int(mode, 8),
        socket_group=group,
        metrics_listen=metrics,
        timeout=timeout,
        scope=scope,
        refusal_code=code,
        bulk=bulk,
        keys=keys,
        table=table,
        signed_headers=signed,
        oversign_headers=oversign,
        key_check_interval=float(interval),
        links=links,
        stream_rules=stream_rules,
        verify_published_keys=published.enabled,
        published_key_interval=published.interval,
        published_key_nameserver=published.nameserver,
        add_text_part=add_text_part,
        message_id=message_id,
    )
