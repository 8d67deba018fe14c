"""Two ``sendguard policyd`` processes on one SQLite file, cap 100, 1,000 messages from 40
connections at once; one daemon is killed with SIGKILL mid-burst.

Every message whose answer was lost is asked again, with the same ``instance``, on the
surviving daemon (as smtpd's policy client does), and one message in ten is also asked on a
second connection of the other daemon at the same time (a concurrent retry). What must hold:
every message is answered; exactly 100 distinct messages pass (``over_cap = "defer"``) and the
store counts 100; no message is both passed and refused. With ``over_cap = "hold"``: never more
than 100 pass, and every held message is recorded for the releaser.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from sendguard.cli.settings import load
from sendguard_policyd.backend import open_store
from sendguard_testing.policy_client import PolicyClient, postfix_message
from sendguard_testing.policy_fuzz import policyd_process, stopped_on_sigterm
from sendguard_testing.policyd_processes import write_policyd_config

CAP = 100
MESSAGES = 1000
CONNECTIONS = 20  # per daemon


def stream_toml(over_cap: str) -> str:
    return f"""[streams.trucking]
hourly_ceiling = {CAP}
daily_cap = 4000
over_cap = "{over_cap}"

[streams.trucking.match]
server_port = [25]
"""


def burst(ports: list[int], victim: subprocess.Popen[bytes], kill_after: int, seed: int) -> dict[str, list[str]]:
    """Send MESSAGES messages over CONNECTIONS connections per daemon; SIGKILL ``victim`` (the
    daemon on ports[1]) once ``kill_after`` END-OF-MESSAGE answers are in. Returns the answers per instance."""
    rng = random.Random(seed)
    queues: list[list[int]] = [[] for _ in range(2 * CONNECTIONS)]
    for m in range(MESSAGES):
        home = rng.randrange(2 * CONNECTIONS)
        queues[home].append(m)
        if rng.random() < 0.1:  # the same message at the same time on the other daemon
            queues[(home + CONNECTIONS) % (2 * CONNECTIONS)].append(m)
    answers: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()
    count = [0]
    retried = [0]
    killed_at = [0]
    errors: list[BaseException] = []
    go = threading.Event()

    def ask(port: int, m: int) -> str:
        with PolicyClient(("127.0.0.1", port), timeout=10) as client:
            requests = postfix_message(f"kill9-{seed}-{m}", f"K{seed}X{m}", ["carrier@example.com"])
            for request in requests[:-1]:
                assert client.ask(request) == "DUNNO"
            return client.ask(requests[-1])

    def connection(n: int) -> None:
        port = ports[n // CONNECTIONS]
        try:
            go.wait()
            for m in queues[n]:
                try:
                    answer = ask(port, m)
                except OSError:  # the daemon is gone (ConnectionError too): smtpd retries elsewhere
                    port = ports[0]
                    answer = ask(port, m)
                    with lock:
                        retried[0] += 1
                with lock:
                    answers[f"kill9-{seed}-{m}"].append(answer)
                    count[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def killer() -> None:
        while count[0] < kill_after and any(t.is_alive() for t in threads):
            time.sleep(0.001)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at[0] = count[0]

    threads = [threading.Thread(target=connection, args=(n,)) for n in range(2 * CONNECTIONS)]
    for t in threads:
        t.start()
    kill = threading.Thread(target=killer)
    kill.start()
    go.set()
    for t in threads:
        t.join(120)
    kill.join(10)
    assert not errors, errors[0]
    assert victim.wait(10) == -signal.SIGKILL
    assert killed_at[0] < MESSAGES // 2 and retried[0] > 0  # killed mid-burst, its messages asked again
    return answers


@pytest.mark.parametrize("over_cap, kill_after", [("defer", 30), ("defer", 95), ("hold", 60)])
def test_kill_9_of_one_daemon_mid_burst_with_retries_of_the_same_instance(tmp_path: Path, over_cap: str, kill_after: int):
    db = tmp_path / "shared" / "policyd.sqlite"
    configs = [write_policyd_config(tmp_path, name, f'database = "{db}"', stream_toml(over_cap)) for name in ("a", "b")]
    procs = [policyd_process(config, port, tmp_path / f"policyd{n}.log") for n, (config, port) in enumerate(configs)]
    try:
        answers = burst([port for _, port in configs], procs[1], kill_after, seed=kill_after)
    finally:
        for proc in procs:
            stopped_on_sigterm(proc, 20)
    assert len(answers) == MESSAGES  # every message answered, none lost with the killed daemon
    refused = "DEFER_IF_PERMIT 4.7.1" if over_cap == "defer" else "HOLD sendguard: stream trucking"
    passed = {i for i, got in answers.items() if "DUNNO" in got}
    mixed = {i: got for i, got in answers.items() if "DUNNO" in got and len(set(got)) > 1}
    assert not mixed, list(mixed.items())[:3]  # a retry never changes an answer
    assert all(a == "DUNNO" or a.startswith(refused) for got in answers.values() for a in got)

    store = open_store(load(configs[0][0]).policyd)
    try:
        counted = store.windows("trucking", time.time()).hour
        held = {h.instance for h in store.held_messages("trucking")}
    finally:
        store.close()
    if over_cap == "defer":
        assert len(passed) == CAP and counted == CAP
    else:
        assert len(passed) <= CAP and counted == len(passed)
        on_hold = {i for i, got in answers.items() if got[0].startswith(refused)}
        assert on_hold == held and len(on_hold) == MESSAGES - len(passed)
