"""The ``[policyd]`` section: where the daemon listens, where it keeps counters, how it answers.

Every key has a default that works next to a stock Postfix on the same host
(TCP 127.0.0.1:10040, metrics on 127.0.0.1:9466, counters in
``{state_dir}/policyd.sqlite``). The reference is docs/policyd.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from sendguard.addresses import check_hostport
from sendguard.config import ConfigDocument
from sendguard.config_reader import ErrorCollector, Section, check_one_of
from sendguard.socket_access import check_group, check_octal_mode
from sendguard.streams import Stream
from sendguard_policyd.effective_day import CALENDAR, MODES, SENDING
from sendguard_policyd.family_mx import parse_nameserver
from sendguard_policyd.operators import OperatorRule
from sendguard_policyd.operators_settings import parse_operators
from sendguard_policyd.redis_settings import check_host_name, check_redis_timeout, check_redis_url, read_password_file
from sendguard_policyd.watch.settings import WatchSettings, parse_watch

#: Every protocol_state Postfix sends (SMTPD_POLICY_README).
PROTOCOL_STATES = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN")

#: The actions a configured answer may start with (access(5)); anything else Postfix would log as an error.
_ACTION_WORDS = ("DUNNO", "DEFER_IF_PERMIT", "DEFER_IF_REJECT", "DEFER", "REJECT", "HOLD", "WARN", "OK", "PERMIT")


@dataclass(frozen=True)
class StreamPolicy:
    """The policy daemon's keys in one ``[streams.NAME]`` table."""

    #: A message over the stream's cap: "hold" (accepted, held in Postfix, released as room frees)
    #: or "defer" (``DEFER_IF_PERMIT 4.7.1``: the client must retry; Listmonk does not).
    over_cap: str = "hold"
    #: The counter store cannot answer: "closed" (hold or defer as over_cap says, never let capped
    #: mail past an unknown count) or "open" (pass it uncounted, logged).
    on_store_error: str = "closed"
    #: What advances the warmup: every ended day ("calendar") or only the days that delivered at
    #: least ``sending_day_minimum`` and were not paused ("sending"). See effective_day.py.
    warmup_days: str = CALENDAR
    #: Deliveries sent in a ramp day for it to count in "sending" mode.
    sending_day_minimum: int = 1


DEFAULT_POLICY = StreamPolicy()

#: ``[release] enabled``: run the releaser in ``sendguard run`` always, never, or when Postfix's
#: ``postqueue`` is on this host.
RELEASE_ENABLED = (True, False, "auto")


@dataclass(frozen=True)
class ReleaseSettings:
    """``[release]``: letting over-cap holds go as their stream's windows free."""

    enabled: bool | str = "auto"
    #: Seconds between two passes over the hold queue.
    interval: float = 10.0
    #: Postfix's configuration directory for postqueue/postsuper/postconf ("": Postfix's default).
    postfix_config_dir: str = ""
    #: A held message older than this share of ``maximal_queue_lifetime`` is flagged (log and metric).
    lifetime_warn_share: float = 0.5
    #: Where ``sendguard release`` run alone serves its metrics (in ``sendguard run``: policyd.metrics_listen).
    metrics_listen: str = "127.0.0.1:9468"


