"""Where the watcher is in Postfix's log, kept in ``[watch] position_file`` across restarts.

For a file: its device and inode, the offset just after the last complete
line handed to the consumers, and a fingerprint of its first line. The inode
finds the file again after a rename rotation (it is then ``mail.log.1``); the
fingerprint tells a file truncated and written again in place (copytruncate)
from the one the offset belongs to, and finds the rotated copy. For the
journal: the cursor of the last entry handed on.

The file is replaced atomically (a temporary file, fsync, rename), so a crash
leaves the previous position or the new one, never a torn one. It is written
after each batch of lines has been handed to the consumers: a clean stop
loses nothing and repeats nothing; a crash (``kill -9``, power loss) can hand
the last batch on again, never skip one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

#: Bytes of the first line that make the fingerprint (a syslog line's stamp, host and pid are in them).
FINGERPRINT_BYTES = 512

_VERSION = 1


@dataclass(frozen=True)
class FilePosition:
    """A place in a log file."""

    path: str
    dev: int
    inode: int
    offset: int
    #: sha256 of the file's first line (up to :data:`FINGERPRINT_BYTES`, newline included); "" while
    #: the file has no complete first line.
    fingerprint: str


@dataclass(frozen=True)
class JournalPosition:
    """A place in the journal."""

    cursor: str


def fingerprint(head: bytes) -> str:
    """The fingerprint of a file from its first bytes: "" until a first line is complete."""
    end = head.find(b"\n")
    if end < 0 and len(head) < FINGERPRINT_BYTES:
        return ""
    line = head[: end + 1] if 0 <= end < FINGERPRINT_BYTES else head[:FINGERPRINT_BYTES]
    return hashlib.sha256(line).hexdigest()


class PositionError(Exception):
    """The position file cannot be read or written (its text says why)."""


def load(path: str) -> FilePosition | JournalPosition | None:
    """The position saved in ``path``; None when there is none yet. :class:`PositionError` when unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PositionError(f"position file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if data.get("version") != _VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {_VERSION}")
        if data["source"] == "journal":
            return JournalPosition(cursor=str(data["cursor"]))
        return FilePosition(
            path=str(data["path"]),
            dev=int(data["dev"]),
            inode=int(data["inode"]),
            offset=int(data["offset"]),
            fingerprint=str(data["fingerprint"]),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PositionError(f"position file {path} is not a position sendguard wrote: {exc}") from None


def save(path: str, position: FilePosition | JournalPosition) -> None:
    """Replace ``path`` with ``position`` atomically; :class:`PositionError` when it cannot be written."""
    data = {"version": _VERSION, "source": "journal" if isinstance(position, JournalPosition) else "file"}
    data.update(asdict(position))
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise PositionError(f"position file {path} cannot be written: {exc.strerror or exc}") from None
