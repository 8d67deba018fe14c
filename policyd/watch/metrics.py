"""The watcher's Prometheus metrics, and the consumer that keeps them.

Counters (from this process's start):

* ``sendguard_watch_deliveries_total{stream,operator,status}``: every delivery line, by outcome;
* ``sendguard_watch_problems_total{stream,operator,status,reason}``: the deferrals, bounces and
  expiries among them, by classified reason (``classify.py``: a bounded set, never the reply);
* ``sendguard_watch_lines_total{kind}``: lines read, ``delivery``, ``other`` or ``unparsed``.

Gauges:

* ``sendguard_watch_delivery_ratio{stream,window}`` (``window`` ``1h`` or ``24h``): of the
  recipients (queue id + address) with a delivery attempt in the window, the share whose latest
  attempt in the window was ``sent``. A recipient deferred five times and then delivered counts
  once, as delivered; one deferred and not delivered yet counts as not delivered (a receiver
  deferring everything shows at once, not five days later when the mail expires); bounced and
  expired count as not delivered. Absent for a stream without attempts in the window.
* ``sendguard_watch_window_recipients{stream,window}``: that denominator (alert only on enough mail);
* ``sendguard_watch_lag_seconds``: how far behind the log the watcher is: the time between the
  newest line handled and its own time stamp, when it was handled (syslog stamps are whole
  seconds: a lag under a second reads as 0 or 1);
* ``sendguard_watch_source_up``: 1 while the log file (or journalctl) can be read.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from sendguard.bound_collector import BoundCollector
from sendguard_policyd.watch import Delivery

DELIVERIES = Counter(
    "sendguard_watch_deliveries", "Delivery attempts Postfix logged, by stream, receiving operator and status.",
    ["stream", "operator", "status"],
)  # fmt: skip
PROBLEMS = Counter(
    "sendguard_watch_problems",
    "Deferrals, bounces and expiries, by stream, operator, status and classified reason (never the reply text).",
    ["stream", "operator", "status", "reason"],
)
LINES = Counter("sendguard_watch_lines", "Log lines read, by kind (delivery, other, unparsed).", ["kind"])
LAG = Gauge("sendguard_watch_lag_seconds", "Seconds between the newest line handled and its own time stamp.")
SOURCE_UP = Gauge("sendguard_watch_source_up", "1 while Postfix's log (the file or the journal) can be read.")

#: The ratio's windows: label and seconds.
WINDOWS = (("1h", 3600.0), ("24h", 86400.0))
#: Recipients remembered per stream and window (beyond it the oldest are forgotten: the ratio then
#: covers the newest this many).
MAX_RECIPIENTS = 1_000_000


class RollingOutcomes:
    """The latest outcome of each recipient attempted in a rolling window."""

    def __init__(self, span: float, max_recipients: int = MAX_RECIPIENTS) -> None:
        self.span = span
        self.max_recipients = max_recipients
        # (queue id, recipient) -> (time of its latest attempt, sent?); oldest attempt first.
        self._latest: OrderedDict[tuple[str, str], tuple[float, bool]] = OrderedDict()
        self.sent = 0

    def add(self, key: tuple[str, str], at: float, sent: bool, now: float) -> None:
        old = self._latest.pop(key, None)
        if old is not None:
            self.sent -= old[1]
        if at < now - self.span:
            return  # an old line (a catch-up after a restart): outside this window already
        self._latest[key] = (at, sent)
        self.sent += sent
        while len(self._latest) > self.max_recipients:
            self.sent -= self._latest.popitem(last=False)[1][1]

    def prune(self, now: float) -> None:
        cutoff = now - self.span
        while self._latest:
            key, (at, sent) = next(iter(self._latest.items()))
            if at >= cutoff:
                break
            del self._latest[key]
            self.sent -= sent

    def __len__(self) -> int:
        return len(self._latest)


class DeliveryMetrics:
    """The :class:`~sendguard_policyd.watch.DeliveryConsumer` of the metrics (counters and the ratio)."""

    def __init__(self, clock: Callable[[], float] = time.time, export: bool = True) -> None:
        """``export``: serve this consumer's ratios on the metrics endpoint (until :meth:`close`)."""
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, dict[str, RollingOutcomes]] = {}
        if export:
            RATIO.bind(self)

    def close(self) -> None:
        """Stop exporting this consumer's ratios."""
        RATIO.unbind(self)

    def delivered(self, d: Delivery) -> None:
        """Count one delivery and note its recipient's outcome in the ratio's windows."""
        DELIVERIES.labels(d.stream, d.operator, d.status).inc()
        if d.status != "sent":
            PROBLEMS.labels(d.stream, d.operator, d.status, d.reason or "other").inc()
        now = self.clock()
        with self._lock:
            windows = self._windows.get(d.stream)
            if windows is None:
                windows = self._windows[d.stream] = {label: RollingOutcomes(span) for label, span in WINDOWS}
            for outcomes in windows.values():
                outcomes.add((d.queue_id, d.recipient), d.at, d.status == "sent", now)

    def ratios(self) -> list[tuple[str, str, int, int]]:
        """(stream, window, recipients delivered, recipients attempted) now, for each non-empty window."""
        now = self.clock()
        out = []
        with self._lock:
            for stream, windows in sorted(self._windows.items()):
                for label, outcomes in windows.items():
                    outcomes.prune(now)
                    if len(outcomes):
                        out.append((stream, label, outcomes.sent, len(outcomes)))
        return out


class RatioCollector(BoundCollector[DeliveryMetrics]):
    """Yields the ratio gauges of the bound :class:`DeliveryMetrics` (nothing when none is bound)."""

    def collect_from(self, source: DeliveryMetrics) -> Iterable[GaugeMetricFamily]:
        """The delivery ratio and its denominator per stream and window."""
        ratio = GaugeMetricFamily(
            "sendguard_watch_delivery_ratio",
            "Of the recipients with a delivery attempt in the window, the share whose latest attempt was sent.",
            labels=["stream", "window"],
        )
        attempted = GaugeMetricFamily(
            "sendguard_watch_window_recipients",
            "Recipients with a delivery attempt in the window (the delivery ratio's denominator).",
            labels=["stream", "window"],
        )
        for stream, window, sent, total in source.ratios():
            ratio.add_metric([stream, window], sent / total)
            attempted.add_metric([stream, window], total)
        yield ratio
        yield attempted


RATIO = RatioCollector()
REGISTRY.register(RATIO)