@dataclass(frozen=True)
class PolicydSettings:
    """Settings of the policy daemon (see docs/policyd.md for each key)."""

    listen: str = "127.0.0.1:10040"
    metrics_listen: str = "127.0.0.1:9466"
    database: str = ""
    #: An extra unix-domain socket to listen on ("" = none).
    socket: str = ""
    socket_mode: int = 0o666
    #: The group the unix socket is given (None: the daemon's own), e.g. "postfix" with socket_mode "0660".
    socket_group: str | None = None
    #: What END-OF-MESSAGE of mail in no stream gets: "dunno" (pass, uncounted) or "defer".
    unmatched: str = "dunno"
    #: The full answer to a request that cannot be understood.
    bad_request_action: str = "DUNNO"
    #: The protocol states the restriction lists are expected to query at; others are warned about.
    expected_states: tuple[str, ...] = ("RCPT", "END-OF-MESSAGE")
    #: Domains (and ``label.*`` patterns) added to the built-in Yahoo/Verizon-Media family.
    family_extra_domains: tuple[str, ...] = ()
    #: Also hold domains whose MX is Yahoo's (*.yahoodns.net), looked up in the background.
    family_mx_check: bool = False
    #: DNS servers for that lookup ("HOST" or "HOST:PORT"); empty: the system's resolver.
    family_mx_nameservers: tuple[str, ...] = ()
    #: Close a connection after this many idle seconds (Postfix's own max_idle is 300 s).
    idle_timeout: float = 330.0
    #: Set SO_REUSEPORT on the TCP listener, so several daemons can share one port.
    reuse_port: bool = False
    #: After a request, poll this many microseconds for the next one before sleeping (0: never poll; opt-in).
    busy_poll_usec: int = 0
    #: SQLite ``synchronous``: "normal" (fast, durable across process crashes) or "full" (also power loss).
    sqlite_synchronous: str = "normal"
    #: Testing only: the rolling hour lasts this many seconds and the day 24 times that (None: an hour).
    test_window_seconds: int | None = None
    #: Per stream name, the policy daemon's keys of ``[streams.NAME]``.
    stream_policies: Mapping[str, StreamPolicy] = field(default_factory=dict)
    #: ``[release]``: the releaser of over-cap holds.
    release: ReleaseSettings = field(default_factory=ReleaseSettings)

    def policy_for(self, stream: str) -> StreamPolicy:
        """The policy daemon's keys of ``stream`` (the defaults for a stream that sets none)."""
        return self.stream_policies.get(stream, DEFAULT_POLICY)
    #: Where the counters live: "sqlite" (``database``, one host) or "redis" (``redis_url``, shared by hosts).
    store: str = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: str = ""
    #: The password read from ``redis_password_file`` at start ("" = none): never printed, not even
    #: by ``check-config``.
    redis_password: str = field(default="", repr=False)
    #: Seconds a Redis connect or command may take before the request is answered as a store error.
    redis_timeout: float = 0.5
    #: Which Postfix host's hold queue this daemon's held mail is in ("" = the host name).
    redis_host_name: str = ""
    #: ``[watch]``: following Postfix's log (sendguard watch).
    watch: WatchSettings = field(default_factory=WatchSettings)
    #: ``[operators.NAME]``: receiving operators beyond the built-in ones.
    operators: Mapping[str, OperatorRule] = field(default_factory=dict)


def _check_action(value: str) -> str | None:
    if "\n" in value or "\r" in value:
        return "an answer cannot contain a line break"
    word = value.split(" ", 1)[0]
    if word.upper() not in _ACTION_WORDS and not (len(word) == 3 and word.isdigit() and word[0] in "45"):
        return f"{value!r} is not a Postfix access action ({', '.join(_ACTION_WORDS)} or 4NN/5NN text)"
    return None


def _check_family_entry(value: str) -> str | None:
    entry = value.strip().lower()
    if not entry or entry.startswith(".") or " " in entry or "@" in entry:
        return f"{value!r} is not a domain (or label.* pattern)"
    if "*" in entry and not (entry.endswith(".*") and "*" not in entry[:-2]):
        return f"{value!r}: a wildcard is only allowed as 'label.*' (every country domain of label)"
    return None


