"""The WAL kept allocated ahead of its writer: commits land on blocks the file owns, and the zeros past the last frame are invisible."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sendguard_policyd import sqlite_store
from sendguard_policyd.counter_store import COUNTED
from sendguard_policyd.sqlite_store import SQLiteCounterStore, connect, read_windows
from sendguard_policyd.wal_headroom import MIN_STEP, WAL_HEADER, WalHeadroom

NOW = 1_800_000_000.0


def manual_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SQLiteCounterStore:
    """A store whose background thread never runs: the test drives the rounds."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 3600.0)
    return SQLiteCounterStore(str(tmp_path / "p.sqlite"))


def count(store: SQLiteCounterStore, first: int, n: int) -> None:
    for i in range(first, first + n):
        assert store.admit("s", f"m{i}", 1, NOW + i * 0.001, None, None).outcome == COUNTED


def test_commits_after_a_round_land_in_the_headroom_instead_of_growing_the_file(tmp_path, monkeypatch):
    store = manual_store(tmp_path, monkeypatch)
    wal = Path(store.path + "-wal")
    conn = connect(store.path, create=False)
    headroom = WalHeadroom(conn, store.path, 64 * 1024 * 1024)
    try:
        count(store, 0, 300)
        # The WAL file is as long as its frames: every commit so far extended it.
        frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        end = WAL_HEADER + frames * 1048
        assert wal.stat().st_size == end
        added = headroom.after_checkpoint(frames)
        size = wal.stat().st_size
        assert added > 0 and size == end + added
        assert size >= end + 3 * (end - WAL_HEADER)  # three rounds' growth ahead
        # Allocated on disk, not just promised: the blocks cover the whole file.
        assert wal.stat().st_blocks * 512 >= size
        # A round's worth of commits (they restart the WAL from its start, or append after its
        # last frame) fits in the headroom: the file does not grow.
        count(store, 300, 300)
        assert wal.stat().st_size == size
        assert store.windows("s", NOW + 10).hour == 600
    finally:
        conn.close()
        store.close()


def test_a_quiet_wal_is_not_extended_and_the_limit_is_kept(tmp_path, monkeypatch):
    store = manual_store(tmp_path, monkeypatch)
    wal = Path(store.path + "-wal")
    conn = connect(store.path, create=False)
    limit = 2 * MIN_STEP
    headroom = WalHeadroom(conn, store.path, limit)
    try:
        count(store, 0, 100)
        frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        headroom.after_checkpoint(frames)
        size = wal.stat().st_size
        assert size == limit  # extended, up to the limit and not past it
        frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert headroom.after_checkpoint(frames) == 0  # no commit since: nothing to do
        assert wal.stat().st_size == size
    finally:
        conn.close()
        store.close()


def test_the_background_thread_keeps_the_wal_ahead_under_steady_counting(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 0.05)
    rounds: list[int] = []
    real = WalHeadroom.after_checkpoint

    def recorded(self: WalHeadroom, frames: int) -> int:
        written = real(self, frames)
        rounds.append(written)
        return written

    monkeypatch.setattr(WalHeadroom, "after_checkpoint", recorded)
    store = SQLiteCounterStore(str(tmp_path / "p.sqlite"))
    reader = sqlite3.connect(store.path)
    try:
        for i in range(0, 4000, 100):
            count(store, i, 100)
            time.sleep(0.002)
        assert store.windows("s", NOW + 10).hour == 4000
        assert reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        reader.close()
        store.close()
    assert sum(rounds) >= MIN_STEP, rounds


def valid_wal_bytes(wal: Path) -> int:
    """The WAL's header and frames up to the last commit, as SQLite would recover them."""
    data = wal.read_bytes()
    if len(data) < WAL_HEADER:
        return len(data)
    frame = int.from_bytes(data[8:12], "big") + 24
    salts = data[16:24]
    end = last_commit = WAL_HEADER
    while end + frame <= len(data) and data[end + 8 : end + 16] == salts:
        end += frame
        if int.from_bytes(data[end - frame + 4 : end - frame + 8], "big"):  # commit frame: db size set
            last_commit = end
    return last_commit


