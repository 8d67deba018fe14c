"""The writers' lock of a SQLite store: this process's threads first, then an ``flock`` shared by processes.

Writers serialise on an ``flock`` of ``DATABASE.lock``: SQLite's own busy
handler sleeps in steps of milliseconds when two processes collide, where a
lock polled in tens of microseconds keeps the latency flat. A writer that
skips the flock (the sqlite3 shell) is still safe: it waits for, or is refused,
SQLite's write lock like any other.

The event loop's thread must never wait long for the lock: one loop serves
every connection, and a lock held by another process (a backup, the sqlite3
shell, a stuck peer) would stall them all, request after request. Writes from
that thread (see :meth:`WritersLock.never_wait_in_this_thread`) try the lock
for at most :data:`LOOP_SPIN` and then raise :class:`StoreBusy`; the loop parks
the request and asks :meth:`WritersLock.wait_off_loop` to wait for the lock on
a thread of its own. Once that thread has the lock it hands it to the loop,
which decides the parked requests holding it (:meth:`WritersLock.loop_holds`);
if the wait runs out, the loop decides them with every write failing at once
(:class:`StoreError`), which the decision answers with the stream's
``on_store_error``. Only one writer at a time either way: the hand-over keeps
both the thread lock and the ``flock`` held until the loop releases them.

A writer that skips the ``flock`` (the ``sqlite3`` shell in ``BEGIN IMMEDIATE``,
a backup tool) holds SQLite's own write lock instead. The loop's connection has
no busy timeout (the store sets it to 0 for that thread), so SQLite answers
"database is locked" at once, and that too becomes :class:`StoreBusy` here:
the request is parked in the same way, and the waiting thread, once it has the
``flock``, also waits for SQLite's write lock to be free (trying ``BEGIN
IMMEDIATE`` on a connection of its own) before it hands over. Should such a
writer take SQLite's lock again between the hand-over and the loop's write, the
loop's write is refused at once again and the request is parked again (with its
first deadline): the loop never waits for it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Callable

from sendguard_policyd.store import StoreBusy, StoreError

#: A write waits at most this long (seconds) for another process's write to finish.
LOCK_TIMEOUT = 10.0
#: The event loop's thread tries the lock this long (seconds) before it parks the request:
#: another daemon's write holds it for ~0.1 ms, so parking is for a lock held far longer.
LOOP_SPIN = 0.0005

# What a write from the loop's thread does (see the module docstring).
_TRY = 0  # try briefly, else StoreBusy
_HELD = 1  # the loop holds the lock already (handed over): go ahead
_FAIL = 2  # the off-loop wait ran out: fail at once


class WritersLock:
    """``with lock:`` around every write of one store.

    One object per store, reused by every write: cheaper on the hot path than a
    generator-based context manager. A statement outside ``BEGIN`` is its own
    transaction (autocommit); holding the lock keeps another writer from slipping in
    between such a statement and the next. SQLite errors inside leave as :class:`StoreError`.
    """

    __slots__ = ("path", "_fd", "_threads", "_loop", "_mode", "_waiting", "refuse", "_probe")

    def __init__(self, path: str) -> None:
        """``path``: the store file (the lock is ``path + ".lock"``, created if needed)."""
        self.path = path
        self._fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._threads = threading.Lock()
        #: The thread id of the event loop (None: every thread may wait).
        self._loop: int | None = None
        self._mode = _TRY
        #: A thread waits for the lock on the loop's behalf (see wait_off_loop).
        self._waiting = False
        #: Set while every write must fail with this text (the store's file was lost: sqlite_identity.py).
        self.refuse: str | None = None
        #: The waiting thread's connection, for trying SQLite's own write lock (opened when first needed).
        self._probe: sqlite3.Connection | None = None

    def fileno(self) -> int:
        """The lock file's descriptor."""
        return self._fd

    # -- every write --------------------------------------------------------------------------------

    def __enter__(self) -> None:
        if self.refuse is not None:
            raise StoreError(self.refuse)
        if self._loop is not None and threading.get_ident() == self._loop:
            mode = self._mode
            if mode == _HELD:
                return
            if mode == _FAIL:
                raise StoreError(f"counter store {self.path}: locked by another process for as long as a request may wait")
            self._enter_briefly()
            return
        self._threads.acquire()
        try:
            self._lock_file(time.monotonic() + LOCK_TIMEOUT)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # (FAIL never gets here: its __enter__ raised.)
        on_loop = self._loop is not None and threading.get_ident() == self._loop
        if self._mode != _HELD or not on_loop:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._threads.release()
        if isinstance(exc, sqlite3.Error):
            if on_loop and is_busy(exc):
                # Another writer holds SQLite's own lock without our flock (the sqlite3 shell): the
                # loop's connection was refused at once, nothing was written; park, as for the flock.
                raise StoreBusy(f"counter store {self.path}: SQLite's write lock is held by another process") from exc
            raise StoreError(f"counter store {self.path}: {exc}") from exc

    def _enter_briefly(self) -> None:
        if not self._threads.acquire(blocking=False):
            # Another thread of ours writes (the releaser, a prune batch), or waits for the loop:
            # then requests are parked already, and this one joins them without trying.
            if self._waiting or not self._threads.acquire(timeout=LOOP_SPIN):
                raise StoreBusy(f"counter store {self.path}: writers' lock taken")
        try:
            self._lock_file(time.monotonic() + LOOP_SPIN, busy=True)
        except BaseException:
            self._threads.release()
            raise

    def _lock_file(self, deadline: float, busy: bool = False) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        # Another process is writing (for ~0.1 ms, normally). Poll with a short, growing sleep
        # rather than block: a writer that is stopped (SIGSTOP) must not hang every daemon.
        delay = 0.00005
        while True:
            time.sleep(delay)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    if busy:
                        raise StoreBusy(f"counter store {self.path}: locked by another process") from None
                    raise StoreError(self._timeout_text()) from None
                delay = min(delay * 2, 0.002)

    def _timeout_text(self) -> str:
        return f"counter store {self.path}: locked by another process for {LOCK_TIMEOUT:g} s"

    # -- the event loop's side ----------------------------------------------------------------------

    def never_wait_in_this_thread(self) -> None:
        """Writes from the calling thread (the event loop) raise :class:`StoreBusy` instead of waiting."""
        self._loop = threading.get_ident()

    def wait_off_loop(self, deadline: float, done: Callable[[bool], None]) -> None:
        """Wait on a thread of its own until the lock is ours or the monotonic ``deadline``; then
        call ``done(True)`` with the lock held for the loop, or ``done(False)``. The loop then
        decides under :meth:`loop_holds` and calls :meth:`loop_releases`. One wait at a time."""
        if self._waiting:
            raise RuntimeError("already waiting for the writers' lock")
        self._waiting = True

        def wait() -> None:
            ok = self._threads.acquire(timeout=max(0.0, deadline - time.monotonic()))
            if ok:
                try:
                    self._lock_file(deadline)
                except (StoreError, OSError):  # OSError: the store was closed meanwhile (shutdown)
                    self._threads.release()
                    ok = False
            if ok and not self._sqlite_free(deadline):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._threads.release()
                ok = False
            self._waiting = False
            done(ok)

        threading.Thread(target=wait, name="sendguard-store-wait", daemon=True).start()

    def _sqlite_free(self, deadline: float) -> bool:
        """Wait (polling, on the waiting thread) until SQLite's own write lock can be taken, or the
        deadline passes; the lock is not kept: with our flock held, no writer of ours can take it."""
        delay = 0.0002
        try:
            if self._probe is None:
                self._probe = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            probe = self._probe
            while True:
                try:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.execute("ROLLBACK")
                    return True
                except sqlite3.OperationalError as exc:
                    if not is_busy(exc) or time.monotonic() > deadline:
                        return False
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
        except sqlite3.Error:
            return False  # the file went away meanwhile: the loop's write says what happened

    def loop_holds(self, held: bool) -> None:
        """The loop decides now, with the lock handed over (``held``) or the wait run out (writes fail)."""
        self._mode = _HELD if held else _FAIL

    def loop_releases(self) -> None:
        """The loop is done deciding under the handed-over lock: release it (if held), back to trying."""
        mode, self._mode = self._mode, _TRY
        if mode == _HELD:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._threads.release()

    def close(self) -> None:
        """Close the lock file (and the waiting thread's connection)."""
        if self._probe is not None:
            self._probe.close()
        try:
            os.close(self._fd)
        except OSError:
            pass


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds a lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc)
