"""Finding aggregate reports in the configured sources, and taking them out of their wrapping.

A source is a path: a report file (``.xml``, ``.xml.gz``, ``.zip``), a mail
(``.eml``) with such a report attached, an mbox, a maildir, or a folder of any
of these (read recursively). What a file is comes from its first bytes, not its
name: receivers name their attachments every way.

Everything here is untrusted input. A file larger than ``max_file_bytes`` is
not read; a gzip or zip member is read only up to ``max_report_bytes``
(a zip bomb stops there); a zip holds at most :data:`MAX_ZIP_MEMBERS` members
worth looking at. What cannot be read comes out as a :class:`Found` with a
``problem`` (one line), so the caller logs it and goes on with the next.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import mailbox
import os
import zipfile
import zlib
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Iterator

#: Members of one zip looked at: a report zip holds one XML file.
MAX_ZIP_MEMBERS = 8
#: Attachment types a report comes in (RFC 7489 section 7.2.1.1 names gzip and zip; receivers add others).
REPORT_TYPES = {
    "application/gzip", "application/x-gzip", "application/zip", "application/x-zip-compressed",
    "application/x-zip", "text/xml", "application/xml", "application/octet-stream",
}  # fmt: skip
REPORT_SUFFIXES = (".xml", ".gz", ".zip", ".xml.gz")


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of a stranger's data is read."""

    #: A file (or mail) larger than this is skipped unread (an mbox is read message by message instead).
    max_file_bytes: int = 20 * 1024 * 1024
    #: A report's XML, once decompressed, may be this large at most.
    max_report_bytes: int = 50 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Found:
    """One report's XML, or why a piece of a source could not give one."""

    #: Where it came from: the file, and inside it the message or attachment.
    where: str
    xml: bytes = b""
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Unit:
    """One file of a source: read whole, skipped whole when it has not changed since it was read."""

    path: Path
    size: int
    mtime_ns: int


def _unit(path: Path) -> Unit | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return Unit(path, st.st_size, st.st_mtime_ns)


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def units(source: Path) -> Iterator[Unit]:
    """The files a source holds, in a stable order (a maildir's ``tmp/`` and dot files left out)."""
    if source.is_file():
        found = _unit(source)
        if found:
            yield found
        return
    if _is_maildir(source):
        # tmp/ holds mail being delivered, not yet complete (the maildir convention).
        folders = [source / "new", source / "cur"]
        for folder in folders:
            for name in sorted(os.listdir(folder)):
                if not name.startswith(".") and (folder / name).is_file():
                    one = _unit(folder / name)
                    if one:
                        yield one
        # Maildir++ sub-folders (".Reports") are maildirs of their own.
        for name in sorted(os.listdir(source)):
            if name.startswith(".") and _is_maildir(source / name):
                yield from units(source / name)
        return
    for root, dirs, files in os.walk(source):
        dirs.sort()
        if _is_maildir(Path(root)):
            yield from units(Path(root))
            dirs[:] = []
            continue
        for name in sorted(files):
            if not name.startswith("."):
                one = _unit(Path(root) / name)
                if one:
                    yield one


def _kind(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] == b"PK\x03\x04":
        return "zip"
    start = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"<"):
        return "xml"
    if data[:5] == b"From ":
        return "mbox"
    return "mail"


def _gunzip(data: bytes, limit: int) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"broken gzip: {exc}") from None
    if len(out) > limit:
        raise ValueError(f"gzip expands past max_report_bytes ({limit} bytes)")
    return out


def _unzip(where: str, data: bytes, limit: int) -> Iterator[Found]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield Found(where, problem=f"broken zip: {exc}")
        return
    if not members:
        yield Found(where, problem="an empty zip")
    if len(members) > MAX_ZIP_MEMBERS:
        yield Found(where, problem=f"a zip of {len(members)} members (a report zip holds one; at most {MAX_ZIP_MEMBERS} read)")
        return
    for member in members:
        inner = f"{where}: {member.filename}"
        if member.file_size > limit:
            yield Found(inner, problem=f"zip member of {member.file_size} bytes, past max_report_bytes ({limit} bytes)")
            continue
        try:
            with archive.open(member) as f:
                out = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError, zlib.error) as exc:
            yield Found(inner, problem=f"broken zip member: {exc}")
            continue
        if len(out) > limit:  # the declared size lied
            yield Found(inner, problem=f"zip member expands past max_report_bytes ({limit} bytes)")
            continue
        yield from _unwrap(inner, out, limit, depth=1)