CRASH = textwrap.dedent(
    """
    import os, sys
    from sendguard_policyd import sqlite_store
    sqlite_store.CHECKPOINT_INTERVAL = 3600.0
    from sendguard_policyd.sqlite_store import SQLiteCounterStore, connect
    from sendguard_policyd.wal_headroom import WalHeadroom
    store = SQLiteCounterStore(sys.argv[1])
    conn = connect(sys.argv[1], create=False)
    headroom = WalHeadroom(conn, sys.argv[1], 64 * 1024 * 1024)
    now = 1_800_000_000.0
    for i in range(500):
        store.admit("s", f"a{i}", 1, now + i * 0.001, None, None)
    # No checkpoint (it would let the next commit start the WAL over): the frames, from the size.
    headroom.after_checkpoint((os.stat(sys.argv[1] + "-wal").st_size - 32) // 1048)
    extended = os.stat(sys.argv[1] + "-wal").st_size
    for i in range(200):
        store.admit("s", f"b{i}", 2, now + 1 + i * 0.001, None, None)
    print(extended, os.stat(sys.argv[1] + "-wal").st_size, flush=True)
    os.kill(os.getpid(), 9)  # no close: the WAL and its zeros stay as a crash leaves them
    """
)


def test_a_crash_recovers_every_count_from_a_wal_with_zeros_past_its_end(tmp_path):
    db = tmp_path / "p.sqlite"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(db)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    wal = Path(str(db) + "-wal")
    extended, final = map(int, proc.stdout.split())
    end = valid_wal_bytes(wal)
    # The commits after the round landed inside the allocated file; zeros still follow the last frame.
    assert final == extended > end
    assert wal.read_bytes()[end:] == bytes(extended - end)
    # Without the shared-memory index SQLite rebuilds the log from the WAL file itself,
    # reading frames until the first invalid one: the zeros must end it, not corrupt it.
    os.unlink(str(db) + "-shm")
    conn = sqlite3.connect(str(db))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert read_windows(conn, "s", NOW + 10).hour == 500 + 200 * 2
    finally:
        conn.close()


def test_a_failed_extension_is_logged_and_counting_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 0.05)

    def disk_full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("sendguard_policyd.wal_headroom.fallocate", disk_full)
    caplog.set_level(logging.WARNING)
    store = SQLiteCounterStore(str(tmp_path / "p.sqlite"))
    try:
        count(store, 0, 300)
        deadline = time.monotonic() + 10
        while "cannot extend the WAL" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        count(store, 300, 300)
        assert store.windows("s", NOW + 10).hour == 600
    finally:
        store.close()
    line = next(r.getMessage() for r in caplog.records if "cannot extend the WAL" in r.getMessage())
    assert "No space left on device" in line and store.path in line


def test_a_filesystem_without_fallocate_is_noted_once_and_left_alone(tmp_path, monkeypatch, caplog):
    calls = []

    def unsupported(fd: int, offset: int, length: int) -> None:
        calls.append(offset)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr("sendguard_policyd.wal_headroom.fallocate", unsupported)
    caplog.set_level(logging.INFO)
    store = manual_store(tmp_path, monkeypatch)
    conn = connect(store.path, create=False)
    headroom = WalHeadroom(conn, store.path, 64 * 1024 * 1024)
    try:
        for first in (0, 100, 200):
            count(store, first, 100)
            headroom.after_checkpoint(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
        assert len(calls) == 1 and not headroom.supported
        assert store.windows("s", NOW + 10).hour == 300
    finally:
        conn.close()
        store.close()
    lines = [r.getMessage() for r in caplog.records if "cannot preallocate" in r.getMessage()]
    assert len(lines) == 1 and store.path in lines[0]
