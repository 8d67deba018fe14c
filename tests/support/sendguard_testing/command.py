"""The installed ``sendguard`` command, for tests and benchmarks that start it as a process."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def sendguard_command() -> str:
    """Path of the ``sendguard`` console script of the environment running the tests.

    Looked up beside the interpreter first: ``.venv/bin/pytest`` run without
    activating the venv has no ``sendguard`` on PATH, or finds another one there.
    """
    beside = Path(sys.executable).parent / "sendguard"
    if beside.exists():
        return str(beside)
    found = shutil.which("sendguard")
    assert found, "the sendguard command is not installed (pip install -e .)"
    return found
