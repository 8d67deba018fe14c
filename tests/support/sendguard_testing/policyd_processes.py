"""``sendguard policyd`` processes for tests: a config file each (own ports, a given store), started and stopped."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ports import free_port, wait_listening
from sendguard_testing.command import sendguard_command


def write_policyd_config(tmp_path: Path, name: str, store: str, streams: str) -> tuple[Path, int]:
    """Write ``tmp_path/NAME.toml`` (``store``: the store's ``[policyd]`` lines, ``streams``: TOML);
    return its path and the policy port."""
    port = free_port()
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[general]
state_dir = "{tmp_path}/state-{name}"

[policyd]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{free_port()}"
{store}

{streams}
"""
    )
    return path, port


@contextmanager
def policyd_processes(configs: Sequence[tuple[Path, int]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``sendguard policyd --config`` for each (config, port) until every one listens; SIGTERM them after."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for config, _ in configs:
            procs.append(subprocess.Popen([sendguard_command(), "policyd", "--config", str(config)], stderr=subprocess.PIPE))
        for proc, (_, port) in zip(procs, configs):
            wait_listening(port, proc, lambda proc=proc: proc.stderr.read().decode() if proc.stderr else "")
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)
