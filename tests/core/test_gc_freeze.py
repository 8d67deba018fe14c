"""Start-up objects are frozen out of the garbage collector before a service takes requests.

Each command runs in its own interpreter, as an operator starts it, so the heap is the
daemon's own. The policy daemon really starts (sockets, store, metrics endpoint); for the
milter, libmilter's blocking main loop is replaced by a probe, since what is checked is the
heap at the moment that loop would start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ports import free_port

# Reports the collector's view of the heap where the command would block, then returns.
PROBE = textwrap.dedent(
    """
    import gc, json, sys
    from sendguard.cli import commands as cli
    from sendguard_milter import service as milter_service

    def report(*_args, **_kwargs):
        print(json.dumps({"frozen": gc.get_freeze_count(), "collectable": len(gc.get_objects())}))

    cli._wait_for_signal = report
    milter_service.run = report
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def config(tmp_path: Path) -> Path:
    path = tmp_path / "sendguard.toml"
    path.write_text(
        f"""
[general]
state_dir = "{tmp_path}/state"

[policyd]
listen = "127.0.0.1:{free_port()}"
metrics_listen = "127.0.0.1:{free_port()}"

[milter]
metrics_listen = "127.0.0.1:{free_port()}"
"""
    )
    return path


@pytest.mark.parametrize("command", ["policyd", "milter", "run"])
def test_start_up_heap_is_frozen_before_serving(tmp_path, command):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, command, "--config", str(config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not the repository root: its milter/ folder would shadow pymilter's milter module
    )
    assert result.returncode == 0, result.stderr
    heap = json.loads(result.stdout.strip().splitlines()[-1])
    # Tens of thousands of objects exist once a service has started; a full collection walks
    # only what was not frozen, which must be a small remainder, not the start-up heap.
    assert heap["frozen"] > 10_000, heap
    assert heap["collectable"] < heap["frozen"] // 10, heap
