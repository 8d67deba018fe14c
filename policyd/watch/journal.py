"""Following Postfix in the journal: ``journalctl -o json --follow``, the cursor saved across restarts.

journalctl is run with ``--after-cursor=`` the last entry handed on (saved in
the position file after each batch), so a restart neither repeats nor skips
an entry; a first start begins at the end (``-n 0``) or, with ``start_at =
"beginning"``, at the oldest entry kept (``--no-tail``). Entries are read by a
thread and handed on in batches; each becomes a line with the entry's own
program (``SYSLOG_IDENTIFIER``) and time (``__REALTIME_TIMESTAMP``).

If journalctl cannot run or exits (not installed, no permission to read the
journal, a bad unit), that is logged once, with its last words, and it is
started again, from the last cursor handed on, every :data:`RESTART_AFTER` seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import deque
from typing import Callable

from sendguard import logs
from sendguard_policyd.watch import position as positions
from sendguard_policyd.watch.follow import LogLine
from sendguard_policyd.watch.position import FilePosition, JournalPosition, PositionError

log = logs.get("watch")

#: Seconds before journalctl is started again after it exited.
RESTART_AFTER = 5.0
#: Entries per batch.
BATCH = 2000


def _message(value: object) -> str:
    """MESSAGE as text: the journal gives non-UTF-8 messages as a list of byte values."""
    if isinstance(value, list):
        return bytes(v for v in value if isinstance(v, int)).decode("utf-8", "replace")
    return str(value) if value is not None else ""


class JournalFollower:
    """The :class:`~sendguard_policyd.watch.follow.Follower` of the journal."""

    def __init__(
        self,
        position_file: str,
        unit: str = "postfix@-.service",
        directory: str = "",
        start_at: str = "end",
        poll_interval: float = 1.0,
        command: str = "journalctl",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.position_file = position_file
        self.unit = unit
        self.directory = directory
        self.start_at = start_at
        self.poll_interval = poll_interval
        self.command = command
        self.clock = clock
        self.up = True
        self._entries: deque[tuple[str, LogLine]] = deque()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._next_start = 0.0
        self._problem: str | None = None
        self._closed = False
        #: The cursor of the last entry handed on (read), and of the last one saved.
        self._cursor = self._load_cursor()
        self._saved = self._cursor
        self._start()

    def _load_cursor(self) -> str:
        try:
            saved = positions.load(self.position_file)
        except PositionError as exc:
            log.warning("%s; starting at the %s of the journal", exc, self.start_at)
            return ""
        if isinstance(saved, FilePosition):
            log.info("position file %s is for %s, not the journal: starting at the %s of the journal",
                     self.position_file, saved.path, self.start_at)  # fmt: skip
            return ""
        return saved.cursor if isinstance(saved, JournalPosition) else ""

    def _args(self) -> list[str]:
        args = [self.command, "-o", "json", "--follow", "--no-pager", "--quiet"]
        if self.directory:
            args += ["-D", self.directory]
        if self.unit:
            args += ["-u", self.unit]
        if self._cursor:
            args += [f"--after-cursor={self._cursor}", "--no-tail"]
        elif self.start_at == "beginning":
            args += ["--no-tail"]
        else:
            args += ["-n", "0"]
        return args

    def _start(self) -> None:
        self._next_start = self.clock() + RESTART_AFTER
        if shutil.which(self.command) is None:
            self._fail(f"cannot follow the journal: {self.command} is not installed (Debian package systemd)")
            return
        self._proc = subprocess.Popen(self._args(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read_from, args=(self._proc,), name="sendguard-journal", daemon=True)
        self._reader.start()

    def _fail(self, text: str) -> None:
        self.up = False
        if text != self._problem:
            self._problem = text
            log.warning("%s", text)

    def _read_from(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                entry = json.loads(raw)
                cursor = str(entry["__CURSOR"])
                at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
            except (ValueError, KeyError, TypeError):
                continue  # not an entry (journalctl's own notes): nothing to count
            program = _message(entry.get("SYSLOG_IDENTIFIER")) or _message(entry.get("_COMM"))
            line = LogLine(_message(entry.get("MESSAGE")), program=program, at=at)
            with self._lock:
                self._entries.append((cursor, line))
            self._ready.set()
        self._ready.set()

    def read(self) -> list[LogLine]:
        """The entries read so far and not handed on yet (at most :data:`BATCH`)."""
        out: list[LogLine] = []
        with self._lock:
            while self._entries and len(out) < BATCH:
                cursor, line = self._entries.popleft()
                self._cursor = cursor
                out.append(line)
            if not self._entries:
                self._ready.clear()
        if not out:
            self._check_process()
        elif self._problem is not None:
            log.info("the journal is read again")
            self._problem = None
            self.up = True
        return out

    def _check_process(self) -> None:
        proc = self._proc
        if self._closed or (proc is not None and proc.poll() is None):
            return
        if proc is not None:
            assert proc.stderr is not None
            words = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            self._fail(f"journalctl exited with status {proc.returncode}"
                       f"{': ' + words[-1] if words else ''}; starting it again in {RESTART_AFTER:g} s")  # fmt: skip
            self._proc = None
        if self.clock() >= self._next_start:
            self._start()

    def commit(self) -> None:
        """Save the cursor of the last entry handed on."""
        if self._cursor == self._saved:
            return
        try:
            positions.save(self.position_file, JournalPosition(self._cursor))
        except PositionError as exc:
            log.warning("%s: a restart would hand on again the entries since the last save", exc)
            return
        self._saved = self._cursor

    def wait(self, stop: threading.Event) -> None:
        """Until entries arrive, a poll interval passes, or (checked once after) ``stop``."""
        self._ready.wait(self.poll_interval)

    def close(self) -> None:
        """Stop journalctl."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
