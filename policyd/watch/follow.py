"""Following Postfix's log file through rotations and restarts: every line once, none skipped.

The follower reads complete lines only: a line whose newline has not been
written yet stays in the file and is read once it is complete. After each
batch the watcher has handed on, :meth:`FileFollower.commit` saves the
position (``position.py``).

Rotation, both ways logrotate does it:

* **rename** (``mail.log`` → ``mail.log.1``, a new ``mail.log``; rsyslog's
  default on Debian): the path names a new inode. The old file, still open,
  is read to its end first and kept a moment (:data:`ROTATE_GRACE`) for lines
  the writer adds before it reopens; then the new file is read from its start.
* **copytruncate** (the file is copied to ``mail.log.1``, then truncated in
  place): the open file is shorter than the offset, or its first line is no
  longer the one it had. The lines between the offset and the copy are read
  from the copy (found by the fingerprint of its first line), then the file
  from its start.

After a restart the saved position is found again the same way: in the file
at the path if it is still the same one (same inode, same first line, not
shorter), else in a rotated sibling (``mail.log.1``, ``mail.log.2.gz``,
``mail.log-20240301``: found by inode, or by first line for a compressed or
copied one), which is read on from the saved offset, followed by every newer
sibling, then the file at the path from its start. A watcher stopped across
several rotations therefore still misses nothing that logrotate kept.

Problems (the log unreadable, the file vanished, the position file unusable)
are logged once each, with the cause, and retried at every poll.
"""

from __future__ import annotations

import errno
import gzip
import os
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Protocol

from sendguard import logs
from sendguard_policyd.watch import position as positions
from sendguard_policyd.watch.position import FINGERPRINT_BYTES, FilePosition, JournalPosition, PositionError

log = logs.get("watch")

#: Bytes read per :meth:`FileFollower.read` (a batch: a few thousand lines at most).
READ_BYTES = 256 * 1024
#: A "line" with no newline in this many bytes is handed on as it is (and will not parse).
MAX_LINE = 64 * 1024
#: Seconds a renamed log is read on after the path names a new file, for the writer's last lines.
ROTATE_GRACE = 2.0
#: Seconds the path may be missing before that is logged (rsyslog recreates it on its next write).
VANISHED_AFTER = 10.0


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of the log: a file's whole line, or a journal entry's message with its program and time."""

    text: str
    #: The journal's SYSLOG_IDENTIFIER; None for a line of a file (it is in the text).
    program: str | None = None
    #: The journal's time stamp (epoch seconds); None for a line of a file.
    at: float | None = None


class Follower(Protocol):
    """A source of Postfix's log lines with a position that survives restarts."""

    #: Whether the source could be read at the last look (the ``sendguard_watch_source_up`` gauge).
    up: bool

    def read(self) -> list[LogLine]:
        """The complete lines there now, in order (empty when there is nothing new); never blocks long."""
        ...

    def commit(self) -> None:
        """Every line :meth:`read` returned has been handed on: save the position after them."""
        ...

    def wait(self, stop: threading.Event) -> None:
        """Sleep until more lines may be there (a poll interval), or ``stop`` is set."""
        ...

    def close(self) -> None:
        """Stop reading (the position stays as last committed)."""
        ...


