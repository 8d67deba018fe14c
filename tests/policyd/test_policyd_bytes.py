"""A queue_id or instance that is not UTF-8 reaches the store as its bytes: counted and held as any other."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from sendguard_testing.policy_client import PolicyClient

INSTANCE = b"1c2f.\xff\xfe.0"
QUEUE_ID = b"3F2A\xe91C"


def request(state: str, instance: bytes, queue_id: bytes = b"", recipient: bytes = b"carrier@example.com") -> bytes:
    lines = [
        b"request=smtpd_access_policy",
        b"protocol_state=" + state.encode(),
        b"server_port=25",
        b"recipient=" + recipient,
        b"recipient_count=" + (b"1" if state == "END-OF-MESSAGE" else b"0"),
        b"instance=" + instance,
        b"queue_id=" + queue_id,
    ]
    return b"\n".join(lines) + b"\n\n"


def ask(client: PolicyClient, data: bytes) -> str:
    client.send_raw(data)
    return client.read_reply()[len(b"action=") : -2].decode()


@pytest.fixture(params=["sqlite", "redis"])
def daemon(request, start_daemon):
    store = {"store": "redis", "redis_url": request.getfixturevalue("redis_url")} if request.param == "redis" else {}

    def run(over_cap: str):
        streams = {"trucking": {"match": {"server_port": [25]}, "ramp": [[0, 1]], "start_date": dt.date(2026, 1, 1),
                                "over_cap": over_cap}}  # fmt: skip
        return start_daemon(streams, **store)[1]

    return run


def test_non_utf8_instance_and_queue_id_are_counted_held_and_deduplicated(daemon, policyd_log):
    handle = daemon("hold")
    with PolicyClient((handle.host, handle.port)) as client:
        assert ask(client, request("RCPT", INSTANCE)) == "DUNNO"
        assert ask(client, request("END-OF-MESSAGE", INSTANCE, QUEUE_ID)) == "DUNNO"
        assert ask(client, request("END-OF-MESSAGE", INSTANCE, QUEUE_ID)) == "DUNNO"  # a retry: counted once
        # Over the cap of 1: held, and the releaser finds it under the very bytes Postfix sent.
        held = ask(client, request("END-OF-MESSAGE", INSTANCE + b"2", QUEUE_ID + b"2"))
        assert held.startswith("HOLD sendguard: stream trucking: it is at its hourly cap")
        # A family recipient with such bytes is held at RCPT and not counted at END-OF-MESSAGE.
        assert ask(client, request("RCPT", INSTANCE + b"3", recipient=b"bob@yahoo.com")).startswith("HOLD ")
        assert ask(client, request("END-OF-MESSAGE", INSTANCE + b"3", QUEUE_ID + b"3", b"bob@yahoo.com")) == "DUNNO"
    assert handle.store.windows("trucking", time.time()).hour == 1
    [waiting] = handle.store.held_messages("trucking")
    assert waiting.queue_id.encode("utf-8", "surrogateescape") == QUEUE_ID + b"2"
    assert waiting.instance.encode("utf-8", "surrogateescape") == INSTANCE + b"2"
    assert handle.store.message_state((INSTANCE + b"3").decode("utf-8", "surrogateescape")) == "family_hold"
    assert not policyd_log.matching("internal error")
