"""``sendguard pause`` / ``resume`` against a running ``sendguard policyd``, over its real socket, on both stores."""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import pytest

from sendguard_testing.command import sendguard_command
from sendguard_testing.policy_client import PolicyClient, postfix_request
from sendguard_testing.policyd_processes import policyd_processes, write_policyd_config

STREAMS = """
[streams.trucking]
ramp = [[0, 1000]]
start_date = 2026-01-01
[streams.trucking.match]
server_port = [25]

[streams.healthcare]
ramp = [[0, 1000]]
start_date = 2026-01-01
[streams.healthcare.match]
server_port = [2526]
"""
#: How long the daemon may take to see a change of the store (it reads it about once a second).
PICK_UP = 15.0
_instances = itertools.count()


def sendguard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sendguard_command(), *args, "--config", str(config)], capture_output=True, text=True, timeout=60)


def eom(client: PolicyClient, recipient: str = "carrier@example.com", port: str = "25") -> str:
    n = next(_instances)
    return client.ask(postfix_request(protocol_state="END-OF-MESSAGE", instance=f"i{n}", queue_id=f"Q{n}",
                                      recipient=recipient, recipient_count="1", server_port=port))  # fmt: skip


def answer_becomes(client: PolicyClient, wanted: str, **message: str) -> str:
    """Ask with new messages until the answer starts with ``wanted`` (the daemon has seen the change)."""
    deadline = time.monotonic() + PICK_UP
    while True:
        action = eom(client, **message)
        if action.startswith(wanted) or time.monotonic() > deadline:
            return action
        time.sleep(0.1)


@pytest.fixture(params=["sqlite", "redis"])
def daemon_config(request, tmp_path: Path):
    store = f'store = "redis"\nredis_url = "{request.getfixturevalue("redis_url")}"' if request.param == "redis" else ""
    config, port = write_policyd_config(tmp_path, "pause", store, STREAMS)
    with policyd_processes([(config, port)]):
        yield config, port


def test_a_pause_by_hand_holds_the_running_daemons_new_mail_until_resumed(daemon_config):
    config, port = daemon_config
    with PolicyClient(("127.0.0.1", port)) as client:
        assert eom(client) == "DUNNO"
        made = sendguard(config, "pause", "trucking", "--for", "2h", "--reason", "421 [TSS04] seen in mail.log")
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith("paused all of trucking's mail: since ")
        assert "rule manual: 421 [TSS04] seen in mail.log" in made.stdout
        held = answer_becomes(client, "HOLD")
        assert held.startswith("HOLD sendguard: stream trucking is paused (rule manual, until ")
        assert held.endswith("421 [TSS04] seen in mail.log; held, released when the pause ends")
        assert eom(client, port="2526") == "DUNNO"  # the other stream flows
        status = sendguard(config, "status")
        trucking = status.stdout.split("stream trucking:")[1].split("stream healthcare:")[0]
        assert "paused          all of trucking's mail: since " in trucking
        assert "rule manual: 421 [TSS04] seen in mail.log" in trucking
        assert "held backlog    " in trucking and "held by a pause" in trucking
        assert "paused          no" in status.stdout.split("stream healthcare:")[1]
        ended = sendguard(config, "resume", "trucking")
        assert ended.returncode == 0, ended.stderr
        assert ended.stdout.startswith("resumed all of trucking's mail")
        assert answer_becomes(client, "DUNNO") == "DUNNO"


def test_an_operator_pause_by_hand_holds_only_that_operators_mail(daemon_config):
    config, port = daemon_config
    made = sendguard(config, "pause", "trucking", "--operator", "google", "--reason", "Postmaster Tools: reputation bad")
    assert made.returncode == 0, made.stderr
    with PolicyClient(("127.0.0.1", port)) as client:
        held = answer_becomes(client, "HOLD", recipient="bob@gmail.com")
        assert held.startswith("HOLD sendguard: stream trucking's mail to google is paused (rule manual, until resumed)")
        assert eom(client, recipient="bob@outlook.com") == "DUNNO"
        # Resuming the whole stream leaves the operator's pause: said so, and still held.
        whole = sendguard(config, "resume", "trucking")
        assert "no pause of all of trucking's mail was in force" in whole.stdout
        assert "still paused: trucking's mail to google: since " in whole.stdout
        assert sendguard(config, "resume", "trucking", "--operator", "google").returncode == 0
        assert answer_becomes(client, "DUNNO", recipient="bob@gmail.com") == "DUNNO"


def test_the_commands_refuse_what_would_pause_nothing(tmp_path: Path):
    config, _ = write_policyd_config(tmp_path, "refuse", "", STREAMS)
    cases = {
        ("pause", "truckin", "--reason", "x"): "sendguard pause: no stream 'truckin' in the config (streams: trucking, healthcare)",
        ("pause", "trucking", "--operator", "gogle", "--reason", "x"): "sendguard pause: 'gogle' is not a receiving operator (known: google, microsoft, other, yahoo)",
        ("pause", "trucking", "--for", "3 days", "--reason", "x"): "sendguard pause: --for: '3 days' is not a duration",
        ("pause", "trucking", "--reason", "  "): "sendguard pause: --reason cannot be empty",
        ("resume", "nope"): "sendguard resume: no stream 'nope' in the config",
    }  # fmt: skip
    for args, line in cases.items():
        run = sendguard(config, *args)
        assert run.returncode == 64, (args, run.stdout, run.stderr)
        assert run.stderr.startswith(line), (args, run.stderr)
    assert not (tmp_path / "state-refuse" / "policyd.sqlite").exists()  # nothing was written anywhere
