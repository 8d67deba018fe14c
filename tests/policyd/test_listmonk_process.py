"""``sendguard run`` and ``sendguard policyd`` tell a configured Listmonk the cap; a Listmonk that is down changes nothing else.

The installed command, a real config file, the stand-in Listmonk and a
policy request over TCP.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from listmonk_standin import ListmonkStandin
from ports import free_port, wait_listening
from sendguard_testing.command import sendguard_command
from sendguard_testing.policy_client import PolicyClient, postfix_request


def write_config(tmp_path: Path, listmonk_url: str, policy: int, metrics: int, milter: int, extra: str = "") -> Path:
    token = tmp_path / "listmonk.token"
    token.write_text("api-token-1234\n")
    token.chmod(0o600)
    (tmp_path / "trucking.start").write_text(f"{int(time.time())}\n")  # warmup day 0: 50 an hour
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(f"""
[general]
state_dir = "{tmp_path}/state"

[streams.trucking]
ramp = [[0, 50], [2, 150]]
daily_cap = 4000
start_file = "trucking.start"
[streams.trucking.match]
server_port = [25]

[policyd]
listen = "127.0.0.1:{policy}"
metrics_listen = "127.0.0.1:{metrics}"

[release]
enabled = false

[milter]
listen = "inet:{milter}@127.0.0.1"

[listmonk.trucking]
url = "{listmonk_url}"
username = "sendguard"
password_file = "listmonk.token"
stream = "trucking"
interval = 5
{extra}""")
    return cfg


def scrape(port: int, name: str) -> str | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name):
            return line.rsplit(" ", 1)[1]
    return None


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"sendguard exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"{what} did not happen: {log.read_text()}"
        time.sleep(0.1)


def start(tmp_path: Path, command: str, listmonk_url: str, extra: str = "") -> tuple[subprocess.Popen, Path, int, int]:
    policy, metrics, milter = free_port(), free_port(), free_port()
    cfg = write_config(tmp_path, listmonk_url, policy, metrics, milter, extra)
    log = tmp_path / f"{command}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sendguard_command(), command, "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT)
    wait_listening(policy, proc, log.read_text)
    return proc, log, policy, metrics


@pytest.mark.parametrize("command", ["run", "policyd"])
def test_the_service_sets_listmonk_s_window_and_reports_it(tmp_path, command):
    standin = ListmonkStandin().start()
    proc, log, policy, metrics = start(tmp_path, command, standin.url)
    label = 'sendguard_listmonk_window_mismatch{listmonk="trucking"}'
    try:
        wait_for(lambda: standin.applied_window() == (True, 1, "150s"), "the window being applied", proc, log)
        wait_for(lambda: scrape(metrics, label) == "0.0", "the read-back", proc, log)
        assert scrape(metrics, 'sendguard_listmonk_updates_total{listmonk="trucking",result="applied"}') == "1.0"
        assert standin.secret_overwrites == [] and standin.wiped_keys == []
        text = log.read_text()
        assert "listmonk trucking: window 1 per 150s in force (read back)" in text
        assert "api-token-1234" not in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        standin.stop()


def test_listmonk_down_does_not_touch_the_policy_daemon(tmp_path):
    proc, log, policy, metrics = start(tmp_path, "policyd", f"http://127.0.0.1:{free_port()}")
    try:
        wait_for(lambda: "retrying (the policy daemon is not affected)" in log.read_text(), "the warning", proc, log)
        client = PolicyClient(("127.0.0.1", policy))
        assert client.ask(postfix_request(protocol_state="RCPT", server_port="25")) == "DUNNO"
        assert scrape(metrics, 'sendguard_listmonk_window_mismatch{listmonk="trucking"}') == "1.0"
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_sendguard_pause_and_resume_reach_listmonk_through_the_store(tmp_path):
    """The wiring of sendguard run: a pause put in the counter store by the CLI (as the watcher's
    rules put theirs) lowers Listmonk's window to the floor and pauses its campaign; the resume
    raises the window to the cap again and starts the campaign sendguard paused."""
    standin = ListmonkStandin().start()
    cid = standin.add_campaign("spring newsletter")
    proc, log, policy, metrics = start(tmp_path, "run", standin.url, "pause_campaigns = true\nresume_campaigns = true\n")
    cfg = str(tmp_path / "sendguard.toml")

    def cli(*args: str) -> str:
        done = subprocess.run([sendguard_command(), *args, "--config", cfg], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        wait_for(lambda: standin.applied_window() == (True, 1, "150s"), "the warmup window", proc, log)
        cli("pause", "trucking", "--for", "2h", "--reason", "Yahoo TSS04 seen by hand")
        # One sync interval (5 s) and the apply: Listmonk gets the floor and its campaign stops.
        wait_for(lambda: standin.applied_window() == (True, 1, "1h") and standin.status(cid) == "paused",
                 "the floor and the campaign's pause", proc, log, timeout=40)  # fmt: skip
        assert "Yahoo TSS04 seen by hand" in log.read_text()
        cli("resume", "trucking")
        wait_for(lambda: standin.applied_window() == (True, 1, "150s") and standin.status(cid) == "running",
                 "the window back at the cap and the campaign started again", proc, log, timeout=40)  # fmt: skip
        wait_for(lambda: scrape(metrics, 'sendguard_listmonk_window_mismatch{listmonk="trucking"}') == "0.0",
                 "the read-back", proc, log)  # fmt: skip
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        standin.stop()
