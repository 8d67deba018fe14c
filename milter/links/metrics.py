"""Prometheus counters for link repair (default registry; the CLI serves them).

The milter calls :func:`record` once per message with the result of
``rewrite_message`` and the mode in force, so every count has one source.
Labels are fixed, small sets: kind, mode and broken-MIME reason.
"""

from __future__ import annotations

from prometheus_client import Counter

from .rewrite import KINDS, RewriteResult

LINK_CHANGES = Counter(
    "sendguard_links_changes_total",
    "Link changes by kind (marker_stripped, query_repaired); mode report-only counts changes that were only reported.",
    ["kind", "mode"],
)
MESSAGES_REWRITTEN = Counter(
    "sendguard_links_messages_rewritten_total",
    "Messages with at least one link change; mode strip replaced the body, report-only only reported.",
    ["mode"],
)
MESSAGES_CHECKED = Counter(
    "sendguard_links_messages_checked_total",
    "Messages looked at, by how far the check went: prescan (bytes proved nothing to do) or parsed (MIME walked).",
    ["depth"],
)
BROKEN_MIME = Counter(
    "sendguard_links_broken_mime_total",
    "Messages passed with their body unchanged because link repair could not trust them (broken MIME, size limits, internal error), by reason.",
    ["reason"],
)

# Every series exists from start-up (at 0), so rates and alerts work before the first change.
for _kind in KINDS:
    for _mode in ("strip", "report-only"):
        LINK_CHANGES.labels(kind=_kind, mode=_mode)
for _mode in ("strip", "report-only"):
    MESSAGES_REWRITTEN.labels(mode=_mode)
for _depth in ("prescan", "parsed"):
    MESSAGES_CHECKED.labels(depth=_depth)


def record(result: RewriteResult, mode: str) -> None:
    """Count one message's outcome; mode ``off`` counts nothing (no work was done)."""
    if mode == "off":
        return
    if result.reason != "message_too_large":  # a message over the size limit is not looked at
        MESSAGES_CHECKED.labels(depth="parsed" if result.parsed else "prescan").inc()
    if result.reason:
        BROKEN_MIME.labels(reason=result.reason).inc()
        return
    for change in result.changes:
        LINK_CHANGES.labels(kind=change.kind, mode=mode).inc()
    if result.changes:
        MESSAGES_REWRITTEN.labels(mode=mode).inc()
