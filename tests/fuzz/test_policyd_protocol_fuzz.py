"""The policy protocol fuzzer, fast version: valid and broken requests pipelined over 20 real
connections to a real daemon, the byte stream cut at random boundaries.

Per example a fresh daemon (its own SQLite file, cap 60, ``over_cap = "defer"``) gets every
connection's requests at once. It must never crash or hang, answer every complete request
exactly once and in order, give valid requests their documented answer and bad ones
``bad_request_action``, and let exactly ``min(60, offered)`` capped messages pass — as its
store counts them. The full campaign (``tests/soak/run_campaign.py``) runs the same generator
for a million requests against ``sendguard policyd`` processes.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ports import free_port
from sendguard.cli.settings import parse
from sendguard_policyd import service
from sendguard_testing.policy_client import PolicyClient, postfix_message
from sendguard_testing.policy_fuzz import BAD_ACTION, check, drive, plan_connection

CAP = 60
CONNECTIONS = 20
STREAMS = {"trucking": {"match": {"server_port": [25]}, "hourly_ceiling": CAP, "daily_cap": 4000, "over_cap": "defer"}}


class Errors(logging.Handler):
    """ERROR lines of the daemon: a bad request is a WARNING, an error here is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def start_daemon(state: Path) -> service.Handle:
    data = {
        "general": {"state_dir": str(state)},
        "policyd": {"listen": f"127.0.0.1:{free_port()}", "database": str(state / "policyd.sqlite"), "bad_request_action": BAD_ACTION},
        "streams": STREAMS,
    }
    config = parse(data, str(state / "sendguard.toml"))
    return service.start(config.config, config.policyd)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    per_connection=st.integers(1, 30),
    bad_share=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    max_chunk=st.sampled_from([16, 300, 1500, 65536]),
)
def test_pipelined_fuzzed_requests_cut_anywhere_get_one_right_reply_each_in_order(seed, per_connection, bad_share, max_chunk):
    rng = random.Random(seed)
    errors = Errors()
    logger = logging.getLogger("sendguard.policyd")
    logger.addHandler(errors)
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            plans = [plan_connection(rng, n, rng.randint(1, per_connection) * 2, bad_share, f"s{seed}") for n in range(CONNECTIONS)]
            replies = drive(daemon.port, plans, rng, max_chunk, timeout=10)
            figures = check(plans, replies, CAP)
            assert figures.faults == 0, (figures, figures.examples)
            assert figures.requests == figures.replies
            # What passed is what the store counted: no pass uncounted, no count unanswered.
            assert daemon.store.windows("trucking", time.time()).hour == figures.capped_passed
            # Still serving: a new connection gets a decision at once.
            with PolicyClient(("127.0.0.1", daemon.port), timeout=5) as client:
                assert [client.ask(r) for r in postfix_message(f"after-{seed}", "QAFTER", ["a@example.com"], server_port="587")] == ["DUNNO", "DUNNO"]
        finally:
            daemon.stop()
            logger.removeHandler(errors)
    assert not errors.lines, errors.lines
