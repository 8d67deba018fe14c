"""The Listmonk sync's Prometheus metrics (registered on the default registry the CLI serves).

Labels are bounded: ``listmonk`` is a table name of the config, ``result``
and ``action`` come from the fixed lists below.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

#: ``result`` of an update: applied at once, stored but waiting for a restart, or failed.
RESULTS = ("applied", "needs_restart", "failed")
#: ``action`` on a campaign.
CAMPAIGN_ACTIONS = ("paused", "started")

WINDOW_MISMATCH = Gauge(
    "sendguard_listmonk_window_mismatch",
    "1 when Listmonk's sliding window, as read back, is not the one the stream's cap in force asks for"
    " (also while Listmonk cannot be read, or holds settings it has not applied); 0 when it is.",
    ["listmonk"],
)
UPDATES = Counter(
    "sendguard_listmonk_updates",
    "Settings updates sent to Listmonk, by result (applied, needs_restart, failed).",
    ["listmonk", "result"],
)
CAMPAIGN_CHANGES = Counter(
    "sendguard_listmonk_campaign_changes",
    "Campaigns sendguard paused or started again, by action (paused, started).",
    ["listmonk", "action"],
)
WINDOW_RATE = Gauge(
    "sendguard_listmonk_window_rate_messages",
    "The messages per window sendguard wants Listmonk to apply (absent: no window, the stream has no cap).",
    ["listmonk"],
)
WINDOW_SECONDS = Gauge(
    "sendguard_listmonk_window_duration_seconds",
    "The duration of the window sendguard wants Listmonk to apply.",
    ["listmonk"],
)
