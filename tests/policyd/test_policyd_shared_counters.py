"""Two daemons standing for two Postfix hosts on one budget: SQLite (two processes) and Redis.

Each daemon gets 20 smtpd-like connections at once and the cap is 100: exactly
100 messages pass, never 101. With Redis, Redis is then stopped under load
(every END-OF-MESSAGE after that is a store-error deferral, counted in
``store_errors``) and started again on the same port (the daemons carry on,
not restarted).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from redis_server import RedisServer
from sendguard_policyd import metrics, service
from sendguard_testing.command import sendguard_command
from sendguard_testing.policyd_processes import policyd_processes, write_policyd_config
from sendguard_testing.policy_client import PolicyClient, postfix_message

CAP = 100
CONNECTIONS = 20  # per daemon
MESSAGES = 4  # per connection: 160 per daemon, 320 in all, for 100 places

STREAMS = {"trucking": {"match": {"server_port": [25]}, "hourly_ceiling": CAP, "daily_cap": 4000, "over_cap": "defer"}}

STORE_ERROR = "DEFER_IF_PERMIT 4.3.0"


STREAM_TOML = f"""[streams.trucking]
hourly_ceiling = {CAP}
daily_cap = 4000
over_cap = "defer"

[streams.trucking.match]
server_port = [25]
"""


def write_config(tmp_path: Path, name: str, store: str, where: str) -> tuple[Path, int]:
    backend = f'store = "redis"\nredis_url = "{where}"' if store == "redis" else f'database = "{where}"'
    return write_policyd_config(tmp_path, name, backend, STREAM_TOML)


def blast(ports: list[int], tag: str, messages: int = MESSAGES) -> list[tuple[float, str]]:
    """CONNECTIONS connections on each port at once, ``messages`` each: (sent at, END-OF-MESSAGE answer)."""
    answers: list[tuple[float, str]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    go = threading.Event()

    def connection(n: int, port: int) -> None:
        try:
            with PolicyClient(("127.0.0.1", port)) as client:
                go.wait()
                for i in range(messages):
                    requests = postfix_message(f"{tag}-{n}-{i}", f"Q{tag}X{n}X{i}", ["carrier@example.com"])
                    for request in requests[:-1]:
                        assert client.ask(request) == "DUNNO"
                    sent = time.monotonic()
                    answer = client.ask(requests[-1])
                    with lock:
                        answers.append((sent, answer))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=connection, args=(h * CONNECTIONS + n, port))
        for h, port in enumerate(ports)
        for n in range(CONNECTIONS)
    ]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    return answers


@pytest.fixture(params=["sqlite", "redis"])
def two_hosts(request, tmp_path: Path):
    """Two ``sendguard policyd`` processes on one store: a SQLite file or a real Redis."""
    server = None
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis")
        server.start()
        where = server.url
    else:
        where = str(tmp_path / "shared" / "policyd.sqlite")
    try:
        configs = [write_config(tmp_path, name, request.param, where) for name in ("host-a", "host-b")]
        with policyd_processes(configs):
            yield [port for _, port in configs], tmp_path / "host-a.toml"
    finally:
        if server is not None:
            server.stop()


def test_two_hosts_20_connections_each_cap_100_exactly_100_pass(two_hosts):
    ports, config = two_hosts
    answers = [a for _, a in blast(ports, "burst")]
    assert len(answers) == 2 * CONNECTIONS * MESSAGES
    assert answers.count("DUNNO") == CAP
    assert all(a.startswith("DEFER_IF_PERMIT 4.7.1") for a in answers if a != "DUNNO")
    status = subprocess.run([sendguard_command(), "status", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert f"rolling hour    {CAP} of {CAP}" in status.stdout


def test_redis_stopped_under_load_defers_everything_then_resumes_without_restart(make_config, redis_server, redis_url):
    daemons = [service.start(c.config, c.policyd) for c in (make_config(STREAMS, store="redis", redis_url=redis_url),
                                                             make_config(STREAMS, store="redis", redis_url=redis_url))]  # fmt: skip
    try:
        ports = [d.port for d in daemons]
        errors_before = metrics.STORE_ERRORS._value.get()
        # Under load: 40 connections keep sending while Redis goes away.
        stopped_at: list[float] = []

        def stop_soon() -> None:
            time.sleep(0.3)
            redis_server.stop()
            stopped_at.append(time.monotonic())

        stopper = threading.Thread(target=stop_soon)
        stopper.start()
        answers = blast(ports, "load", messages=60)
        stopper.join()
        assert stopped_at, "Redis was not stopped"
        texts = [a for _, a in answers]
        assert len(texts) == 2 * CONNECTIONS * 60  # every request answered: no crash, no hang
        assert texts.count("DUNNO") <= CAP  # never capped mail past an unknown count
        assert all(a == "DUNNO" or a.startswith(("DEFER_IF_PERMIT 4.7.1", STORE_ERROR)) for a in texts)
        assert "DUNNO" in [a for sent, a in answers if sent < stopped_at[0]]  # it was counting before
        after = [a for sent, a in answers if sent > stopped_at[0]]
        assert after and all(a.startswith(STORE_ERROR) for a in after)
        assert metrics.STORE_ERRORS._value.get() - errors_before >= len(after)

        # Redis back on the same port (empty: this one keeps nothing): the same daemons count again.
        # Each daemon keeps failing at once for up to DOWN_SECONDS after its own last failure, so each
        # is probed until it counts (one counted probe per daemon).
        redis_server.start()
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                with PolicyClient(("127.0.0.1", port)) as client:
                    answer = [client.ask(r) for r in postfix_message(f"probe-{time.time()}", "QP", ["a@example.com"])][-1]
                if answer == "DUNNO":
                    break
                assert answer.startswith(STORE_ERROR)
                assert time.monotonic() < deadline, f"the daemon on port {port} did not resume"
                time.sleep(0.2)
        resumed = [a for _, a in blast(ports, "again", messages=1)]
        assert resumed.count("DUNNO") == 2 * CONNECTIONS
        assert daemons[1].store.windows("trucking", time.time()).hour == 2 * CONNECTIONS + len(ports)
    finally:
        for daemon in daemons:
            daemon.stop()
