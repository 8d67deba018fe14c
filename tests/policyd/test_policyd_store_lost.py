"""The store's file deleted or replaced under running daemons: a store failure, never an empty window."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client import REGISTRY

from sendguard_testing.command import sendguard_command
from sendguard_testing.policy_client import PolicyClient, postfix_message
from sendguard_testing.policyd_processes import policyd_processes, write_policyd_config

CAP = 10
STORE_FAILED = "DEFER_IF_PERMIT 4.3.0 sendguard: counter store unavailable, try again later"


def end_of_message(client: PolicyClient, instance: str) -> str:
    return [client.ask(r) for r in postfix_message(instance, f"Q{instance.upper()}", ["carrier@example.com"])][-1]


def wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_daemons_whose_state_dir_is_deleted_pass_nothing_more_and_say_so(tmp_path: Path):
    db = tmp_path / "shared" / "policyd.sqlite"
    streams = f"""[streams.trucking]
ramp = [[0, {CAP}]]
start_date = 2026-01-01
over_cap = "defer"

[streams.trucking.match]
server_port = [25]
"""
    configs = [write_policyd_config(tmp_path, name, f'database = "{db}"', streams) for name in ("a", "b")]
    metrics_ports = [int(re.search(r'metrics_listen = "127.0.0.1:(\d+)"', c.read_text()).group(1)) for c, _ in configs]
    answers = []
    with policyd_processes(configs) as procs:
        for n in range(CAP):
            with PolicyClient(("127.0.0.1", configs[n % 2][1])) as client:
                answers.append(end_of_message(client, f"before{n}"))
        assert answers == ["DUNNO"] * CAP
        shutil.rmtree(db.parent)  # the operator's rm -rf of the state directory

        def lost(port: int) -> bool:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            return "sendguard_policyd_store_file_lost 1.0" in body and "sendguard_policyd_store_up 0.0" in body

        wait_for(lambda: all(lost(p) for p in metrics_ports))
        after = []
        for n in range(2 * CAP):
            with PolicyClient(("127.0.0.1", configs[n % 2][1])) as client:
                after.append(end_of_message(client, f"after{n}"))
        assert after == [STORE_FAILED] * (2 * CAP)
        # One daemon restarted (the repro: 100 more passed in the same hour): it must not
        # make an empty store beside the daemon that still counts in the deleted one.
        third, _ = write_policyd_config(tmp_path, "c", f'database = "{db}"', streams)
        restarted = subprocess.run([sendguard_command(), "policyd", "--config", str(third)],
                                   capture_output=True, text=True, timeout=60)  # fmt: skip
        assert restarted.returncode == 78, restarted.stderr
        assert "policyd.database: counter store" in restarted.stderr
        assert "still count in a file of that name that was deleted or moved" in restarted.stderr
        assert not db.exists()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        logs = [proc.communicate(timeout=20)[1].decode() for proc in procs]
    for log in logs:
        lines = [line for line in log.splitlines() if "was deleted while the daemon had it open: its counts" in line]
        assert len(lines) == 1, log  # loudly, once (each deferral has its own ERROR line too)
        assert "ERROR" in lines[0] and "answered as a store failure" in lines[0] and "restart the daemons" in lines[0]
        assert "checkpoint failed" not in log
    # Once every daemon that knew the lost counts has stopped, a new start makes an empty store.
    with policyd_processes([write_policyd_config(tmp_path, "d", f'database = "{db}"', streams)]):
        assert db.exists()


def test_the_same_file_moved_back_resumes_counting(start_daemon, policyd_log):
    streams = {"trucking": {"match": {"server_port": [25]}, "ramp": [[0, CAP]], "start_date": dt.date(2026, 1, 1),
                            "over_cap": "defer"}}  # fmt: skip
    config, handle = start_daemon(streams)
    db = Path(config.policyd.database)
    with PolicyClient((handle.host, handle.port)) as client:
        assert end_of_message(client, "m0") == "DUNNO"
        db.rename(db.with_name("moved.sqlite"))
        wait_for(lambda: REGISTRY.get_sample_value("sendguard_policyd_store_file_lost") == 1)
        assert end_of_message(client, "m1") == STORE_FAILED
        db.with_name("moved.sqlite").rename(db)
        wait_for(lambda: REGISTRY.get_sample_value("sendguard_policyd_store_file_lost") == 0)
        assert end_of_message(client, "m2") == "DUNNO"
    assert handle.store.windows("trucking", time.time()).hour == 2
    assert policyd_log.matching("was deleted while the daemon had it open")
    assert policyd_log.matching("is back at its path: counting again")
