"""A stand-in for Postfix's queue commands (``postqueue``, ``postsuper``, ``postconf``), for the releaser's tests.

The container suite proves the releaser against a real Postfix; these
stand-ins let unit tests drive the cases a real queue makes hard to arrange
(a crash between the claim and the release, postsuper failing, Postfix
stopped, a message near the end of its lifetime). They are small programs on
``PATH``, run as real processes by the releaser, and keep the queue in one
JSON file: ``{"queue": [{"queue_id", "queue_name", "arrival_time"}...],
"calls": [[argv...]...], "fail": ["postsuper"...], "lifetime": "5d"}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PROGRAM = r'''#!PYTHON
import fcntl, json, os, sys
state_path = os.environ["FAKE_POSTFIX_STATE"]
lock = open(state_path + ".lock", "a")
fcntl.flock(lock, fcntl.LOCK_EX)
with open(state_path) as fh:
    state = json.load(fh)
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
state["calls"].append([name, *args])
if args[:1] == ["-c"]:
    args = args[2:]
def save():
    with open(state_path + ".tmp", "w") as fh:
        json.dump(state, fh)
    os.replace(state_path + ".tmp", state_path)
if name in state.get("fail", []):
    state["calls"][-1].append("(failed)")
    save()
    sys.exit(f"{name}: fatal: stand-in told to fail")
if name == "postqueue" and args == ["-j"]:
    for entry in state["queue"]:
        print(json.dumps({**entry, "message_size": 1000, "sender": "bounce@send.example.net",
                          "recipients": [{"address": "carrier@example.com"}]}))
elif name == "postqueue" and args[:1] == ["-i"]:
    pass
elif name == "postsuper" and args[:1] == ["-H"]:
    for entry in state["queue"]:
        if entry["queue_id"] == args[1] and entry["queue_name"] == "hold":
            entry["queue_name"] = "deferred"
            break
    else:
        save()
        sys.exit(f"postsuper: warning: {args[1]}: no such file or directory")
elif name == "postconf" and args == ["-h", "maximal_queue_lifetime"]:
    print(state.get("lifetime", "5d"))
else:
    save()
    sys.exit(f"{name}: unexpected arguments {args}")
save()
'''


class FakePostfix:
    """The stand-ins in ``folder/bin`` and their shared state; put :attr:`bin` first on PATH."""

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state_file = folder / "postfix-state.json"
        with self._state() as state:
            state.update({"queue": [], "calls": [], "fail": [], "lifetime": "5d"})
        program = _PROGRAM.replace("PYTHON", sys.executable)
        for name in ("postqueue", "postsuper", "postconf"):
            path = self.bin / name
            path.write_text(program)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def env(self) -> dict[str, str]:
        """The environment a process needs to find the stand-ins."""
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_POSTFIX_STATE": str(self.state_file)}

    # The stand-ins run as the releaser's child processes while the test reads
    # and changes the queue: every read-modify-write holds one lock and every
    # write is a rename, so neither side ever sees a half-written file.
    @contextmanager
    def _state(self) -> Iterator[dict]:
        with open(f"{self.state_file}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
            yield state
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.state_file)

    def _read(self) -> dict:
        with self._state() as state:
            return state

    def hold(self, queue_id: str, arrival_time: float) -> None:
        """Put a message in the hold queue (as a HOLD answer makes Postfix do)."""
        with self._state() as state:
            state["queue"].append({"queue_id": queue_id, "queue_name": "hold", "arrival_time": arrival_time})

    def remove(self, queue_id: str) -> None:
        """Take a message out of the queue (``postsuper -d`` by an operator)."""
        with self._state() as state:
            state["queue"] = [e for e in state["queue"] if e["queue_id"] != queue_id]

    def fail(self, *programs: str) -> None:
        """Make these programs fail from now on (none: every one works again)."""
        with self._state() as state:
            state["fail"] = list(programs)

    def set_lifetime(self, value: str) -> None:
        with self._state() as state:
            state["lifetime"] = value

    def queue_of(self, queue_id: str) -> str | None:
        """The queue a message is in (None: not in Postfix's queue)."""
        return next((e["queue_name"] for e in self._read()["queue"] if e["queue_id"] == queue_id), None)

    def released(self) -> list[str]:
        """Queue ids ``postsuper -H`` released, in order."""
        return [c[-1] for c in self._read()["calls"] if c[0] == "postsuper" and "-H" in c and c[-1] != "(failed)"]

    def calls(self) -> list[list[str]]:
        return self._read()["calls"]
