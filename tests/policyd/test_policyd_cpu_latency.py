"""policyd.cpu_latency_hold: idle CPUs kept polling while requests flow, and only then.

These read the kernel's own answer: /dev/cpu_dma_latency, read, gives the CPU
latency bound in force for the whole machine (the strictest request held).
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
from prometheus_client import REGISTRY

from sendguard.config_reader import ConfigError
from sendguard_policyd import cpu_latency, service
from sendguard_policyd.client import PolicyClient, postfix_request

STREAMS = {
    "trucking": {
        "match": {"server_port": [25]},
        "ramp": [[0, 300]],
        "daily_cap": 4000,
        "start_date": dt.date(2026, 1, 1),
    }
}


def latency_in_force() -> int:
    fd = os.open(cpu_latency.DEVICE, os.O_RDONLY)
    try:
        return int.from_bytes(os.read(fd, 4), "little", signed=True)
    finally:
        os.close(fd)


def held_seconds() -> float:
    return REGISTRY.get_sample_value("sendguard_policyd_cpu_latency_hold_seconds_total") or 0.0


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def quiet_machine():
    # The test reads a machine-wide value: it proves something only if nothing else holds a request.
    assert latency_in_force() > 0, "another process holds a CPU latency request of 0 on this machine"


def test_held_while_requests_flow_and_released_when_they_stop(make_config, quiet_machine, monkeypatch):
    monkeypatch.setattr(cpu_latency, "IDLE_RELEASE", 0.3)
    config = make_config(STREAMS, cpu_latency_hold=True, idle_timeout=1)  # sweeps every 0.5 s
    handle = service.start(config.config, config.policyd)
    try:
        before = held_seconds()
        assert latency_in_force() > 0  # started, but no request yet: an idle daemon holds nothing
        with PolicyClient((handle.host, handle.port)) as client:
            for i in range(50):
                assert client.ask(postfix_request(recipient=f"r{i}@example.com")) == "DUNNO"
            assert latency_in_force() == 0  # requests are flowing: idle CPUs poll
            # Released within the idle time plus one sweep after the last request.
            assert wait_for(lambda: latency_in_force() > 0, timeout=5)
            assert held_seconds() - before > 0
            # Traffic again: held again.
            assert client.ask(postfix_request(recipient="again@example.com")) == "DUNNO"
            assert latency_in_force() == 0
    finally:
        handle.stop()
    assert latency_in_force() > 0  # a stopped daemon leaves nothing behind


def test_off_by_default_the_machine_is_left_alone(make_config, quiet_machine):
    handle = service.start(make_config(STREAMS))
    try:
        with PolicyClient((handle.host, handle.port)) as client:
            for i in range(50):
                client.ask(postfix_request(recipient=f"r{i}@example.com"))
            assert latency_in_force() > 0
    finally:
        handle.stop()


def test_a_request_that_cannot_be_made_stops_start_up_with_the_key(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_latency, "DEVICE", str(tmp_path / "no-such-device"))
    config = make_config(STREAMS, cpu_latency_hold=True)
    with pytest.raises(ConfigError) as info:
        service.start(config.config, config.policyd)
    message = str(info.value)
    assert "policyd.cpu_latency_hold" in message
    assert "no-such-device" in message and "No such file or directory" in message


def test_a_request_that_fails_later_is_dropped_with_one_line_and_no_exception(policyd_log, quiet_machine):
    hold = cpu_latency.CpuLatencyHold()
    os.close(hold._fd)  # the descriptor goes bad under it (stands in for any write error)
    hold.hold(time.monotonic())  # must not raise: answering Postfix matters more than polling
    assert hold.held is False
    assert len(policyd_log.matching("no longer holding idle CPUs polling")) == 1
    hold.hold(time.monotonic())  # given up: no second attempt, no second line
    assert len(policyd_log.matching("no longer holding")) == 1
    hold.close(time.monotonic())
