"""Passes over the sources: each report found parsed and stored once; the loop that repeats them.

A pass never stops on bad input: a file, mail or attachment that holds no
readable report is logged in one line (where it is, and why) and counted as
``bad``, and the pass goes on with the next. A file read whole is remembered
(path, size, modification time) and not opened again until it changes.

``sendguard dmarc`` runs one pass; ``sendguard dmarc --follow`` and
``sendguard run`` run :func:`start`'s thread, a pass every ``interval`` seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry

from sendguard import logs
from sendguard.background import Background
from sendguard_policyd.dmarc import metrics
from sendguard_policyd.dmarc.imap import ImapError, fetch
from sendguard_policyd.dmarc.ingest import Found, Limits, read_message, read_unit, units
from sendguard_policyd.dmarc.report import ReportError, parse_report
from sendguard_policyd.dmarc.settings import DmarcSettings
from sendguard_policyd.dmarc.store import ReportStore

log = logs.get("dmarc")


@dataclass
class PassResult:
    """What one pass found."""

    new: int = 0
    duplicate: int = 0
    bad: int = 0
    #: Files not opened: read before, unchanged since.
    unchanged: int = 0
    #: Sources that do not exist (or cannot be listed), and an IMAP mailbox that could not be read.
    missing: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One line for the log and the command's output."""
        missing = f", {len(self.missing)} source(s) missing" if self.missing else ""
        return (f"{self.new} new report(s), {self.duplicate} already stored, {self.bad} unreadable (logged),"
                f" {self.unchanged} file(s) unchanged{missing}")  # fmt: skip


def _store_one(where: str, xml: bytes, store: ReportStore, result: PassResult) -> None:
    try:
        report = parse_report(xml)
    except ReportError as exc:
        log.warning("%s: skipped: not a DMARC aggregate report: %s", where, exc)
        result.bad += 1
        return
    if store.add(report):
        result.new += 1
        log.info("%s: report %s from %s for %s: %d record(s), %d message(s)",
                 where, report.report_id, report.org_name, report.domain, len(report.rows), report.messages)  # fmt: skip
    else:
        result.duplicate += 1
        log.debug("%s: report %s from %s already stored", where, report.report_id, report.org_name)


def _store_all(where: str, found: Callable[[], Iterator[Found]], store: ReportStore, result: PassResult) -> None:
    try:
        for one in found():
            if one.problem:
                log.warning("%s: skipped: %s", one.where, one.problem)
                result.bad += 1
            else:
                _store_one(one.where, one.xml, store, result)
    except Exception as exc:  # one strange file or mail must not end the pass
        log.warning("%s: skipped: %s: %s", where, type(exc).__name__, exc)
        result.bad += 1


def _imap_pass(settings: DmarcSettings, store: ReportStore, limits: Limits, result: PassResult) -> None:
    imap = settings.imap
    assert imap is not None
    # A message's key (mailbox, UIDVALIDITY, UID) is kept beside the files read, size and time 0.
    known = lambda key: store.file_known(key, 0, 0)  # noqa: E731
    try:
        for message in fetch(imap, known, limits.max_file_bytes):
            if message.problem:
                log.warning("%s: skipped: %s", message.where, message.problem)
                result.bad += 1
            else:
                _store_all(message.where, lambda m=message: read_message(m.where, m.data, limits), store, result)
            store.remember_file(message.key, 0, 0)
    except ImapError as exc:
        log.warning("dmarc IMAP mailbox not read in this pass: %s", exc)
        result.missing.append(f"imap://{imap.host}")


def ingest_pass(settings: DmarcSettings, store: ReportStore) -> PassResult:
    """Read every source once; store the reports not stored yet."""
    result = PassResult()
    limits = Limits(settings.max_file_bytes, settings.max_report_bytes)
    for source in settings.sources:
        path = Path(source)
        if not path.exists():
            log.warning("dmarc source %s does not exist (skipped in this pass)", source)
            result.missing.append(source)
            continue
        seen: set[str] = set()
        try:
            for unit in units(path):
                seen.add(str(unit.path))
                if store.file_known(unit.path, unit.size, unit.mtime_ns):
                    result.unchanged += 1
                    continue
                _store_all(str(unit.path), lambda unit=unit: read_unit(unit, limits), store, result)
                store.remember_file(unit.path, unit.size, unit.mtime_ns)
            # Only after a whole listing: a source that failed half-way keeps what it had.
            store.forget_files_under(path, seen)
        except OSError as exc:
            log.warning("dmarc source %s cannot be listed: %s (skipped in this pass)", source, exc.strerror or exc)
            result.missing.append(source)
    if settings.imap is not None:
        _imap_pass(settings, store, limits, result)
    for name in metrics.RESULTS:
        metrics.INGESTED.labels(name).inc(getattr(result, name))
    metrics.LAST_PASS.set(time.time())
    return result


def register_metrics(settings: DmarcSettings, registry: CollectorRegistry = REGISTRY) -> metrics.DmarcCollector:
    """Export the database's totals on ``registry`` (the endpoint the CLI serves)."""
    collector = metrics.DmarcCollector(settings)
    registry.register(collector)
    return collector


def _loop(settings: DmarcSettings, store: ReportStore, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            try:
                result = ingest_pass(settings, store)
                log.info("dmarc pass: %s", result.text())
            except Exception:  # the loop outlives any one pass (a locked or full disk)
                log.exception("dmarc pass failed; trying again in %g s", settings.interval)
            stop.wait(settings.interval)
    finally:
        store.close()


def start(settings: DmarcSettings) -> Background:
    """Open the database (an OSError or sqlite3.Error when it cannot be), then pass every ``interval`` on a thread."""
    store = ReportStore(settings.database)
    # The connection is used by the thread only from here on (the loop closes it); stopping waits for the report in hand.
    handle = Background(
        "sendguard-dmarc", lambda stop: _loop(settings, store, stop), join_seconds=30, closers=[lambda: log.info("dmarc ingester stopped")]
    ).start()
    log.info("ingesting DMARC reports from %s every %g s into %s",
             ", ".join(settings.sources), settings.interval, settings.database)  # fmt: skip
    return handle
