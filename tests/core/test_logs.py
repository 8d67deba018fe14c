"""The log line format: the per-second date cache renders exactly what logging's own formatter does."""

from __future__ import annotations

import logging

from sendguard.logs import FORMAT, LineFormatter


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("sendguard.policyd", logging.INFO, __file__, 1, "%s: pass", ("ABC123",), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000)
    return record


def test_line_matches_the_standard_formatter_across_second_boundaries():
    ours, standard = LineFormatter(), logging.Formatter(FORMAT)
    # Within one second, across a second and a day boundary, and back in time (another thread's older line).
    for created in (1795000000.001, 1795000000.999, 1795000001.5, 1795046399.999, 1795046400.0, 1795000000.25):
        record = _record(created)
        assert ours.format(record) == standard.format(record)
    assert ours.format(_record(1795000001.5)).endswith("sendguard.policyd[%d]: INFO: ABC123: pass" % _record(0).process)
