"""Log lines: queue id, host and path; never the subscriber's query values."""

from __future__ import annotations

import logging

from sendguard_milter.links import log as link_log
from sendguard_milter.links.rewrite import LinkPolicy, rewrite_message


def test_changes_are_logged_without_query_values(lm, caplog) -> None:
    msg = lm.listmonk_alternative("https://example.net/order/acme?dot=1234567&utm_source=x@TrackLink")
    result = rewrite_message(msg.headers, msg.body, LinkPolicy())
    log = logging.getLogger("sendguard.milter.test-links")
    with caplog.at_level(logging.INFO, logger=log.name):
        link_log.log_result(log, "5C0FFEE123", result, "strip")
        link_log.log_result(log, "5C0FFEE123", result, "report-only")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "5C0FFEE123: links: strip marker: example.net/order/acme (part 0)",
        "5C0FFEE123: links: strip marker: example.net/order/acme (part 1)",
        "5C0FFEE123: links: would strip marker: example.net/order/acme (part 0)",
        "5C0FFEE123: links: would strip marker: example.net/order/acme (part 1)",
    ]
    assert not any("1234567" in line for line in lines)
    assert "1234567" not in repr(result.changes)


def test_broken_mime_is_one_warning_with_the_reason(lm, caplog) -> None:
    headers = lm.top_headers("multipart/alternative; boundary=gone")
    result = rewrite_message(headers, b"https://example.net/o?dot=1@TrackLink\r\n", LinkPolicy())
    log = logging.getLogger("sendguard.milter.test-links")
    with caplog.at_level(logging.INFO, logger=log.name):
        link_log.log_result(log, "", result, "strip")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "NOQUEUE: links: body left unchanged (boundary_not_found): broken MIME: multipart/alternative boundary 'gone' never occurs")
    ]
