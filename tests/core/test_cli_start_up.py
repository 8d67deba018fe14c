"""What the services say at start and on SIGHUP, run as the installed command."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from ports import free_port, wait_listening
from sendguard_testing.command import sendguard_command


def _wait_for(log: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in log:\n{log.read_text()}")


def _start(tmp_path: Path, command: str, config_text: str, port: int) -> tuple[subprocess.Popen, Path]:
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(config_text)
    log = tmp_path / f"{command}.log"
    fh = open(log, "wb")
    proc = subprocess.Popen([sendguard_command(), command, "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    wait_listening(port, proc, log.read_text)
    return proc, log


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    return proc.wait(timeout=15)


def test_run_without_keys_warns_that_bulk_mail_is_refused_and_names_the_metrics_port(tmp_path):
    policyd, milter, metrics = free_port(), free_port(), free_port()
    proc, log = _start(tmp_path, "run", (
        f"[general]\nstate_dir = '{tmp_path}'\n"
        f"[policyd]\nlisten = '127.0.0.1:{policyd}'\nmetrics_listen = '127.0.0.1:{metrics}'\n"
        f"[milter]\nlisten = 'inet:{milter}@127.0.0.1'\n"
    ), milter)  # fmt: skip
    try:
        text = _wait_for(log, "milter starting")
        assert f"INFO: metrics of the policy daemon and the milter on http://127.0.0.1:{metrics}/metrics" in text
        assert "WARNING: no signing keys configured ([signing.keys]): every bulk message will be refused" in text

        # SIGHUP reloads the milter and says the policy daemon's settings need a restart.
        proc.send_signal(signal.SIGHUP)
        text = _wait_for(log, "SIGHUP: configuration reloaded from")
        assert "WARNING: SIGHUP: the policy daemon does not reload its configuration" in text
        assert "restart it to apply changes" in text
    finally:
        assert _stop(proc) == 0


def test_policyd_alone_survives_sighup_and_says_a_restart_is_needed(tmp_path):
    port, metrics = free_port(), free_port()
    proc, log = _start(tmp_path, "policyd", (
        f"[general]\nstate_dir = '{tmp_path}'\n"
        f"[policyd]\nlisten = '127.0.0.1:{port}'\nmetrics_listen = '127.0.0.1:{metrics}'\n"
    ), port)  # fmt: skip
    try:
        assert f"metrics of the policy daemon on http://127.0.0.1:{metrics}/metrics" in _wait_for(log, "policyd listening")
        proc.send_signal(signal.SIGHUP)
        _wait_for(log, "SIGHUP: the policy daemon does not reload its configuration")
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        assert _stop(proc) == 0
