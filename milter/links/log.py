"""The log lines of link repair: one per changed link, one per refusal.

Only the link's host and path are logged, never its query (which carries the
subscriber's values) and never :attr:`LinkChange.replacement`.
"""

from __future__ import annotations

import logging

from .rewrite import LinkChange, RewriteResult


def describe_change(change: LinkChange) -> str:
    """One change as the log and ``sendguard explain`` name it: ``strip marker: HOST/PATH (part N)``."""
    action = "strip marker" if change.kind == "marker_stripped" else "repair query"
    where = f"{change.host}{change.path}" or "(unrendered template link)"
    return f"{action}: {where} (part {change.part_index})"


def log_result(log: logging.Logger, queue_id: str, result: RewriteResult, mode: str) -> None:
    """Log what link repair did (or, in report-only, would do) to one message."""
    qid = queue_id or "NOQUEUE"
    if result.error:
        log.warning("%s: links: body left unchanged (%s): %s", qid, result.reason, result.error)
        return
    verb = "would " if mode == "report-only" else ""
    for change in result.changes:
        log.info("%s: links: %s%s", qid, verb, describe_change(change))
