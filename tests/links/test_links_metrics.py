"""record(): what the counters say after one message."""

from __future__ import annotations

from prometheus_client import REGISTRY

from sendguard_milter.links import metrics as link_metrics
from sendguard_milter.links.rewrite import LinkChange, LinkPolicy, RewriteResult, rewrite_message


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_rewritten_message_counts_changes_by_kind_and_mode(lm) -> None:
    msg = lm.listmonk_alternative("https://example.net/order/slug&utm_source=x&dot=5@TrackLink")
    before = {
        "strip": value("sendguard_links_changes_total", kind="marker_stripped", mode="strip"),
        "repair": value("sendguard_links_changes_total", kind="query_repaired", mode="strip"),
        "msgs": value("sendguard_links_messages_rewritten_total", mode="strip"),
        "parsed": value("sendguard_links_messages_checked_total", depth="parsed"),
    }
    result = rewrite_message(msg.headers, msg.body, LinkPolicy())
    link_metrics.record(result, "strip")
    assert value("sendguard_links_changes_total", kind="marker_stripped", mode="strip") == before["strip"] + 2
    assert value("sendguard_links_changes_total", kind="query_repaired", mode="strip") == before["repair"] + 2
    assert value("sendguard_links_messages_rewritten_total", mode="strip") == before["msgs"] + 1
    assert value("sendguard_links_messages_checked_total", depth="parsed") == before["parsed"] + 1


def test_report_only_is_counted_apart() -> None:
    before = value("sendguard_links_changes_total", kind="marker_stripped", mode="report-only")
    link_metrics.record(RewriteResult(changes=[LinkChange("marker_stripped", "h", "/p")], parsed=True), "report-only")
    assert value("sendguard_links_changes_total", kind="marker_stripped", mode="report-only") == before + 1


def test_broken_mime_counted_by_reason_and_prescan_skips_counted() -> None:
    before = value("sendguard_links_broken_mime_total", reason="bad_base64")
    skipped = value("sendguard_links_messages_checked_total", depth="prescan")
    link_metrics.record(RewriteResult(error="broken MIME: x", reason="bad_base64", parsed=True), "strip")
    link_metrics.record(RewriteResult(), "strip")
    link_metrics.record(RewriteResult(), "off")
    assert value("sendguard_links_broken_mime_total", reason="bad_base64") == before + 1
    assert value("sendguard_links_messages_checked_total", depth="prescan") == skipped + 1
