"""Helpers of the watcher's tests: a log writer that behaves like syslog, real logrotate runs, a clock.

The writer appends through a file it keeps open (O_APPEND), as rsyslog and
Postfix's postlogd do: after a rename rotation it goes on writing into the
renamed file until it is told to reopen (logrotate's postrotate HUP); after a
copytruncate it goes on writing at the start of the truncated file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def delivery_line(n: int, status: str = "sent", program: str = "postfix/smtp", rcpt: str | None = None,
                  relay: str = "mx.example.com[192.0.2.1]:25", reply: str | None = None, qid: str | None = None) -> str:  # fmt: skip
    """A Postfix delivery line, unique by ``n`` (its queue id and recipient)."""
    dsn = {"sent": "2.0.0", "deferred": "4.7.0", "bounced": "5.7.1"}[status]
    text = reply or (f"250 2.0.0 Ok: queued as X{n}" if status == "sent" else f"host mx said: {dsn} no {n}")
    return (
        f"Mar  1 10:{n // 60 % 60:02d}:{n % 60:02d} mail {program}[4242]: {qid or f'Q{n:08X}'}: "
        f"to=<{rcpt or f'r{n}@example.com'}>, relay={relay}, delay=1, delays=0/0/0/1, dsn={dsn}, status={status} ({text})"
    )


class Writer:
    """Appends lines to a log through one open file, until :meth:`reopen`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "ab", buffering=0)
        self.n = 0
        self.written: list[str] = []

    def line(self, text: str | None = None) -> str:
        """Append one complete line (a unique delivery line by default); return it."""
        self.n += 1
        text = text if text is not None else delivery_line(self.n)
        self.fh.write(text.encode() + b"\n")
        self.written.append(text)
        return text

    def lines(self, count: int) -> list[str]:
        return [self.line() for _ in range(count)]

    def raw(self, data: bytes) -> None:
        """Append bytes as they are (a line in two writes)."""
        self.fh.write(data)

    def reopen(self) -> None:
        """What a HUP makes the writer do: open the path again (creating it if needed)."""
        self.fh.close()
        self.fh = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        self.fh.close()


def logrotate(path: Path, *directives: str) -> None:
    """Rotate ``path`` with the real logrotate (forced), with ``directives`` such as ``copytruncate``."""
    conf = path.parent / "logrotate.conf"
    body = "".join(f"    {d}\n" for d in ("rotate 5", "missingok", *directives))
    conf.write_text(f"{path} {{\n{body}}}\n")
    conf.chmod(0o644)
    subprocess.run(["logrotate", "-f", "-s", str(path.parent / "logrotate.state"), str(conf)], check=True,
                   capture_output=True)  # fmt: skip


class Clock:
    """A monotonic clock the test moves (the rotation grace, the vanished-file delay)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


def write_journal(directory: Path, name: str, messages: list[tuple[str, str]], unit: str = "postfix@-.service") -> None:
    """Write ``(program, message)`` entries as a real journal file (systemd-journal-remote), as journald would."""
    import time

    base = int(time.time() * 1e6)
    chunks = []
    for i, (program, message) in enumerate(messages):
        chunks.append(
            f"__REALTIME_TIMESTAMP={base + i}\n__MONOTONIC_TIMESTAMP={base + i}\n"
            f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT={unit}\n"
            f"SYSLOG_IDENTIFIER={program}\nMESSAGE={message}\n\n"
        )
    subprocess.run([JOURNAL_REMOTE, "-o", str(directory / f"{name}.journal"), "-"], input="".join(chunks).encode(),
                   check=True, capture_output=True)  # fmt: skip
