"""The DMARC metrics, read from the reports database at each scrape.

Totals come from the database, not from counters kept in memory: a restart
(or a second ``sendguard dmarc`` run from cron) neither loses nor double-counts
a report, and every process exporting the same database shows the same numbers.

From every report stored (counters: they only grow as reports come in):

* ``sendguard_dmarc_messages_total{reporter,source_ip,ours}``: messages the reports counted;
* ``sendguard_dmarc_dkim_aligned_total``, ``sendguard_dmarc_spf_aligned_total``: of them, with
  DKIM (SPF) passing aligned with the From domain;
* ``sendguard_dmarc_pass_total``: of them, passing DMARC (DKIM or SPF aligned).

From the reports whose period ended in the last ``window_days`` days (gauges, ``window`` = ``7d``):

* ``sendguard_dmarc_window_messages{reporter,source_ip,ours,window}`` and
  ``sendguard_dmarc_window_pass_messages``: what the alerts compare.

Labels are bounded. ``reporter`` is the reporting organisation: the first
``max_reporters`` seen (in the order their first report was stored, so the set
only grows and the counters stay monotonic); reports from any later one count as
``other`` (anyone can mail a forged report to the rua address). ``source_ip`` is one of our IPs (``[dmarc] our_ips``)
for ``ours="true"``; for the others it is ``other`` in the counters (every
address on the internet could appear: one series for them all, so the counters stay
monotonic), and in the window gauges the ``top_others`` addresses with the most
failing messages, the rest summed as ``other``.

Also ``sendguard_dmarc_reports`` (reports stored) and ``sendguard_dmarc_database_up``
(0 when the database cannot be read at a scrape: the other series are then absent).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Iterable

from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sendguard import logs
from sendguard_policyd.dmarc.settings import DmarcSettings
from sendguard_policyd.dmarc.store import ReportStore, Totals

log = logs.get("dmarc")

#: ``source_ip`` of the addresses that are not ours and have no series of their own.
OTHER = "other"
#: ``result`` of a report found in a pass: stored, already there, or unreadable (the log says why).
RESULTS = ("new", "duplicate", "bad")

INGESTED = Counter(
    "sendguard_dmarc_ingested_reports",
    "Reports found by this process's passes over the sources, by result (new, duplicate, bad).",
    ["result"],
)
for _result in RESULTS:
    INGESTED.labels(_result)
LAST_PASS = Gauge(
    "sendguard_dmarc_last_pass_timestamp_seconds", "When this process last finished a pass over the sources."
)

_LABELS = ["reporter", "source_ip", "ours"]


class DmarcCollector(Collector):
    """Reads the totals from the database at each scrape."""

    def __init__(self, settings: DmarcSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._warned = False

    def describe(self) -> Iterable[Metric]:
        """Nothing: the series are known only at a scrape (and registering must not open the database)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The metrics of the module docstring."""
        up = GaugeMetricFamily("sendguard_dmarc_database_up", "1 when the DMARC reports database could be read at this scrape.")
        try:
            store = ReportStore.reader(self.settings.database)
            try:
                reports = store.report_count()
                named = set(store.first_reporters(self.settings.max_reporters))
                everything = store.totals()
                since = int(self.clock()) - self.settings.window_days * 86400
                recent = store.totals(since)
            finally:
                store.close()
        except Exception as exc:  # a scrape must answer even when the database is gone or locked
            if not self._warned:
                log.error("dmarc metrics: cannot read %s: %s (logged once until it works again)", self.settings.database, exc)
                self._warned = True
            up.add_metric([], 0)
            yield up
            return
        if self._warned:
            log.info("dmarc metrics: %s can be read again", self.settings.database)
            self._warned = False
        up.add_metric([], 1)
        yield up
        count = GaugeMetricFamily("sendguard_dmarc_reports", "DMARC aggregate reports stored (each reporter's report id once).")
        count.add_metric([], reports)
        yield count
        yield from self._counters(everything, named)
        yield from self._window(recent, named)

    def _key(self, t: Totals, named: set[str], keep: set[str] | None) -> tuple[str, str, str]:
        reporter = t.reporter if t.reporter in named else OTHER
        if self.settings.ours(t.source_ip):
            return (reporter, t.source_ip, "true")
        ip = t.source_ip if keep is not None and t.source_ip in keep else OTHER
        return (reporter, ip, "false")

    def _counters(self, totals: list[Totals], named: set[str]) -> Iterable[Metric]:
        families = [
            CounterMetricFamily(name, text, labels=_LABELS)
            for name, text in (
                ("sendguard_dmarc_messages", "Messages DMARC aggregate reports counted, by reporter and source IP."),
                ("sendguard_dmarc_dkim_aligned", "Of them, with an aligned DKIM signature that verified."),
                ("sendguard_dmarc_spf_aligned", "Of them, with SPF passing for an aligned domain."),
                ("sendguard_dmarc_pass", "Of them, passing DMARC (DKIM or SPF aligned)."),
            )
        ]
        sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for t in totals:
            s = sums[self._key(t, named, None)]
            for i, value in enumerate((t.messages, t.dkim_aligned, t.spf_aligned, t.dmarc_pass)):
                s[i] += value
        for key, values in sorted(sums.items()):
            for family, value in zip(families, values):
                family.add_metric(list(key), value)
        yield from families

    def _window(self, totals: list[Totals], named: set[str]) -> Iterable[Metric]:
        labels = [*_LABELS, "window"]
        window = f"{self.settings.window_days}d"
        messages = GaugeMetricFamily(
            "sendguard_dmarc_window_messages",
            "Messages counted by the DMARC reports whose period ended within the window, by reporter and source IP.",
            labels=labels,
        )
        passed = GaugeMetricFamily(
            "sendguard_dmarc_window_pass_messages", "Of them, passing DMARC (DKIM or SPF aligned).", labels=labels
        )
        failing: dict[str, int] = defaultdict(int)
        for t in totals:
            if not self.settings.ours(t.source_ip):
                failing[t.source_ip] += t.messages - t.dmarc_pass
        worst = sorted((ip for ip, n in failing.items() if n > 0), key=lambda ip: (-failing[ip], ip))
        keep = set(worst[: self.settings.top_others])
        sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for t in totals:
            s = sums[self._key(t, named, keep)]
            s[0] += t.messages
            s[1] += t.dmarc_pass
        for key, (n, p) in sorted(sums.items()):
            messages.add_metric([*key, window], n)
            passed.add_metric([*key, window], p)
        yield messages
        yield passed
