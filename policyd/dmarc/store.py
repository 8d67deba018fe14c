"""The SQLite file that keeps every report once, and the totals the metrics are read from.

A report is known by its reporter (``org_name``, as the report gives it) and
its ``report_id``: receivers resend reports, and the same report may sit in a
maildir and in a saved copy. A second copy is not stored, so ingesting twice
gives the same totals, and the metrics, read from here at each scrape, come
out the same after a restart.

The files already read (path, size, modification time) are remembered too, so
a pass over a folder of thousands of reports opens only the new ones; a file
no longer there at the end of a full pass over its source is forgotten.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sendguard_policyd.dmarc.report import Report

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    reporter TEXT NOT NULL,
    report_id TEXT NOT NULL,
    email TEXT NOT NULL,
    domain TEXT NOT NULL,
    policy TEXT NOT NULL,
    begin INTEGER NOT NULL,
    end INTEGER NOT NULL,
    ingested_at INTEGER NOT NULL,
    UNIQUE (reporter, report_id)
);
CREATE TABLE IF NOT EXISTS rows (
    report INTEGER NOT NULL REFERENCES reports(id),
    source_ip TEXT NOT NULL,
    messages INTEGER NOT NULL,
    dkim_aligned INTEGER NOT NULL,
    spf_aligned INTEGER NOT NULL,
    disposition TEXT NOT NULL,
    header_from TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rows_by_report ON rows (report);
CREATE TABLE IF NOT EXISTS files_read (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
"""

#: Milliseconds a writer waits for another (a second ``sendguard dmarc`` run by cron beside the follower).
BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True, slots=True)
class Totals:
    """Messages one reporter counted from one source IP, and how many of them passed what."""

    reporter: str
    source_ip: str
    messages: int
    dkim_aligned: int
    spf_aligned: int
    dmarc_pass: int


class ReportStore:
    """The reports database (one connection; use from one thread at a time)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)

    @classmethod
    def reader(cls, path: str | os.PathLike[str]) -> ReportStore:
        """A read-only connection (a scrape): the file must exist; nothing is created or written."""
        store = cls.__new__(cls)
        store.path = Path(path)
        uri = f"{store.path.absolute().as_uri()}?mode=ro"
        store._conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        return store

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def add(self, report: Report, now: float | None = None) -> bool:
        """Store ``report``; False (nothing changed) when this reporter's report id is already there."""
        at = int(time.time() if now is None else now)
        with self._transaction():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO reports (reporter, report_id, email, domain, policy, begin, end, ingested_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (report.org_name, report.report_id, report.email, report.domain, report.policy, report.begin,
                 report.end, at),
            )  # fmt: skip
            if cur.rowcount == 0:
                return False
            rid = cur.lastrowid
            self._conn.executemany(
                "INSERT INTO rows (report, source_ip, messages, dkim_aligned, spf_aligned, disposition, header_from)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(rid, r.source_ip, r.count, int(r.dkim_aligned), int(r.spf_aligned), r.disposition, r.header_from)
                 for r in report.rows],
            )  # fmt: skip
        return True

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def file_known(self, path: Path | str, size: int, mtime_ns: int) -> bool:
        """Whether this file was read whole as it is now (same size and modification time)."""
        row = self._conn.execute("SELECT size, mtime_ns FROM files_read WHERE path = ?", (str(path),)).fetchone()
        return row is not None and row[0] == size and row[1] == mtime_ns

    def remember_file(self, path: Path | str, size: int, mtime_ns: int) -> None:
        """Note that this file was read whole (its reports stored, its problems logged)."""
        self._conn.execute(
            "INSERT INTO files_read (path, size, mtime_ns) VALUES (?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns",
            (str(path), size, mtime_ns),
        )

    def forget_files_under(self, source: Path | str, keep: set[str]) -> int:
        """Forget the files read under ``source`` (the path, or below it) but not in ``keep``; how many were forgotten.

        A maildir's mail moves from ``new/`` to ``cur/`` and is deleted in the end: without this the
        table would grow by every report mail ever read.
        """
        root = str(source).rstrip("/") or "/"
        below = root if root.endswith("/") else root + "/"
        rows = self._conn.execute(
            "SELECT path FROM files_read WHERE path = ? OR substr(path, 1, length(?)) = ?", (root, below, below)
        ).fetchall()
        gone = [(path,) for (path,) in rows if path not in keep]
        if gone:
            with self._transaction():
                self._conn.executemany("DELETE FROM files_read WHERE path = ?", gone)
        return len(gone)

    def files_known(self) -> int:
        """Rows in the table of files read (and IMAP messages seen)."""
        return int(self._conn.execute("SELECT COUNT(*) FROM files_read").fetchone()[0])

    def report_count(self) -> int:
        """Reports stored."""
        return int(self._conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0])

    def first_reporters(self, limit: int) -> list[str]:
        """The ``limit`` reporters whose first report was stored first: a set that only grows, up to ``limit``."""
        rows = self._conn.execute(
            "SELECT reporter FROM reports GROUP BY reporter ORDER BY MIN(id) LIMIT ?", (limit,)
        ).fetchall()
        return [r[0] for r in rows]

    def totals(self, since: int | None = None) -> list[Totals]:
        """Per reporter and source IP: every report's rows, or only those of reports ending at ``since`` or later."""
        where = "" if since is None else "WHERE r.end >= ?"
        args = () if since is None else (since,)
        rows = self._conn.execute(
            "SELECT r.reporter, w.source_ip, SUM(w.messages), SUM(w.messages * w.dkim_aligned),"
            " SUM(w.messages * w.spf_aligned), SUM(w.messages * MAX(w.dkim_aligned, w.spf_aligned))"
            f" FROM rows w JOIN reports r ON r.id = w.report {where}"
            " GROUP BY r.reporter, w.source_ip ORDER BY r.reporter, w.source_ip",
            args,
        ).fetchall()
        return [Totals(*row) for row in rows]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error), so a report is stored whole or not at all."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self._conn.execute("COMMIT" if kind is None else "ROLLBACK")
