"""The daemon as an operator runs it: `sendguard policyd --config`, two processes on one SQLite file."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ports import free_port, wait_listening
from sendguard_testing.command import sendguard_command
from sendguard_testing.policy_client import PolicyClient, postfix_message

CAP = 40




def write_config(tmp_path: Path, name: str, db: Path, stamp: Path) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[general]
state_dir = "{tmp_path}/state-{name}"

[policyd]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{free_port()}"
database = "{db}"

[streams.trucking]
ramp = [[0, {CAP}], [2, 150]]
daily_cap = 4000
start_file = "{stamp}"
over_cap = "defer"

[streams.trucking.match]
server_port = [25]
"""
    )
    return path, port


def sendguard(*args: str) -> list[str]:
    return [sendguard_command(), *args]


@pytest.fixture
def two_daemons(tmp_path: Path):
    db = tmp_path / "shared" / "policyd.sqlite"
    stamp = tmp_path / "trucking.start"
    stamp.write_text(f"{int(time.time())}\n")  # warmup day 0: cap 40/h
    procs, ports = [], []
    for name in ("a", "b"):
        config, port = write_config(tmp_path, name, db, stamp)
        proc = subprocess.Popen(sendguard("policyd", "--config", str(config)), stderr=subprocess.PIPE)
        procs.append(proc)
        ports.append(port)
    try:
        for proc, port in zip(procs, ports):
            wait_listening(port, proc, lambda proc=proc: proc.stderr.read().decode())
        yield ports, tmp_path / "a.toml"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)


def test_two_processes_on_one_sqlite_file_never_exceed_the_cap(two_daemons):
    ports, config = two_daemons
    results: dict[int, list[str]] = {}

    def sender(worker: int, port: int) -> None:
        answers = []
        with PolicyClient(("127.0.0.1", port)) as client:
            for i in range(30):
                requests = postfix_message(f"w{worker}-{i}", f"Q{worker}X{i}", ["carrier@example.com"])
                answers.append([client.ask(r) for r in requests][-1])
        results[worker] = answers

    # First one message through each daemon in turn: both count into the one shared budget.
    # (Which daemon wins more of the burst below is up to the scheduler, so this is how
    # both are known to take part.)
    for n, port in enumerate(ports):
        with PolicyClient(("127.0.0.1", port)) as client:
            requests = postfix_message(f"first-{n}", f"QFIRST{n}", ["carrier@example.com"])
            assert [client.ask(r) for r in requests][-1] == "DUNNO"
    # Then four smtpd-like clients, two on each daemon, 120 messages for the 38 left, all at once.
    threads = [threading.Thread(target=sender, args=(w, ports[w % 2])) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    answers = [a for per in results.values() for a in per]
    assert len(answers) == 120
    assert answers.count("DUNNO") == CAP - 2
    assert all(a.startswith("DEFER_IF_PERMIT 4.7.1") for a in answers if a != "DUNNO")

    status = subprocess.run(sendguard("status", "--config", str(config)), capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert f"rolling hour    {CAP} of {CAP}" in status.stdout
    assert "warmup day      0" in status.stdout


def test_sigterm_stops_the_daemon_cleanly(tmp_path: Path):
    stamp = tmp_path / "s"
    stamp.write_text(f"{int(time.time())}")
    config, port = write_config(tmp_path, "solo", tmp_path / "db.sqlite", stamp)
    proc = subprocess.Popen(sendguard("policyd", "--config", str(config)), stderr=subprocess.PIPE)
    wait_listening(port, proc, lambda: proc.stderr.read().decode())
    with PolicyClient(("127.0.0.1", port)) as client:
        assert [client.ask(r) for r in postfix_message("x", "QX", ["a@example.com"])] == ["DUNNO", "DUNNO"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert b"policyd stopped" in proc.stderr.read()


def test_bad_config_stops_startup_with_file_key_and_reason(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('[policyd]\nunmatched = "maybe"\n')
    proc = subprocess.run(sendguard("policyd", "--config", str(path)), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert f"{path}: policyd.unmatched: 'maybe' is not one of dunno, defer" in proc.stderr


def test_out_of_file_descriptors_is_one_log_line_and_the_waiting_connections_are_served_later(tmp_path):
    # The daemon may open only 64 files. Connections beyond that wait in the listen backlog
    # (the kernel completes their handshake); the daemon must not spin on the listener or log
    # the failure over and over, and must serve the waiting ones once descriptors free up.
    import resource

    config, port = write_config(tmp_path, "fd", tmp_path / "fd.sqlite", tmp_path / "stamp")
    (tmp_path / "stamp").write_text(str(int(time.time())))
    log_path = tmp_path / "fd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            sendguard("policyd", "--config", str(config)),
            stderr=log,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
        )
    clients: list[PolicyClient] = []
    try:
        wait_listening(port, proc, lambda: proc.stderr.read().decode())
        for _ in range(80):  # more than the daemon can hold
            clients.append(PolicyClient(("127.0.0.1", port), timeout=30))
        time.sleep(3)  # three sweeps: the paused listener is retried each second
        assert proc.poll() is None
        failures = [line for line in log_path.read_text().splitlines() if "cannot accept connections" in line]
        assert len(failures) == 1, failures
        assert "Too many open files" in failures[0]
        # The first connections are served meanwhile; closing them lets the waiting ones in.
        assert clients[0].ask(postfix_message("m0", "Q0", ["a@example.com"])[0]) == "DUNNO"
        for client in clients[:40]:
            client.close()
        for i, client in enumerate(clients[40:]):
            assert client.ask(postfix_message(f"w{i}", f"W{i}", ["a@example.com"])[0]) == "DUNNO"
    finally:
        for client in clients:
            client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
