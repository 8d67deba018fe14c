"""The log line format: Postfix-style lines, the queue id right after the level."""

from __future__ import annotations

import io
import logging
import os
import re

from sendguard import logs


def test_setup_writes_one_postfix_style_line_per_record():
    out = io.StringIO()
    root = logging.getLogger("sendguard")
    saved = root.handlers[:], root.level, root.propagate
    try:
        logs.setup("info", out)
        log = logs.get("policyd")
        log.info("%s: hold: recipient %s", "ABC123", "bob@yahoo.com")
        log.debug("%s: pass", "NOTSHOWN")
    finally:
        root.handlers[:], root.level, root.propagate = saved
    line = out.getvalue()
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} sendguard\.policyd\[%d\]: INFO: ABC123: hold: recipient bob@yahoo\.com\n"
    assert re.fullmatch(pattern % os.getpid(), line), line