class _Source:
    """One open file being read: the followed log, or a rotated one being finished."""

    def __init__(self, path: str, fh: BinaryIO, st: os.stat_result, offset: int, compressed: bool) -> None:
        self.path = path
        self.fh = fh
        self.dev = st.st_dev
        self.inode = st.st_ino
        self.offset = offset
        self.compressed = compressed
        # The bytes read past the offset that do not end a line yet. Reading on from where the
        # last read stopped, never seeking back, keeps a compressed file from being decompressed
        # again from its start at every batch.
        self._carry = b""
        self.fingerprint = ""
        self.refresh_fingerprint()
        #: Until when (monotonic) a file renamed under us is read on for its writer's last lines;
        #: None for a file whose end is its end (found rotated at start, or a copytruncate copy).
        self.grace_until: float | None = None

    def head(self) -> bytes:
        self.fh.seek(0)
        return self.fh.read(FINGERPRINT_BYTES)

    def refresh_fingerprint(self) -> None:
        if not self.fingerprint:
            self.fingerprint = positions.fingerprint(self.head())

    def size(self) -> int:
        return os.fstat(self.fh.fileno()).st_size

    def restart_at(self, offset: int) -> None:
        """Read from ``offset`` on (the file was truncated, or a first start skips to its end)."""
        self.offset = offset
        self._carry = b""

    def read_lines(self) -> list[str]:
        """The complete lines after the offset (about :data:`READ_BYTES` at most); the offset moves past them."""
        if self.fh.tell() != self.offset + len(self._carry):
            self.fh.seek(self.offset)
            self._carry = b""
        data = self._carry + self.fh.read(READ_BYTES)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) < MAX_LINE:
                self._carry = data  # the last line is not complete yet
                return []
            end = len(data) - 1  # no newline in MAX_LINE bytes: hand it on as it is
        self._carry = data[end + 1 :]
        self.offset += end + 1
        self.refresh_fingerprint()
        return data[: end + 1].decode("utf-8", "replace").splitlines()

    def position(self, followed: str) -> FilePosition:
        """Where this file is read to, saved under the followed log's path (a rotated file is found by inode)."""
        return FilePosition(followed, self.dev, self.inode, self.offset, self.fingerprint)

    def close(self) -> None:
        self.fh.close()


def _open(path: str, offset: int = 0) -> _Source:
    """Open ``path`` for reading from ``offset`` (decompressing a gzip-compressed rotated file); OSError."""
    raw = open(path, "rb", buffering=0)
    try:
        st = os.fstat(raw.fileno())
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            return _Source(path, gzip.GzipFile(fileobj=raw), st, offset, compressed=True)  # type: ignore[arg-type]
        return _Source(path, raw, st, offset, compressed=False)
    except BaseException:
        raw.close()
        raise


def siblings(path: str) -> list[tuple[str, os.stat_result]]:
    """The rotated copies of ``path`` beside it (``NAME.1``, ``NAME.2.gz``, ``NAME-20240301``...), oldest first."""
    directory, base = os.path.split(os.path.abspath(path))
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        if name == base or not name.startswith((base + ".", base + "-")) or name.endswith((".tmp", ".position")):
            continue
        full = os.path.join(directory, name)
        try:
            st = os.stat(full)
        except OSError:
            continue
        if os.path.isfile(full):
            found.append((full, st))
    found.sort(key=lambda item: (item[1].st_mtime_ns, item[0]))
    return found


def _first_line_fingerprint(path: str) -> str:
    try:
        source = _open(path)
    except OSError:
        return ""
    try:
        return source.fingerprint
    except (OSError, EOFError, gzip.BadGzipFile):
        return ""
    finally:
        source.close()


