"""The policy daemon's Prometheus metrics.

Counters are registered on the default registry at import (the CLI serves it).
The per-stream gauges (rolling counts, cap in force, warmup day)
are computed at scrape time from the counter store by a custom collector, so
they are right even when another process did the counting; the running service
binds the collector's source with :func:`bind` and clears it on stop.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Protocol, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from sendguard import logs
from sendguard.bound_collector import BoundCollector
from sendguard_policyd.effective_day import RampDay
from sendguard_policyd.store import Backlog

log = logs.get("policyd")

DECISIONS = Counter(
    "sendguard_policyd_decisions",
    "Answers given to Postfix, by stream ('none': no stream matched) and action.",
    ["stream", "action"],
)
HOLDS = Counter(
    "sendguard_policyd_holds",
    "Messages held, by reason (family: Yahoo/Verizon-Media family; over_cap; pause: stream or operator paused).",
    ["reason"],
)
COUNTED_RECIPIENTS = Counter(
    "sendguard_policyd_counted_recipients", "Recipients counted against a stream's caps.", ["stream"]
)
BAD_REQUESTS = Counter("sendguard_policyd_bad_requests", "Requests answered with bad_request_action, by cause.", ["reason"])
UNEXPECTED_STATES = Counter(
    "sendguard_policyd_unexpected_protocol_state",
    "Requests at a protocol_state not in expected_states: a hook in the wrong restriction list.",
    ["protocol_state"],
)
STORE_ERRORS = Counter(
    "sendguard_policyd_store_errors",
    "Counter store failures (answered as the stream's on_store_error says: a hold, a deferral or an uncounted pass).",
)
RELEASES = Counter(
    "sendguard_policyd_releases", "Over-cap held messages let go by the releaser, by stream.", ["stream"]
)
RELEASED_RECIPIENTS = Counter(
    "sendguard_policyd_released_recipients", "Recipients of the messages the releaser let go, by stream.", ["stream"]
)
RELEASE_ERRORS = Counter(
    "sendguard_policyd_release_errors",
    "Release passes or releases that failed, by step (postqueue, postsuper, store).",
    ["step"],
)
HELD_GONE = Counter(
    "sendguard_policyd_held_gone",
    "Over-cap held messages that left the hold queue by other hands (deleted or released by an operator).",
    ["stream"],
)
HELD_NEAR_LIFETIME = Gauge(
    "sendguard_policyd_held_near_lifetime_messages",
    "Held messages older than release.lifetime_warn_share of maximal_queue_lifetime (they may bounce once released).",
    ["stream"],
)
PAUSED = Gauge(
    "sendguard_policyd_paused",
    "1 while the stream's new mail (operator 'all') or its mail to one receiving operator is paused and held.",
    ["stream", "operator"],
)
PAUSES = Counter(
    "sendguard_policyd_pauses",
    "Pauses seen to begin by the policy daemon, by stream, operator ('all': the whole stream) and rule"
    " ('manual': sendguard pause).",
    ["stream", "operator", "rule"],
)
STOP_SIGNAL_MATCHES = Counter(
    "sendguard_policyd_stop_signal_matches",
    "Delivery results that matched a stop-signal rule, by stream and rule (a rule pauses at its threshold per hour).",
    ["stream", "rule"],
)
BUSY_POLL_SECONDS = Counter(
    "sendguard_policyd_busy_poll_seconds",
    "Time the event loop spent polling for the next request instead of sleeping (policyd.busy_poll_usec):"
    " CPU spent to save wake-ups.",
)
STORE_FILE_LOST = Gauge(
    "sendguard_policyd_store_file_lost",
    "1 while the SQLite store's file (or its lock file) was deleted or replaced after the daemon opened it:"
    " every message is then answered as a store failure.",
)
CONNECTIONS = Gauge("sendguard_policyd_connections", "Open Postfix connections.")
REQUEST_SECONDS = Histogram(
    "sendguard_policyd_request_duration_seconds",
    "Time from a complete request to its reply being queued.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0),
)


class StreamGauges(Protocol):
    """What a scrape needs of one stream (``status.StreamStatus`` provides it)."""

    name: str
    warmup_day: int | None
    hourly_cap: int | None
    daily_cap: int | None
    hour: int
    day: int
    backlog: Backlog
    ramp: RampDay | None


class StreamCollector(BoundCollector[Callable[[], Sequence[StreamGauges]]]):
    """Yields the per-stream gauges from whatever source is bound (nothing when none is)."""

    def collect_from(self, source: Callable[[], Sequence[StreamGauges]]) -> Iterable[GaugeMetricFamily]:
        """Read the source once and yield every per-stream family."""
        up = GaugeMetricFamily("sendguard_policyd_store_up", "1 when the counter store could be read at this scrape.")
        try:
            rows = source()
        except Exception as exc:  # a scrape must not fail because the store is busy or gone
            log.warning("metrics scrape: counter store unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families = {
            "hour": GaugeMetricFamily(
                "sendguard_policyd_rolling_hour_recipients", "Recipients counted in the last 60 minutes.", labels=["stream"]
            ),
            "day": GaugeMetricFamily(
                "sendguard_policyd_rolling_day_recipients", "Recipients counted in the last 24 hours.", labels=["stream"]
            ),
            "hourly_cap": GaugeMetricFamily(
                "sendguard_policyd_hourly_cap_recipients",
                "Rolling-hour cap in force (ramp step for the warmup day, at most hourly_ceiling).",
                labels=["stream"],
            ),
            "daily_cap": GaugeMetricFamily(
                "sendguard_policyd_daily_cap_recipients", "Rolling-24-hour cap (daily_cap).", labels=["stream"]
            ),
            "warmup_day": GaugeMetricFamily(
                "sendguard_policyd_warmup_day",
                "The effective warmup day the caps follow: calendar or sending days, less step-backs.",
                labels=["stream"],
            ),
            "warmup_info": GaugeMetricFamily(
                "sendguard_policyd_warmup_day_info",
                "1 for each started stream, labelled with what advances its warmup (warmup_days: calendar or sending).",
                labels=["stream", "mode"],
            ),
            "calendar_day": GaugeMetricFamily(
                "sendguard_policyd_warmup_calendar_day",
                "Whole days since the stream's warmup start (the warmup day in calendar mode with no step-back).",
                labels=["stream"],
            ),
            "step_backs": GaugeMetricFamily(
                "sendguard_policyd_warmup_step_backs",
                "Step-backs applied to the stream's current warmup (stop signals' step_back_days).",
                labels=["stream"],
            ),
            "today_sent": GaugeMetricFamily(
                "sendguard_policyd_warmup_today_sent",
                "Deliveries sent so far in the ramp day in progress (sending mode: it counts at sending_day_minimum).",
                labels=["stream"],
            ),
            "held": GaugeMetricFamily(
                "sendguard_policyd_held_backlog_messages",
                "Messages held in Postfix (over their cap, or paused) and waiting for release.",
                labels=["stream"],
            ),
            "held_recipients": GaugeMetricFamily(
                "sendguard_policyd_held_backlog_recipients",
                "Recipients of the over-cap messages waiting for release.",
                labels=["stream"],
            ),
            "paused_held": GaugeMetricFamily(
                "sendguard_policyd_paused_held_messages",
                "Messages held because their stream, or the receiving operator of a recipient, was paused"
                " (part of the held backlog; released through the caps once the pause ends).",
                labels=["stream"],
            ),
            "oldest": GaugeMetricFamily(
                "sendguard_policyd_held_oldest_age_seconds",
                "Age of the oldest over-cap message waiting for release (0: none waits).",
                labels=["stream"],
            ),
        }
        now = time.time()
        for row in rows:
            families["hour"].add_metric([row.name], row.hour)
            families["day"].add_metric([row.name], row.day)
            if row.hourly_cap is not None:
                families["hourly_cap"].add_metric([row.name], row.hourly_cap)
            if row.daily_cap is not None:
                families["daily_cap"].add_metric([row.name], row.daily_cap)
            if row.warmup_day is not None:
                families["warmup_day"].add_metric([row.name], row.warmup_day)
            if row.ramp is not None:
                families["warmup_info"].add_metric([row.name, row.ramp.mode], 1)
                families["calendar_day"].add_metric([row.name], row.ramp.calendar_day)
                families["step_backs"].add_metric([row.name], len(row.ramp.step_backs))
                families["today_sent"].add_metric([row.name], row.ramp.today_sent)
            families["held"].add_metric([row.name], row.backlog.messages)
            families["held_recipients"].add_metric([row.name], row.backlog.recipients)
            families["paused_held"].add_metric([row.name], row.backlog.paused)
            oldest = row.backlog.oldest_at
            families["oldest"].add_metric([row.name], 0.0 if oldest is None else max(0.0, now - oldest))
        yield from families.values()


COLLECTOR = StreamCollector()
REGISTRY.register(COLLECTOR)


def bind(source: Callable[[], Sequence[StreamGauges]] | None) -> None:
    """Point the per-stream gauges at a live source (None: stop exporting them)."""
    COLLECTOR.bind(source)


def unbind(source: Callable[[], Sequence[StreamGauges]]) -> None:
    """Stop exporting ``source``, unless another service has been bound since."""
    COLLECTOR.unbind(source)
