"""Noticing that the SQLite store's file was deleted or replaced while a daemon has it open.

A daemon keeps writing to the file it opened, whatever happens to its path:
after ``rm -rf`` of the state directory it counts on in a deleted file that no
other daemon and no ``sendguard status`` sees, and a daemon started afterwards
makes a new, empty one at the path. Two sets of windows would then pass twice
the cap. So the background thread compares, once a second, the device and
inode of the path (and of its lock file: daemons that lock different files no
longer serialise) with the files the store holds open. When they differ the
store refuses every read and write with a :class:`StoreError` (the decision
answers the stream's ``on_store_error``, never an empty window), logs it once
at ERROR and sets ``sendguard_policyd_store_file_lost``.

Recovery: if the very same file comes back at the path (moved back), the
store resumes by itself and says so. Anything else (a new file, a restored
copy) needs a restart of the daemons, and the log line says so: only a restart
opens the file now at the path, and what the lost file counted is not in it.
"""

from __future__ import annotations

import os

from sendguard import logs
from sendguard_policyd import metrics

log = logs.get("policyd")


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class FileWatch:
    """The (device, inode) of the store file and its lock file as opened, checked against their paths."""

    def __init__(self, path: str, lock_fd: int) -> None:
        """``path``: the store file, just opened; ``lock_fd``: the open lock file (``path + ".lock"``)."""
        self.path = path
        self._opened = {path: _identity(os.stat(path)), path + ".lock": _identity(os.fstat(lock_fd))}
        #: Why the store refuses to count (None: the files are the ones opened).
        self.lost: str | None = None
        metrics.STORE_FILE_LOST.set(0)

    def check(self) -> str | None:
        """Compare the paths with the open files; log and export a change (once); return ``lost``."""
        problem = None
        for name, opened in self._opened.items():
            try:
                now = _identity(os.stat(name))
            except FileNotFoundError:
                problem = f"{name} was deleted while the daemon had it open"
                break
            except OSError as exc:
                problem = f"{name} cannot be checked ({exc.strerror or exc})"
                break
            if now != opened:
                problem = f"{name} was replaced by another file while the daemon had it open"
                break
        if problem is not None and self.lost is None:
            self.lost = f"counter store {self.path}: {problem}"
            metrics.STORE_FILE_LOST.set(1)
            log.error(
                "%s: its counts are no longer the ones other daemons and sendguard status see, so from now"
                " on every message is answered as a store failure (on_store_error), never as an empty window."
                " Move the same file back to resume, or restart the daemons to count on the file at that path"
                " (what the lost file counted is not in a new one)",
                self.lost,
            )
        elif problem is None and self.lost is not None:
            log.warning("counter store %s: the file the daemon opened is back at its path: counting again", self.path)
            self.lost = None
            metrics.STORE_FILE_LOST.set(0)
        return self.lost
