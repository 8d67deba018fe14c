"""Fetching report mails from an IMAP mailbox (``[dmarc.imap]``), read-only.

The mailbox is opened with EXAMINE and each message fetched with BODY.PEEK:
nothing is marked seen, moved or deleted, so a mail client or another tool can
share the mailbox. A message is known by the mailbox's UIDVALIDITY and its UID:
each is fetched once (remembered beside the files read), and a mailbox whose
UIDVALIDITY changed is read again whole (its reports then come out as duplicates).
"""

from __future__ import annotations

import imaplib
import re
import ssl
from dataclasses import dataclass
from typing import Callable, Iterator

from sendguard_policyd.dmarc.settings import ImapSettings

_SIZE = re.compile(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)")


class ImapError(Exception):
    """The mailbox could not be read (connection, TLS, login, mailbox); the text is one line."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One message of the mailbox: its key, its bytes, or why it was not fetched."""

    key: str
    where: str
    data: bytes = b""
    problem: str = ""


def _connect(s: ImapSettings) -> imaplib.IMAP4:
    # Certificates are always verified (host name included): the login's password goes over this.
    context = ssl.create_default_context(cafile=s.ca_file or None)
    if s.tls == "implicit":
        return imaplib.IMAP4_SSL(s.host, s.port, ssl_context=context, timeout=s.timeout)
    conn = imaplib.IMAP4(s.host, s.port, timeout=s.timeout)
    if s.tls == "starttls":
        try:
            conn.starttls(context)
        except BaseException:
            try:
                conn.shutdown()
            except OSError:  # the failed handshake may have closed the socket already
                pass
            raise
    return conn


def _quoted(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fetch(s: ImapSettings, known: Callable[[str], bool], max_bytes: int) -> Iterator[Fetched]:
    """Every message of the mailbox not ``known`` yet (an :class:`ImapError` when the mailbox cannot be read)."""
    base = f"imap://{s.username}@{s.host}:{s.port}/{s.mailbox}"
    try:
        conn = _connect(s)
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        raise ImapError(f"{base}: cannot connect: {exc}") from None
    try:
        try:
            conn.login(s.username, s.password)
        except imaplib.IMAP4.error as exc:
            raise ImapError(f"{base}: login refused: {exc}") from None
        typ, _data = conn.select(_quoted(s.mailbox), readonly=True)
        if typ != "OK":
            raise ImapError(f"{base}: cannot open the mailbox: {_data[0]!r}")
        validity = (conn.response("UIDVALIDITY")[1] or [b"0"])[0]
        validity_text = validity.decode() if isinstance(validity, bytes) else str(validity)
        typ, data = conn.uid("FETCH", "1:*", "(RFC822.SIZE)")
        sizes: dict[int, int] = {}
        for item in data if typ == "OK" else []:
            line = item[0] if isinstance(item, tuple) else item
            m = _SIZE.search(line or b"")
            if m:
                uid, size = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
                sizes[int(uid)] = int(size)
        for uid in sorted(sizes):
            key = f"{base};UIDVALIDITY={validity_text};UID={uid}"
            where = f"{base} UID {uid}"
            if known(key):
                continue
            if sizes[uid] > max_bytes:
                yield Fetched(key, where, problem=f"{sizes[uid]} bytes, past max_file_bytes ({max_bytes} bytes): not fetched")
                continue
            typ, body = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
            parts = [p[1] for p in body if isinstance(p, tuple) and len(p) > 1] if typ == "OK" else []
            if not parts:
                yield Fetched(key, where, problem="the server sent no message body")
                continue
            yield Fetched(key, where, data=parts[0])
        conn.close()
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        raise ImapError(f"{base}: {type(exc).__name__}: {exc}") from None
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
