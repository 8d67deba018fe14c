"""The end-to-end stack: a real Postfix, sendguard, a sink and the injectors, in containers.

One session fixture (``stack``) detects the engine, generates the DKIM test
keys, builds the images once, brings ``docker-compose.test.yml`` up once and
tears it down at the end. Every test talks to it through the :class:`Stack`
helpers: submit over SMTP from an injector container, read what the sink
stored, look into Postfix's queue and logs, scrape the metrics endpoint.

There is no skip: without a working engine the fixture fails with what to do.
Set ``SENDGUARD_E2E_KEEP=1`` to leave the stack running after the run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

# The helpers live next to this file; importlib mode keeps it off sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_stack import (  # noqa: E402
    COMPOSE_FILE,
    CONTAINERS,
    PROJECT,
    REPO,
    SENDGUARD_UID,
    TEST_CONFIG,
    TIMINGS,
    Engine,
    Stack,
    container,
    detect_engine,
    generate_keys,
    wait_for_stack,
)

# -- fixtures -------------------------------------------------------------------------------------------


def _local_ca_certs() -> str:
    """PEM text of the host's locally added CAs (a TLS-re-signing proxy to PyPI), for the image build."""
    certs = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    return "".join(p.read_text() for p in certs if p.is_file())


def _compose(engine: Engine, env: dict[str, str], *args: str, timeout: float = 1800) -> None:
    cmd = [*engine.compose, "-f", str(COMPOSE_FILE), "-p", PROJECT, *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=timeout)
    TIMINGS[f"compose {args[0]}"] = TIMINGS.get(f"compose {args[0]}", 0) + time.monotonic() - started
    if proc.returncode != 0:
        raise AssertionError(
            f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout.decode(errors='replace')[-3000:]}"
            f"\n{proc.stderr.decode(errors='replace')[-3000:]}"
        )


_STACK: Stack | None = None


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The running end-to-end stack, built and started once per test run."""
    global _STACK
    engine = detect_engine()
    # The stack has fixed names and addresses: a second run on the same machine waits
    # for the first instead of tearing its stack down.
    lock = open(Path(tempfile.gettempdir()) / f"{PROJECT}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    work = Path(tempfile.mkdtemp(prefix="sendguard-e2e-"))
    keys, spool, state = work / "keys", work / "spool", work / "state"
    keys.mkdir()
    spool.mkdir()
    spool.chmod(0o777)
    state.mkdir()
    # A copy, so that switching the store (Stack.use_store) never touches the repository's file.
    config = work / "sendguard.toml"
    shutil.copyfile(TEST_CONFIG, config)
    config.chmod(0o644)
    dns = generate_keys(keys)
    env = dict(os.environ)
    env["SENDGUARD_E2E_KEYS"] = str(keys)
    env["SENDGUARD_E2E_SPOOL"] = str(spool)
    env["SENDGUARD_E2E_STATE"] = str(state)
    env["SENDGUARD_E2E_CONFIG"] = str(config)
    env["SENDGUARD_BUILD_CA_CERTS"] = _local_ca_certs()
    if os.geteuid() == 0:
        # The keys are 0600, as the milter demands; give them to the image's user.
        for p in (keys, *keys.iterdir()):
            os.chown(p, SENDGUARD_UID, SENDGUARD_UID)
        keys.chmod(0o700)
        # The store belongs to the policy daemon's user; the releaser (root) joins it.
        os.chown(state, SENDGUARD_UID, SENDGUARD_UID)
        state.chmod(0o750)
    else:
        # Docker as a member of the docker group: the daemon maps no uids, so
        # sendguard runs as the invoking user, who owns the keys.
        env["SENDGUARD_E2E_UID"] = str(os.getuid())

    leftovers = subprocess.run(
        [engine.cli, "ps", "-a", "-q", "--filter", f"name={PROJECT}-"], capture_output=True, text=True
    ).stdout.split()
    if leftovers:  # an aborted run left its stack behind
        _compose(engine, env, "down", "-t", "2")
    _STACK = Stack(engine=engine, spool=spool, dns=dns, state=state, config=config)
    try:
        # The postfix image copies the releaser's install from the sendguard image: that one first.
        _compose(engine, env, "build", "sendguard")
        _compose(engine, env, "build")
        _compose(engine, env, "up", "-d")
        started = time.monotonic()
        wait_for_stack(_STACK)
        TIMINGS["stack ready after up"] = time.monotonic() - started
        yield _STACK
    finally:
        if os.environ.get("SENDGUARD_E2E_KEEP") != "1":
            _compose(engine, env, "down", "-t", "5")
            shutil.rmtree(work, ignore_errors=True)
        _STACK = None
        lock.close()  # releases the lock


@pytest.fixture
def token() -> str:
    """A unique string to find one test's messages in the sink, the queue and the logs."""
    return "e2e-" + uuid.uuid4().hex[:12]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach every container's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _STACK is not None and "container" in item.keywords:
        for service in CONTAINERS:
            try:
                text = _STACK.logs(service)
            except Exception as exc:  # the engine itself may be what failed
                text = f"(could not read the log: {exc})"
            report.sections.append((f"{_STACK.engine.cli} logs {container(service)}", text[-12000:]))


def pytest_terminal_summary(terminalreporter):
    """Print how long the image builds and the stack start took."""
    if TIMINGS:
        terminalreporter.write_sep("-", "container stack timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}s")




# -- CI: the container suite must have run ----------------------------------------------------------------

_LEFT_OUT: list[str] = []


def pytest_deselected(items) -> None:
    """Remember container tests left out by -m/-k."""
    _LEFT_OUT.extend(item.nodeid for item in items if "container" in item.keywords)


def pytest_runtest_logreport(report) -> None:
    """Remember container tests that were skipped instead of run."""
    if report.skipped and "container" in report.keywords:
        _LEFT_OUT.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Under CI (the CI variable set), a run that left out any container test fails."""
    if os.environ.get("CI") and _LEFT_OUT:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"CI: {len(_LEFT_OUT)} container test(s) were deselected or skipped"
                f" (first: {_LEFT_OUT[0]}); the container suite must run in CI.",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
