"""``[dmarc]``: where the aggregate reports are, where they are kept, and which sending IPs are ours.

::

    [dmarc]
    sources = ["/var/mail/dmarc-reports/Maildir", "/srv/dmarc/saved"]
    our_ips = ["192.0.2.25", "2001:db8:25::/64"]

Every key is in docs/dmarc.md. ``sendguard run`` ingests on its own thread, and
exports on its metrics endpoint, when ``sources`` is set and ``enabled`` is not false.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from sendguard.addresses import IPNetwork, check_hostport, check_network, parse_client_address, parse_network
from sendguard.config import ConfigDocument
from sendguard.config_reader import REQUIRED, Section, check_one_of
from sendguard_policyd.redis_settings import read_password_file


#: How the IMAP connection is protected: TLS from the first byte (993), STARTTLS (143), or not at all
#: (allowed to a loopback address only: a password in clear must not cross a network).
IMAP_TLS = ("implicit", "starttls", "none")


@dataclass(frozen=True)
class ImapSettings:
    """``[dmarc.imap]``: a mailbox the reports are fetched from (read-only: nothing is marked or moved)."""

    host: str
    username: str
    password_file: str
    #: Read from ``password_file`` at start; never printed.
    password: str = field(default="", repr=False)
    port: int = 993
    tls: str = "implicit"
    mailbox: str = "INBOX"
    #: Seconds a connection or a command may take.
    timeout: float = 30.0
    #: CA certificates (PEM) the server's certificate is verified against ("" = the system's).
    ca_file: str = ""


@dataclass(frozen=True)
class DmarcSettings:
    """Settings of the report ingester (see docs/dmarc.md for each key)."""

    #: Ingest in ``sendguard run`` (when sources are configured).
    enabled: bool = True
    #: Paths to read reports from: files, folders, maildirs, mboxes.
    sources: tuple[str, ...] = ()
    #: The SQLite file the reports are kept in.
    database: str = ""
    #: Our egress addresses (IPs or CIDR blocks): each gets series of its own.
    our_ips: tuple[IPNetwork, ...] = ()
    #: Seconds between two passes over the sources (``--follow``, ``sendguard run``).
    interval: float = 300.0
    #: The ``window`` gauges count reports whose period ended within this many days.
    window_days: int = 7
    #: Source IPs that are not ours with series of their own in the window gauges (the most failing ones).
    top_others: int = 10
    #: Reporters with series of their own (the first ones seen); reports from any later one count as ``other``.
    max_reporters: int = 50
    max_file_bytes: int = 20 * 1024 * 1024
    max_report_bytes: int = 50 * 1024 * 1024
    #: An IMAP mailbox to fetch reports from too (None: none).
    imap: ImapSettings | None = None
    #: Where ``sendguard dmarc --follow`` serves its metrics (in ``sendguard run``: policyd.metrics_listen).
    metrics_listen: str = "127.0.0.1:9467"

    @property
    def configured(self) -> bool:
        """Whether there is any source to read."""
        return bool(self.sources) or self.imap is not None

    def ours(self, ip: str) -> bool:
        """Whether ``ip`` is one of our egress addresses."""
        addr = parse_client_address(ip)
        return addr is not None and any(addr.version == net.version and addr in net for net in self.our_ips)


def _between(low: float, high: float, unit: str) -> Callable[[float], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}{unit}"


def parse_dmarc(doc: ConfigDocument) -> DmarcSettings:
    """Parse ``[dmarc]``; relative paths are read against the config file's folder."""
    section = doc.top.sub("dmarc")
    defaults = DmarcSettings()
    enabled = section.get("enabled", bool, defaults.enabled)
    sources = section.get_list("sources", str, [], check=lambda v: None if v.strip() else "cannot be empty")
    database = section.get("database", str, os.path.join(doc.config.general.state_dir, "dmarc.sqlite"))
    our_ips = section.get_list("our_ips", str, [], check=check_network)
    interval = section.get("interval", float, defaults.interval, _between(10, 86400, " seconds"))
    window = section.get("window_days", int, defaults.window_days, _between(1, 90, " days"))
    top = section.get("top_others", int, defaults.top_others, _between(0, 100, ""))
    reporters = section.get("max_reporters", int, defaults.max_reporters, _between(1, 1000, ""))
    max_file = section.get("max_file_bytes", int, defaults.max_file_bytes, _between(1024, 1024**3, " bytes"))
    max_report = section.get("max_report_bytes", int, defaults.max_report_bytes, _between(1024, 1024**3, " bytes"))
    metrics = section.get("metrics_listen", str, defaults.metrics_listen, check_hostport)
    if not database:
        raise section.error("database", "cannot be empty")
    imap = _parse_imap(section.sub("imap"), doc) if section.has("imap") else None
    section.finish()
    return DmarcSettings(
        enabled=enabled,
        sources=tuple(str(doc.config.resolve(s)) for s in sources),
        database=str(doc.config.resolve(database)),
        our_ips=tuple(parse_network(v) for v in our_ips),
        interval=float(interval),
        window_days=window,
        top_others=top,
        max_reporters=reporters,
        max_file_bytes=max_file,
        max_report_bytes=max_report,
        metrics_listen=metrics,
        imap=imap,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    addr = parse_client_address(host)
    return addr is not None and addr.is_loopback


def _parse_imap(section: Section, doc: ConfigDocument) -> ImapSettings:
    defaults = ImapSettings("", "", "")
    host = section.get("host", str, check=lambda v: None if v and not any(c.isspace() for c in v) else "a host name or address")
    tls = section.get("tls", str, defaults.tls, check_one_of(*IMAP_TLS))
    port = section.get("port", int, 993 if tls == "implicit" else 143, _between(1, 65535, ""))
    username = section.get("username", str, check=lambda v: None if v else "cannot be empty")
    password_path = section.get_path("password_file", doc.config.base_dir, default=REQUIRED)
    mailbox = section.get("mailbox", str, defaults.mailbox, lambda v: None if v else "cannot be empty")
    timeout = section.get("timeout", float, defaults.timeout, _between(1, 300, " seconds"))
    ca_file = section.get_path("ca_file", doc.config.base_dir)
    section.finish()
    if ca_file is not None and not ca_file.is_file():
        raise section.error("ca_file", f"{ca_file} is not a readable file")
    if tls == "none" and not _loopback(host):
        raise section.error("tls", f'"none" sends the password in clear: only to a loopback address, not {host!r}')
    assert password_path is not None
    try:
        password = read_password_file(str(password_path))
    except ValueError as exc:
        raise section.error("password_file", str(exc)) from None
    return ImapSettings(
        host, username, str(password_path), password, port, tls, mailbox, float(timeout), str(ca_file or "")
    )
