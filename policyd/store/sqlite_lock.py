"""The writers' lock of a SQLite store: this process's threads first, then an ``flock`` shared by processes.

Writers serialise on an ``flock`` of ``DATABASE.lock``: SQLite's own busy
handler sleeps in steps of milliseconds when two processes collide, where a
lock polled in tens of microseconds keeps the latency flat. A writer that
skips the flock (the sqlite3 shell) is still safe: it waits for, or is refused,
SQLite's write lock like any other.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time

from sendguard_policyd.store import StoreError

#: A write waits at most this long (seconds) for another process's write to finish.
LOCK_TIMEOUT = 10.0


class WritersLock:
    """``with lock:`` around every write of one store.

    One object per store, reused by every write: cheaper on the hot path than a
    generator-based context manager. A statement outside ``BEGIN`` is its own
    transaction (autocommit); holding the lock keeps another writer from slipping in
    between such a statement and the next. SQLite errors inside leave as :class:`StoreError`.
    """

    __slots__ = ("path", "_fd", "_threads")

    def __init__(self, path: str) -> None:
        """``path``: the store file (the lock is ``path + ".lock"``, created if needed)."""
        self.path = path
        self._fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            self._lock_file()
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def _lock_file(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        # Another process is writing (for ~0.1 ms, normally). Poll with a short, growing sleep
        # rather than block: a writer that is stopped (SIGSTOP) must not hang every daemon.
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.00005
        while True:
            time.sleep(delay)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"counter store {self.path}: locked by another process for {LOCK_TIMEOUT:g} s")
                delay = min(delay * 2, 0.002)

    def close(self) -> None:
        """Close the lock file."""
        try:
            os.close(self._fd)
        except OSError:
            pass