def _check_nameserver(value: str) -> str | None:
    try:
        parse_nameserver(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_policyd(doc: ConfigDocument) -> PolicydSettings:
    """Parse ``[policyd]`` (and ``[release]``, ``[watch]``, ``[operators.*]``)."""
    # Read first and collected apart, so their problems are reported beside any of [policyd]'s.
    watch = doc.errors.attempt(lambda: parse_watch(doc)) or WatchSettings()
    operators = doc.errors.attempt(lambda: parse_operators(doc)) or {}
    section = doc.top.sub("policyd")
    general = doc.config.general
    listen = section.get("listen", str, "127.0.0.1:10040", check_hostport)
    metrics = section.get("metrics_listen", str, "127.0.0.1:9466", check_hostport)
    database = section.get("database", str, os.path.join(general.state_dir, "policyd.sqlite"))
    socket = section.get("socket", str, "")
    mode = section.get("socket_mode", str, "0666", check_octal_mode)
    group = section.get("socket_group", str, None, check_group)
    if group is not None and not socket:
        raise section.error("socket_group", "applies only to the unix socket: set policyd.socket too")
    unmatched = section.get("unmatched", str, "dunno", check_one_of("dunno", "defer"))
    bad = section.get("bad_request_action", str, "DUNNO", _check_action)
    states = section.get_list("expected_states", str, ["RCPT", "END-OF-MESSAGE"], check_one_of(*PROTOCOL_STATES))
    extra = section.get_list("family_extra_domains", str, [], _check_family_entry)
    mx_check = section.get("family_mx_check", bool, False)
    mx_servers = section.get_list("family_mx_nameservers", str, [], _check_nameserver)
    idle = section.get(
        "idle_timeout", float, 330.0, lambda v: None if 1 <= v <= 86400 else "must be between 1 and 86400 seconds"
    )
    reuse_port = section.get("reuse_port", bool, False)
    busy_poll = section.get(
        "busy_poll_usec", int, 0, lambda v: None if 0 <= v <= 10000 else "must be between 0 and 10000 microseconds"
    )
    sync = section.get("sqlite_synchronous", str, "normal", check_one_of("normal", "full"))
    window = section.get(
        "test_window_seconds", int, None, lambda v: None if 2 <= v <= 3600 else "must be between 2 and 3600 seconds"
    )
    store = section.get("store", str, "sqlite", check_one_of("sqlite", "redis"))
    redis_url = section.get("redis_url", str, "redis://127.0.0.1:6379/0", check_redis_url)
    password_file = section.get("redis_password_file", str, "")
    redis_timeout = section.get("redis_timeout", float, 0.5, check_redis_timeout)
    host_name = section.get("redis_host_name", str, "", check_host_name)
    redis_password = ""
    if store == "redis" and password_file:
        try:
            redis_password = read_password_file(password_file)
        except ValueError as exc:
            raise section.error("redis_password_file", str(exc)) from None
    if not database:
        raise section.error("database", "cannot be empty")
    section.finish()
    return PolicydSettings(
        listen=listen,
        metrics_listen=metrics,
        database=database,
        socket=socket,
        socket_mode=int(mode, 8),
        socket_group=group,
        unmatched=unmatched,
        bad_request_action=bad,
        expected_states=tuple(states),
        family_extra_domains=tuple(e.strip().lower() for e in extra),
        family_mx_check=mx_check,
        family_mx_nameservers=tuple(mx_servers),
        idle_timeout=float(idle),
        busy_poll_usec=busy_poll,
        reuse_port=reuse_port,
        sqlite_synchronous=sync,
        test_window_seconds=window,
        stream_policies=_parse_stream_policies(doc),
        release=_parse_release(doc),
        store=store,
        redis_url=redis_url,
        redis_password_file=password_file,
        redis_password=redis_password,
        redis_timeout=float(redis_timeout),
        redis_host_name=host_name,
        watch=watch,
        operators=operators,
    )


def _parse_stream_policies(doc: ConfigDocument) -> dict[str, StreamPolicy]:
    policies: dict[str, StreamPolicy] = {}
    streams = {s.name: s for s in doc.config.streams}
    errors = ErrorCollector()  # every stream's problems, not only the first one's
    for name, table in doc.stream_tables.items():
        policy = errors.attempt(lambda table=table, stream=streams[name]: _parse_stream_policy(table, stream))
        if policy is not None:
            policies[name] = policy
    errors.raise_if_any()
    return policies


def _parse_stream_policy(table: Section, stream: Stream) -> StreamPolicy:
    over_cap = table.get("over_cap", str, DEFAULT_POLICY.over_cap, check_one_of("hold", "defer"))
    on_error = table.get("on_store_error", str, DEFAULT_POLICY.on_store_error, check_one_of("closed", "open"))
    mode = table.get("warmup_days", str, CALENDAR, check_one_of(*MODES))
    if mode == SENDING and not stream.ramp:
        raise table.error("warmup_days", '"sending" needs a ramp: without one the warmup day changes no cap')
    # A ramp day counts by default when it delivered an hour's worth at the ramp's first step.
    minimum = max(1, stream.ramp[0][1]) if stream.ramp else 1
    if mode == SENDING:
        minimum = table.get("sending_day_minimum", int, minimum, lambda v: None if v >= 1 else "must be at least 1 delivery")
    elif table.has("sending_day_minimum"):  # (read only in sending mode: check-config prints it only there)
        raise table.error("sending_day_minimum", 'applies only with warmup_days = "sending"')
    return StreamPolicy(over_cap=over_cap, on_store_error=on_error, warmup_days=mode, sending_day_minimum=minimum)


def _parse_release(doc: ConfigDocument) -> ReleaseSettings:
    section = doc.top.sub("release")
    defaults = ReleaseSettings()
    enabled = section.get(
        "enabled", (bool, str), defaults.enabled, lambda v: None if v in RELEASE_ENABLED else 'must be true, false or "auto"'
    )
    interval = section.get(
        "interval", float, defaults.interval, lambda v: None if 0.2 <= v <= 3600 else "must be between 0.2 and 3600 seconds"
    )
    config_dir = section.get("postfix_config_dir", str, defaults.postfix_config_dir)
    share = section.get(
        "lifetime_warn_share", float, defaults.lifetime_warn_share,
        lambda v: None if 0 < v < 1 else "must be between 0 and 1 (a share of maximal_queue_lifetime)",
    )  # fmt: skip
    metrics = section.get("metrics_listen", str, defaults.metrics_listen, check_hostport)
    section.finish()
    return ReleaseSettings(enabled=enabled, interval=float(interval), postfix_config_dir=config_dir,
                           lifetime_warn_share=float(share), metrics_listen=metrics)  # fmt: skip
