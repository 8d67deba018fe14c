"""Following the mail log on real files: rotation by rename and by copytruncate (real logrotate), restarts.

Every test checks the one promise: each line the writer wrote is handed on
exactly once, in order — across rotations, across restarts of the follower
(a new object reading the saved position, as a restarted process does),
and across a restart in the middle of a rotation. A line whose newline is
not written yet is never handed on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sendguard_policyd.watch.follow import ROTATE_GRACE, VANISHED_AFTER, FileFollower
from watch_logs import Clock, Writer, logrotate


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    directory = tmp_path / "log"
    directory.mkdir(mode=0o755)
    return directory / "mail.log"


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Run:
    """Followers over one log, restarted at will; everything they handed on, in order."""

    def __init__(self, path: Path, clock: Clock, start_at: str = "beginning") -> None:
        self.path = path
        self.clock = clock
        self.start_at = start_at
        self.position = str(path.parent.parent / "state" / "watch.position")
        self.got: list[str] = []
        self.follower = self._new()

    def _new(self) -> FileFollower:
        return FileFollower(str(self.path), self.position, self.start_at, poll_interval=0.01, clock=self.clock)

    def drain(self, rounds: int = 5) -> list[str]:
        """Read (and commit) until nothing more comes; what came."""
        before = len(self.got)
        idle = 0
        while idle < rounds:
            lines = self.follower.read()
            self.got += [line.text for line in lines]
            self.follower.commit()
            idle = 0 if lines else idle + 1
        return self.got[before:]

    def past_grace(self) -> list[str]:
        """Let the rotation grace pass, then drain."""
        self.drain()
        self.clock.advance(ROTATE_GRACE + 0.1)
        return self.drain()

    def restart(self) -> None:
        self.follower.close()
        self.follower = self._new()


def test_a_line_is_handed_on_only_once_its_newline_is_written(log_path: Path, clock: Clock):
    w = Writer(log_path)
    first = w.line()
    run = Run(log_path, clock)
    w.raw(b"Mar  1 10:00:09 mail postfix/smtp[1]: QPARTIAL: to=<p@example.com>, rel")
    assert run.drain() == [first]
    run.restart()  # the half line is not in the saved position either
    assert run.drain() == []
    w.raw(b"ay=none, delay=1, delays=0/0/0/1, dsn=4.4.1, status=deferred (connect failed)\n")
    [line] = run.drain()
    assert line.startswith("Mar  1 10:00:09") and line.endswith("(connect failed)")


def test_rename_rotation_reads_the_old_file_to_its_end_then_the_new_one(log_path: Path, clock: Clock):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(3)
    run.drain()
    w.lines(2)  # not read yet when the file is renamed
    logrotate(log_path, "create")
    w.lines(2)  # the writer has not reopened yet: these land in mail.log.1
    run.drain()
    w.reopen()
    w.lines(2)  # into the new mail.log
    run.past_grace()
    w.lines(1)
    run.drain()
    assert run.got == w.written
    assert (log_path.parent / "mail.log.1").exists()


def test_copytruncate_reads_the_unread_lines_from_the_copy(log_path: Path, clock: Clock):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(4)
    run.drain()
    w.lines(3)  # written before logrotate copies: in the copy only, once the file is truncated
    logrotate(log_path, "copytruncate")
    assert log_path.stat().st_size == 0
    w.lines(2)  # the writer goes on at the start of the truncated file (O_APPEND)
    run.drain()
    w.lines(2)
    run.drain()
    assert run.got == w.written


def test_copytruncate_noticed_after_the_file_grew_past_the_old_offset(log_path: Path, clock: Clock):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(2)
    run.drain()
    logrotate(log_path, "copytruncate")
    w.lines(6)  # longer than what was read before: the size alone would not tell
    run.drain()
    assert run.got == w.written


def test_truncated_by_hand_without_a_copy_is_read_from_its_start(log_path: Path, clock: Clock, caplog):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(3)
    run.drain()
    with open(log_path, "r+b") as fh:
        fh.truncate(0)
    caplog.set_level(logging.INFO, logger="sendguard.watch")
    new = w.lines(2)
    assert run.drain() == new
    assert any("truncated in place" in r.getMessage() for r in caplog.records)


def test_restart_resumes_after_the_last_line_handed_on(log_path: Path, clock: Clock):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(5)
    run.drain()
    run.restart()
    w.lines(3)
    run.drain()
    run.restart()
    run.drain()
    assert run.got == w.written


def test_restart_after_a_rename_rotation_while_stopped(log_path: Path, clock: Clock):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(3)
    run.drain()
    run.follower.close()
    w.lines(3)  # written while the watcher is down, before the rotation
    logrotate(log_path, "create")
    w.reopen()
    w.lines(2)
    run.restart()
    run.drain()
    assert run.got == w.written


def test_restart_after_two_rotations_with_compression_while_stopped(log_path: Path, clock: Clock):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(3)
    run.drain()
    run.follower.close()
    w.lines(2)
    logrotate(log_path, "create", "compress", "delaycompress")
    w.reopen()
    w.lines(2)
    os.utime(log_path.parent / "mail.log.1", (1, 1))  # mtimes in rotation order, whatever the clock's grain
    logrotate(log_path, "create", "compress", "delaycompress")  # the first file is now mail.log.2.gz
    w.reopen()
    w.lines(2)
    assert (log_path.parent / "mail.log.2.gz").exists()
    run.restart()
    run.drain()
    assert run.got == w.written


def test_restart_after_a_copytruncate_while_stopped(log_path: Path, clock: Clock):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(3)
    run.drain()
    run.follower.close()
    w.lines(3)
    logrotate(log_path, "copytruncate")
    w.lines(5)  # more than before: only the first line tells the file changed
    run.restart()
    run.drain()
    assert run.got == w.written


def test_restart_in_the_middle_of_a_rename_rotation(log_path: Path, clock: Clock):
    """Stopped while reading on in the renamed file: the restart finishes it, then reads the new one."""
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(3)
    run.drain()
    logrotate(log_path, "create")
    w.lines(2)  # into the renamed file
    run.drain()  # the rotation is noticed, the old file read on (its grace not over)
    w.lines(2)  # more into the renamed file: unread at the stop
    run.follower.close()
    w.reopen()
    w.lines(2)
    run.restart()
    run.drain()
    assert run.got == w.written


def test_restart_in_the_middle_of_a_copytruncate(log_path: Path, clock: Clock):
    """Stopped while reading the copy: the restart finishes the copy, then reads the truncated file."""
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(2)
    run.drain()
    for _ in range(3000):  # more than one batch: the copy is read in several
        w.line()
    logrotate(log_path, "copytruncate")
    w.lines(2)
    lines = run.follower.read()  # the first batch from the copy only
    run.got += [line.text for line in lines]
    run.follower.commit()
    assert 0 < len(lines) < 3000
    run.restart()
    run.drain()
    assert run.got == w.written


def test_first_start_at_the_end_skips_what_was_there(log_path: Path, clock: Clock):
    w = Writer(log_path)
    w.lines(4)
    run = Run(log_path, clock, start_at="end")
    assert run.drain() == []
    new = w.lines(2)
    assert run.drain() == new
    run.restart()  # from now on the saved position rules, not start_at
    assert run.drain() == []


def test_a_vanished_log_is_logged_once_and_followed_when_it_comes_back(log_path: Path, clock: Clock, caplog):
    w = Writer(log_path)
    run = Run(log_path, clock)
    w.lines(2)
    run.drain()
    w.close()
    os.unlink(log_path)
    caplog.set_level(logging.INFO, logger="sendguard.watch")
    for _ in range(3):
        clock.advance(VANISHED_AFTER)
        run.drain()
    vanished = [r for r in caplog.records if "vanished" in r.getMessage()]
    assert len(vanished) == 1
    assert not run.follower.up
    w = Writer(log_path)
    new = w.lines(2)
    assert run.drain() == new
    assert run.follower.up


def test_an_unreadable_log_is_logged_once(log_path: Path, clock: Clock, caplog):
    log_path.mkdir()  # a directory where the file should be: open fails, as for a missing permission
    caplog.set_level(logging.INFO, logger="sendguard.watch")
    run = Run(log_path, clock)
    for _ in range(3):
        run.drain()
    problems = [r for r in caplog.records if "cannot read the mail log" in r.getMessage()]
    assert len(problems) == 1 and "Is a directory" in problems[0].getMessage()
    assert not run.follower.up


def test_a_corrupt_position_file_is_logged_and_start_at_applies(log_path: Path, clock: Clock, caplog):
    w = Writer(log_path)
    w.lines(2)
    position = log_path.parent.parent / "state" / "watch.position"
    position.parent.mkdir()
    position.write_text("{not json")
    caplog.set_level(logging.INFO, logger="sendguard.watch")
    run = Run(log_path, clock, start_at="end")
    assert run.drain() == []
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    new = w.lines(1)
    assert run.drain() == new
