"""Following Postfix in the journal: real journalctl over real journal files (written by systemd-journal-remote).

The entries of the unit are handed on once each, with their own program and
time; a restart goes on after the cursor saved, and entries of other units
are not read.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sendguard_policyd.watch.follow import LogLine
from sendguard_policyd.watch.journal import JournalFollower
from watch_logs import delivery_line, write_journal


def message(n: int) -> str:
    return delivery_line(n).split(": ", 1)[1]


def drain(follower: JournalFollower, until: int, got: list[LogLine], rounds: int = 100) -> list[LogLine]:
    stop = threading.Event()
    for _ in range(rounds):  # a few seconds at most: journalctl notices new files through inotify
        got += follower.read()
        follower.commit()
        if len(got) >= until:
            break
        follower.wait(stop)
    return got


def test_entries_once_each_across_a_restart(tmp_path: Path):
    journal = tmp_path / "journal"
    journal.mkdir()
    position = str(tmp_path / "watch.position")
    write_journal(journal, "a", [("postfix/smtp", message(n)) for n in (1, 2, 3)])
    write_journal(journal, "other", [("cron", "not postfix")], unit="cron.service")
    got: list[LogLine] = []
    follower = JournalFollower(position, "postfix@-.service", str(journal), "beginning", poll_interval=0.1)
    try:
        drain(follower, 3, got)
        write_journal(journal, "b", [("postfix-bulk/smtp", message(4))])
        drain(follower, 4, got)
    finally:
        follower.close()
    write_journal(journal, "c", [("postfix/smtp", message(n)) for n in (5, 6)])
    follower = JournalFollower(position, "postfix@-.service", str(journal), "beginning", poll_interval=0.1)
    try:
        drain(follower, 6, got)
    finally:
        follower.close()
    assert [line.text for line in got] == [message(n) for n in range(1, 7)]
    assert got[3].program == "postfix-bulk/smtp"
    assert all(line.at and line.at > 1e9 for line in got)


def test_a_first_start_at_the_end_reads_only_new_entries(tmp_path: Path):
    journal = tmp_path / "journal"
    journal.mkdir()
    write_journal(journal, "a", [("postfix/smtp", message(1))])
    follower = JournalFollower(str(tmp_path / "p"), "postfix@-.service", str(journal), "end", poll_interval=0.1)
    got: list[LogLine] = []
    try:
        drain(follower, 1, got, rounds=15)  # nothing may come
        assert got == []
        write_journal(journal, "b", [("postfix/smtp", message(2))])
        drain(follower, 1, got)
    finally:
        follower.close()
    assert [line.text for line in got] == [message(2)]


def test_journalctl_failing_is_logged_once(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="sendguard.watch")
    follower = JournalFollower(str(tmp_path / "p"), "postfix@-.service", str(tmp_path / "no-such-dir"), "end", 0.05)
    try:
        clock = [0.0]
        follower.clock = lambda: clock[0]
        for _ in range(40):
            follower.read()
            follower.wait(threading.Event())
            clock[0] += 10  # past RESTART_AFTER: it is started (and fails) again and again
    finally:
        follower.close()
    failures = [r for r in caplog.records if "journalctl exited" in r.getMessage()]
    assert len(failures) == 1
    assert not follower.up
