"""Shared fixtures of the policy daemon tests: configs, free ports, captured log lines."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pytest

from ports import free_port
from redis_server import RedisServer
from sendguard.cli.settings import parse
from sendguard.cli.settings import Settings


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server for the test module (loopback, a free port, no persistence)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's Redis, emptied for this test (started again if a test stopped it)."""
    import redis

    if redis_server.proc is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Settings]:
    """Build validated Settings: ``streams`` as TOML-shaped dicts, ``policyd`` keys on top of test defaults."""

    def build(streams: dict[str, Any] | None = None, **policyd: Any) -> Settings:
        settings = {"listen": f"127.0.0.1:{free_port()}", "database": str(tmp_path / "state" / "policyd.sqlite")}
        settings.update(policyd)
        data: dict[str, Any] = {"general": {"state_dir": str(tmp_path / "state")}, "policyd": settings}
        if streams:
            data["streams"] = streams
        return parse(data, str(tmp_path / "sendguard.toml"))

    return build


@pytest.fixture
def start_daemon(make_config):
    """Start in-process daemons (``service.start``) for ``streams`` and ``policyd`` keys; all stopped after the test."""
    from sendguard_policyd import service

    handles = []

    def run(streams: dict[str, Any], **policyd: Any):
        config = make_config(streams, **policyd)
        handle = service.start(config.config, config.policyd)
        handles.append(handle)
        return config, handle

    yield run
    for h in handles:
        h.stop()


class LogLines(logging.Handler):
    """Collects the formatted lines the policy daemon logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def policyd_log():
    logger = logging.getLogger("sendguard.policyd")
    handler = LogLines()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
