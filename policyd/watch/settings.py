"""``[watch]``: where ``sendguard watch`` reads Postfix's log, and how deliveries are placed in streams.

::

    [watch]
    log = "/var/log/mail.log"          # the file (maillog_file, or syslog's mail log); or:
    # journal = true                   # journalctl, by unit (journal_unit)
    syslog_streams = { "postfix-bulk" = "trucking" }

Every key is in docs/watch.md. ``sendguard run`` starts the watcher when a log
or the journal is configured and ``enabled`` is not false.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from sendguard.addresses import check_hostport
from sendguard.config import ConfigDocument
from sendguard.config_reader import check_one_of


@dataclass(frozen=True)
class WatchSettings:
    """Settings of the watcher (see docs/watch.md for each key)."""

    #: Run the watcher in ``sendguard run`` (when a source is configured).
    enabled: bool = True
    #: The log file to follow ("" = none).
    log: str = ""
    #: Follow the journal (journalctl) instead of a file.
    journal: bool = False
    #: The systemd unit whose entries are read ("" = every entry).
    journal_unit: str = "postfix@-.service"
    #: A journal directory to read instead of the system's (journalctl -D; "" = the system's).
    journal_directory: str = ""
    #: Where the position in the log is kept across restarts.
    position_file: str = ""
    #: Where a first start (no saved position) begins: "end" (only new lines) or "beginning".
    start_at: str = "end"
    #: Seconds between two looks at the file when it has nothing new.
    poll_interval: float = 1.0
    #: The program that logged a delivery (``postfix-bulk/smtp``) or its syslog name (``postfix-bulk``)
    #: -> the stream of mail the counter store has no record of.
    syslog_streams: Mapping[str, str] = field(default_factory=dict)
    #: Where ``sendguard watch`` run alone serves its metrics (in ``sendguard run``: policyd.metrics_listen).
    metrics_listen: str = "127.0.0.1:9469"

    @property
    def configured(self) -> bool:
        """Whether a source (a file or the journal) is configured."""
        return bool(self.log) or self.journal


def parse_watch(doc: ConfigDocument) -> WatchSettings:
    """Parse ``[watch]``; a syslog name mapped to a stream that is not configured is an error."""
    section = doc.top.sub("watch")
    defaults = WatchSettings()
    enabled = section.get("enabled", bool, defaults.enabled)
    log_path = section.get("log", str, "")
    journal = section.get("journal", bool, False)
    unit = section.get("journal_unit", str, defaults.journal_unit, _check_unit)
    directory = section.get("journal_directory", str, "")
    position = section.get("position_file", str, os.path.join(doc.config.general.state_dir, "watch.position"))
    start_at = section.get("start_at", str, defaults.start_at, check_one_of("end", "beginning"))
    poll = section.get(
        "poll_interval", float, defaults.poll_interval,
        lambda v: None if 0.05 <= v <= 60 else "must be between 0.05 and 60 seconds",
    )  # fmt: skip
    metrics = section.get("metrics_listen", str, defaults.metrics_listen, check_hostport)
    table = section.sub("syslog_streams")
    streams = {s.name for s in doc.config.streams}
    syslog_streams: dict[str, str] = {}
    for name in list(table.data):
        stream = table.get(name, str)
        if stream not in streams:
            known = ", ".join(sorted(streams)) or "none is configured"
            raise table.error(name, f"{stream!r} is not a configured stream ({known})")
        syslog_streams[name] = stream
    if log_path and journal:
        raise section.error("journal", "cannot be true while log is set: the watcher follows one source")
    if log_path:
        log_path = str(doc.config.resolve(log_path))
    if not position:
        raise section.error("position_file", "cannot be empty")
    section.finish()
    return WatchSettings(
        enabled=enabled,
        log=log_path,
        journal=journal,
        journal_unit=unit,
        journal_directory=str(doc.config.resolve(directory)) if directory else "",
        position_file=str(doc.config.resolve(position)),
        start_at=start_at,
        poll_interval=float(poll),
        syslog_streams=syslog_streams,
        metrics_listen=metrics,
    )


def _check_unit(value: str) -> str | None:
    if any(c.isspace() for c in value):
        return f"{value!r}: a unit name has no white space"
    return None