def _unwrap(where: str, data: bytes, limit: int, depth: int = 0) -> Iterator[Found]:
    """The reports inside ``data``: XML as it is, gzip and zip opened (one level inside another at most)."""
    kind = _kind(data)
    if kind == "xml":
        if len(data) > limit:
            yield Found(where, problem=f"XML of {len(data)} bytes, past max_report_bytes ({limit} bytes)")
        else:
            yield Found(where, xml=data)
    elif depth > 1:
        yield Found(where, problem=f"{kind} nested in an archive twice: not a report")
    elif kind == "gzip":
        try:
            yield from _unwrap(where, _gunzip(data, limit), limit, depth + 1)
        except ValueError as exc:
            yield Found(where, problem=str(exc))
    elif kind == "zip":
        yield from _unzip(where, data, limit)
    else:
        yield Found(where, problem="neither XML, gzip nor zip")


def _attachments(where: str, message: Message, limit: int) -> Iterator[Found]:
    """The reports attached to one mail; a mail with none gives one problem (it is not a report)."""
    any_found = False
    for part in message.walk():
        if part.is_multipart():
            continue
        name = part.get_filename() or ""
        ctype = part.get_content_type()
        if ctype not in REPORT_TYPES and not name.lower().endswith(REPORT_SUFFIXES):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        any_found = True
        yield from _unwrap(f"{where}: attachment {name or ctype}", payload, limit)
    if not any_found:
        subject = str(message.get("Subject", ""))[:80]
        yield Found(where, problem=f"a mail with no report attached (subject {subject!r})")


def _message(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def read_message(where: str, data: bytes, limits: Limits = Limits()) -> Iterator[Found]:
    """The reports attached to one mail's bytes (one fetched over IMAP), or why there are none."""
    if len(data) > limits.max_file_bytes:
        yield Found(where, problem=f"{len(data)} bytes, past max_file_bytes ({limits.max_file_bytes} bytes): not read")
        return
    yield from _attachments(where, _message(data), limits.max_report_bytes)


def read_unit(unit: Unit, limits: Limits = Limits()) -> Iterator[Found]:
    """Every report in one file (an mbox message by message), or why a piece gave none."""
    where = str(unit.path)
    try:
        with open(unit.path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        yield Found(where, problem=f"cannot read: {exc.strerror or exc}")
        return
    if _kind(head) == "mbox":
        yield from _read_mbox(unit.path, limits)
        return
    if unit.size > limits.max_file_bytes:
        yield Found(where, problem=f"{unit.size} bytes, past max_file_bytes ({limits.max_file_bytes} bytes): not read")
        return
    try:
        data = unit.path.read_bytes()
    except OSError as exc:
        yield Found(where, problem=f"cannot read: {exc.strerror or exc}")
        return
    if _kind(data) == "mail":
        yield from _attachments(where, _message(data), limits.max_report_bytes)
    else:
        yield from _unwrap(where, data, limits.max_report_bytes)


def _read_mbox(path: Path, limits: Limits) -> Iterator[Found]:
    box = mailbox.mbox(path, create=False)
    try:
        for i, key in enumerate(box.iterkeys(), start=1):
            where = f"{path}: message {i}"
            data = box.get_bytes(key)
            if len(data) > limits.max_file_bytes:
                yield Found(where, problem=f"{len(data)} bytes, past max_file_bytes ({limits.max_file_bytes} bytes): not read")
                continue
            yield from _attachments(where, _message(data), limits.max_report_bytes)
    finally:
        box.close()
