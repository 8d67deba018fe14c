"""`sendguard check-config`: the same check as start-up, run as the installed command."""

from __future__ import annotations

import subprocess
import time

from ports import free_port
from sendguard_testing.command import sendguard_command


def sendguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sendguard_command(), *args], capture_output=True, text=True, timeout=60)


def test_valid_config_prints_effective_configuration(tmp_path):
    (tmp_path / "t.start").write_text(f"{int(time.time()) - 3 * 86400}\n")
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(
        "[general]\n"
        f"state_dir = '{tmp_path}'\n"
        "[streams.trucking]\n"
        "ramp = [[0, 50], [2, 150]]\n"
        "daily_cap = 4000\n"
        "start_file = 't.start'\n"
        "[streams.trucking.match]\n"
        "server_port = [25]\n"
        "client_address = ['172.18.0.5']\n"
    )
    result = sendguard("check-config", str(cfg))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[streams.trucking]" in out
    assert "daily_cap = 4000" in out
    assert f'start_file = "{tmp_path}/t.start"' in out
    assert "# match: port 25, client 172.18.0.5/32" in out
    assert "[policyd]" in out and "[milter]" in out
    assert f"{cfg}: OK" in result.stderr


def test_check_config_lists_the_stop_signal_rules_in_force_built_in_ones_too(tmp_path):
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(
        "[general]\n"
        f"state_dir = '{tmp_path}'\n"
        "[stop_signals.gmail_unsolicited]\n"
        "threshold = 9\n"
        "[stop_signals.microsoft_s3150]\n"
        "enabled = false\n"
        "[stop_signals.local_block]\n"
        "pattern = 'blocked by policy'\n"
        "threshold = 4\n"
        "action = 'pause_stream'\n"
        "duration = 'until_resumed'\n"
    )
    result = sendguard("check-config", str(cfg))
    assert result.returncode == 0, result.stderr
    rules = [line for line in result.stdout.splitlines() if line.startswith("#   ")]
    # Untouched built-ins are shown as they run, changed ones with the change, then the new rule.
    assert "#   yahoo_tss04: /\\[TSS04\\]/ from yahoo, 1/h -> pause_stream for 3d, step back 2 day(s)" in rules
    assert any(r.startswith("#   gmail_unsolicited: /likely unsolicited mail/ from google, 9/h ") for r in rules)
    assert "#   microsoft_s3150: off" in rules
    assert "#   local_block: /blocked by policy/ from any operator, 4/h -> pause_stream until resumed," \
        " step back 0 day(s)" in rules


def test_invalid_config_exits_78_with_file_key_reason(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[streams.a.match]\nserver_port = [25]\n[streams.b.match]\nserver_port = [25]\n")
    result = sendguard("check-config", str(cfg))
    assert result.returncode == 78
    assert result.stdout == ""
    assert f"sendguard: config error: {cfg}: streams.b.match: overlaps stream 'a'" in result.stderr


def test_services_refuse_to_start_on_a_bad_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[policyd]\nlisten = 'nowhere'\n")
    for command in ("policyd", "milter", "run"):
        result = sendguard(command, "--config", str(cfg))
        assert result.returncode == 78, (command, result.stderr)
        assert "policyd.listen: 'nowhere' is not HOST:PORT" in result.stderr


def test_metrics_port_in_use_is_one_clear_line(tmp_path):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    listen_port = free_port()
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(
        f"[general]\nstate_dir = '{tmp_path}'\n[policyd]\n"
        f"metrics_listen = '127.0.0.1:{port}'\nlisten = '127.0.0.1:{listen_port}'\n"
    )
    try:
        result = sendguard("policyd", "--config", str(cfg))
    finally:
        busy.close()
    assert result.returncode == 69
    assert result.stderr.strip().endswith(f"sendguard: cannot serve metrics on 127.0.0.1:{port}: Address already in use")
