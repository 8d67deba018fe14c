"""The MIME fuzzer through the milter, fast version: arbitrary and malformed campaign messages
from the bulk sender, through SendguardMilter's callbacks in libmilter's order (the
in-process Driver), with link repair on (``mode = "strip"``, the default).

For every message: the milter answers without an internal error; the body is unchanged
unless a link could need a repair (judged with the standard library, not the code under
test); and every DKIM-Signature it adds verifies with dkimpy. The link pipeline's own
properties (exact rewrites, offsets) are in tests/links; this is the whole milter on input
nobody planned. The full campaign runs the same generator for 10,000 messages.
"""

from __future__ import annotations

import logging
import random
import re

import Milter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendguard_testing.milter_client import Driver
from sendguard_testing.mime_fuzz import could_need_repair, message, unverifiable_signatures, write_milter_config

class Faults(logging.Handler):
    """Log records of the milter that carry a traceback: an exception of its own."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "internal error" in record.getMessage():
            self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    """A Driver over a config with a fresh key, and the DNS lookup that serves its public half."""
    config, dns = write_milter_config(tmp_path_factory.mktemp("mime-fuzz"))
    return Driver(config), dns


def test_malformed_mime_no_crash_no_change_without_repair_every_signature_verifies(signing):
    driver, dns = signing
    faults = Faults()
    logger = logging.getLogger("sendguard")
    logger.addHandler(faults)
    seen = {"signed": 0, "changed": 0, "clean": 0}

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32 - 1), dirty_share=st.sampled_from([0.0, 0.5, 1.0]))
    def check(seed: int, dirty_share: float) -> None:
        msg = message(random.Random(seed), dirty_share)
        body = re.sub(rb"(?<!\r)\n", b"\r\n", msg.body)  # SMTP carries line ends as CRLF
        out = driver.run_parts(msg.headers, body, client="172.18.0.5", client_port="40000", hostname="listmonk",
                               helo="listmonk", recipient="dispatch@carrier.example.org", queue_id="5C0FFEE123")  # fmt: skip
        assert out.rc in (Milter.CONTINUE, Milter.ACCEPT, Milter.REJECT, Milter.TEMPFAIL)
        if not could_need_repair(msg):
            seen["clean"] += 1
            assert out.new_body is None, "a body changed although no link needed a repair"
        if out.new_body is not None:
            seen["changed"] += 1
            assert out.new_body != body
        signatures = len(out.signature_headers)
        seen["signed"] += bool(signatures)
        assert unverifiable_signatures(out.message, signatures, dns) == 0

    try:
        check()
    finally:
        logger.removeHandler(faults)
    assert not faults.lines, faults.lines[:3]
    # The three properties were each exercised, not passed vacuously.
    assert seen["signed"] > 50 and seen["changed"] >= 3 and seen["clean"] > 20, seen
