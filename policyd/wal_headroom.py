"""Keep the SQLite WAL file allocated ahead of its writer, so that a commit never allocates disk blocks.

A commit appends its frames to the WAL. When the append extends the file, the
filesystem has to find blocks for it: on ext4 (delayed allocation) the append
then waits on the inode's block-map lock, or on a page lock, whenever a
checkpoint's ``fsync`` is writing earlier frames out and allocating their
blocks. Measured under load (benchmarks/RESULTS-policyd.md), those waits held a
request for 1-5 ms a few times a second while the WAL was growing.

So the checkpoint thread allocates the file a few seconds ahead of the last
frame, at the current rate, with ``fallocate(2)``: the file grows, its new
blocks are allocated and read as zeros, and the writer's appends land inside
the file on blocks it already owns. SQLite reads a WAL only up to its first
invalid frame, and a frame of zeros is never valid, so the zeros are invisible
to it. ``fallocate`` never writes data, so it can run beside a writer without a
lock: an append that races it keeps its bytes. A restarted WAL keeps its file
(up to ``journal_size_limit``), so once the file has reached its working size
nothing more is allocated.

A filesystem without ``fallocate`` (or a full disk) only loses this: commits
then extend the file themselves, as SQLite does on its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sqlite3

from sendguard import logs

log = logs.get("policyd")

#: SQLite's WAL file header, and the header of each frame (the page follows it).
WAL_HEADER = 32
FRAME_HEADER = 24
#: Headroom kept past the last frame, as a multiple of the growth since the last round.
ROUNDS_AHEAD = 3
#: The least headroom allocated at once, in bytes.
MIN_STEP = 256 * 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def fallocate(fd: int, offset: int, length: int) -> None:
    """``fallocate(2)`` in its default mode (allocate, and grow the file to cover the range).

    Not glibc's ``posix_fallocate``: where the filesystem lacks the call, that one emulates
    it by writing into the file, which could overwrite a frame SQLite is appending.
    """
    if _libc.fallocate(fd, 0, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class WalHeadroom:
    """Allocates one store's WAL ahead of its writer; called once per checkpoint round."""

    def __init__(self, conn: sqlite3.Connection, db_path: str, limit: int) -> None:
        """``conn``: any connection to the store; ``limit``: the WAL's largest size (its ``journal_size_limit``)."""
        self._wal_path = db_path + "-wal"
        self._limit = limit
        self._frame = int(conn.execute("PRAGMA page_size").fetchone()[0]) + FRAME_HEADER
        self._last_end = 0
        self.supported = True

    def after_checkpoint(self, frames: int) -> int:
        """Keep room past the WAL's ``frames`` frames (as a checkpoint reports them); return the bytes added."""
        end = WAL_HEADER + frames * self._frame if frames > 0 else 0
        # A WAL that started over since the last round grew by everything it holds now.
        growth = end - self._last_end if end >= self._last_end else end
        self._last_end = end
        if growth <= 0 or not self.supported:
            return 0
        target = min(self._limit, end + max(ROUNDS_AHEAD * growth, MIN_STEP))
        try:
            fd = os.open(self._wal_path, os.O_WRONLY)
        except FileNotFoundError:  # no WAL at the moment: nothing to keep ahead of
            return 0
        try:
            size = os.fstat(fd).st_size
            # Below a header's size SQLite is starting the WAL over: leave the file to it.
            if size < WAL_HEADER or size >= target:
                return 0
            try:
                fallocate(fd, size, target - size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self.supported = False
                log.info("counter store WAL %s: the filesystem cannot preallocate (%s); commits extend it themselves",
                         self._wal_path, exc.strerror)  # fmt: skip
                return 0
            return target - size
        finally:
            os.close(fd)