class FileFollower:
    """The :class:`Follower` of a log file (see the module docstring)."""

    def __init__(
        self,
        path: str,
        position_file: str,
        start_at: str = "end",
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``start_at``: where a first start (no saved position for this file) begins, "end" or "beginning"."""
        self.path = path
        self.position_file = position_file
        self.start_at = start_at
        self.poll_interval = poll_interval
        self.clock = clock
        self.up = True
        #: Rotated files still to be read to their end, before the live one.
        self._queue: list[_Source] = []
        self._live: _Source | None = None
        #: Where a new live file starts: "saved" handled in _resume; then 0 for every later file.
        self._first_offset: str = start_at
        self._saved: FilePosition | None = None
        self._returned_from: _Source | None = None
        self._missing_since: float | None = None
        self._problems: dict[str, str] = {}
        self._resume()

    # -- problems: one line each, and one when it is over -------------------------------------------

    def _problem(self, kind: str, text: str) -> None:
        if self._problems.get(kind) != text:
            self._problems[kind] = text
            log.warning("%s", text)
        if kind in ("unreadable", "vanished"):
            self.up = False

    def _solved(self, kind: str, text: str) -> None:
        if self._problems.pop(kind, None) is not None:
            log.info("%s", text)
        if kind in ("unreadable", "vanished"):
            self.up = not any(k in self._problems for k in ("unreadable", "vanished"))

    # -- start: the saved position, found again ------------------------------------------------------

    def _resume(self) -> None:
        try:
            saved = positions.load(self.position_file)
        except PositionError as exc:
            self._problem("position", f"{exc}; starting at the {self.start_at} of {self.path}")
            saved = None
        if isinstance(saved, JournalPosition) or (saved is not None and saved.path != self.path):
            where = "the journal" if isinstance(saved, JournalPosition) else saved.path  # type: ignore[union-attr]
            log.info("position file %s is for %s, not %s: starting at the %s of %s",
                     self.position_file, where, self.path, self.start_at, self.path)  # fmt: skip
            saved = None
        if saved is None:
            return  # the live file opens at start_at on the first read
        self._saved = saved
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (saved.dev, saved.inode):
            try:
                live = _open(self.path, saved.offset)
            except OSError as exc:
                self._problem("unreadable", f"cannot read the mail log {self.path}: {exc.strerror or exc}")
                return
            unchanged = not saved.fingerprint or live.fingerprint == saved.fingerprint
            if unchanged and live.size() >= saved.offset:
                self._live = live
                self._saved = None
                log.info("watching %s from offset %d (where the last run stopped)", self.path, saved.offset)
                return
            live.close()  # truncated or rewritten in place while we were away (copytruncate)
        self._catch_up(saved, exclude=st)
        self._first_offset = "beginning"

    def _catch_up(self, saved: FilePosition, exclude: os.stat_result | None) -> None:
        """Queue the rotated file holding ``saved`` from its offset, and every newer sibling after it."""
        candidates = [(p, st) for p, st in siblings(self.path)
                      if exclude is None or (st.st_dev, st.st_ino) != (exclude.st_dev, exclude.st_ino)]  # fmt: skip
        found = next((i for i, (_, st) in enumerate(candidates) if (st.st_dev, st.st_ino) == (saved.dev, saved.inode)), None)
        if found is None and saved.fingerprint:
            found = next((i for i, (p, _) in enumerate(candidates) if _first_line_fingerprint(p) == saved.fingerprint), None)
        if found is None:
            if saved.offset:
                self._problem("lost", f"the mail log {self.path} was rotated while the watcher was stopped and no rotated"
                              f" file beside it holds the position saved in {self.position_file} (offset {saved.offset}):"
                              f" lines written after it and before the rotation are not counted")  # fmt: skip
            return
        for i, (p, _) in enumerate(candidates[found:]):
            try:
                source = _open(p, saved.offset if i == 0 else 0)
            except OSError as exc:
                self._problem("rotated", f"cannot read the rotated mail log {p}: {exc.strerror or exc}")
                continue
            self._queue.append(source)
        names = ", ".join(s.path for s in self._queue)
        log.info("watching %s: finishing the rotated file(s) %s first (the last run stopped in %s at offset %d)",
                 self.path, names, candidates[found][0], saved.offset)  # fmt: skip

    # -- reading ---------------------------------------------------------------------------------------

    def read(self) -> list[LogLine]:
        """The next batch of complete lines, from one file (see :class:`Follower`)."""
        self._returned_from = None
        while self._queue:
            source = self._queue[0]
            try:
                lines = source.read_lines()
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                self._problem("rotated", f"cannot read the rotated mail log {source.path} on: {exc}")
                self._queue.pop(0).close()
                continue
            if lines:
                if source.grace_until is not None:
                    source.grace_until = self.clock() + ROTATE_GRACE
                self._returned_from = source
                return [LogLine(text) for text in lines]
            if not self._finished(source):
                return []
            self._queue.pop(0).close()
        live = self._live or self._open_live()
        if live is None:
            return []
        try:
            self._check_live(live)
            live = self._live
            if live is None or self._queue:
                return self.read() if self._queue else []
            lines = live.read_lines()
        except OSError as exc:
            self._problem("unreadable", f"cannot read the mail log {self.path}: {exc.strerror or exc}")
            return []
        self._returned_from = live
        return [LogLine(text) for text in lines]

    def _finished(self, source: _Source) -> bool:
        """Whether a rotated file is done: at its end, and past the grace if it was renamed under us."""
        if source.grace_until is None:
            return True
        if self.clock() < source.grace_until:
            return False
        if not os.path.exists(self.path):
            self._note_missing()
            return False  # read on until the writer has made a new file
        return True

    def _open_live(self) -> _Source | None:
        try:
            live = _open(self.path)
        except FileNotFoundError:
            self._note_missing()
            return None
        except OSError as exc:
            self._problem("unreadable", f"cannot read the mail log {self.path}: {exc.strerror or exc}")
            return None
        self._solved("unreadable", f"the mail log {self.path} can be read again")
        self._solved("vanished", f"the mail log {self.path} is back")
        self._missing_since = None
        if self._first_offset == "end":
            live.restart_at(_end_of_last_line(live))
            log.info("watching %s from its end (no saved position: start_at = \"end\")", self.path)
        elif self._saved is None and self._first_offset == "beginning" and not self._queue:
            log.info("watching %s from its start", self.path)
        self._first_offset = "beginning"  # every later file (after a rotation) is read from its start
        self._live = live
        return live

    def _note_missing(self) -> None:
        now = self.clock()
        if self._missing_since is None:
            self._missing_since = now
        elif now - self._missing_since >= VANISHED_AFTER:
            self._problem("vanished", f"the mail log {self.path} vanished (deleted, or rotated and not created again):"
                          " waiting for it to appear")  # fmt: skip

    def _check_live(self, live: _Source) -> None:
        """Notice a rotation of the live file: renamed away, truncated or rewritten in place."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (live.dev, live.inode):
            # Renamed (or deleted): read it to its end, then the new file from its start.
            live.grace_until = self.clock() + ROTATE_GRACE
            self._queue.append(live)
            self._live = None
            self._first_offset = "beginning"
            return
        size = live.size()
        known = live.fingerprint
        if size >= live.offset and (not known or positions.fingerprint(live.head()) == known):
            return
        # Truncated in place (copytruncate): the lines after our offset are in the copy, if logrotate made one.
        copy = self._copy_of(live)
        if copy is not None:
            self._queue.append(copy)
        elif live.offset:
            log.info("the mail log %s was truncated in place; no rotated copy beside it holds its old lines past"
                     " offset %d (if there were any, they are not counted)", self.path, live.offset)  # fmt: skip
        live.restart_at(0)
        live.fingerprint = ""
        live.refresh_fingerprint()

    def _copy_of(self, live: _Source) -> _Source | None:
        for path, st in reversed(siblings(self.path)):  # newest first: the copy was just made
            if (st.st_dev, st.st_ino) == (live.dev, live.inode):
                continue
            if _first_line_fingerprint(path) != live.fingerprint:
                continue
            try:
                copy = _open(path, live.offset)
            except OSError as exc:
                self._problem("rotated", f"cannot read the rotated mail log {path}: {exc.strerror or exc}")
                return None
            log.info("the mail log %s was truncated in place (copytruncate): reading its copy %s on from offset %d first",
                     self.path, path, live.offset)  # fmt: skip
            return copy
        return None

    # -- the position ----------------------------------------------------------------------------------

    def commit(self) -> None:
        """Save the position after the last batch :meth:`read` returned."""
        source = self._returned_from
        if source is None:
            return
        self._returned_from = None
        try:
            positions.save(self.position_file, source.position(self.path))
        except PositionError as exc:
            self._problem("position_write", f"{exc}: a restart would hand on again the lines since the last save")
            return
        self._solved("position_write", f"position file {self.position_file} written again")

    def wait(self, stop: threading.Event) -> None:
        """Sleep a poll interval (the queue of rotated files is read on without waiting)."""
        stop.wait(self.poll_interval)

    def close(self) -> None:
        """Close every open file."""
        for source in self._queue:
            source.close()
        self._queue.clear()
        if self._live is not None:
            self._live.close()
            self._live = None


def _end_of_last_line(source: _Source) -> int:
    """The offset just after the file's last complete line (a line still being written is read when done)."""
    size = source.size()
    start = max(0, size - MAX_LINE)
    source.fh.seek(start)
    tail = source.fh.read(size - start)
    end = tail.rfind(b"\n")
    return start + end + 1 if end >= 0 else (size if size >= MAX_LINE else 0)
