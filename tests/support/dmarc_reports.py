"""DMARC aggregate reports as receivers send them, for the ``sendguard dmarc`` tests.

The two committed reports (tests/policyd/data/dmarc/) are one in each schema:
Google's style of RFC 7489 appendix C without a namespace, and Outlook's style
in the ``urn:ietf:params:xml:ns:dmarc-2.0`` namespace. The helpers here wrap
reports as they arrive: gzip and zip files, mails with the file attached
(base64, as receivers send them), maildirs and mboxes.
"""

from __future__ import annotations

import gzip
import io
import mailbox
import re
import zipfile
from email.message import EmailMessage
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "policyd" / "data" / "dmarc"
GOOGLE = DATA / "google-rfc7489.xml"
MICROSOFT = DATA / "microsoft-dmarc2.xml"


def gzipped(xml: bytes) -> bytes:
    """``xml`` as a .xml.gz file."""
    return gzip.compress(xml)


def zipped(xml: bytes, name: str = "report.xml") -> bytes:
    """``xml`` as a .zip file of one member."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, xml)
    return out.getvalue()


def report_mail(attachment: bytes, filename: str, ctype: str = "application/gzip", subject: str = "Report domain: example.org") -> EmailMessage:
    """A report mail as a receiver sends it: a short text part and the report attached."""
    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.com"
    msg["To"] = "dmarc-rua@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{filename}@google.com>"
    msg.set_content("This is an aggregate report from google.com.\n")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def plain_mail(subject: str = "Lunch on Friday?") -> EmailMessage:
    """A mail that is not a report (it happens in a rua mailbox: spam, a human's reply)."""
    msg = EmailMessage()
    msg["From"] = "someone@example.net"
    msg["To"] = "dmarc-rua@example.org"
    msg["Subject"] = subject
    msg.set_content("Nothing attached.\n")
    return msg


def write_maildir(path: Path, messages: list[EmailMessage]) -> Path:
    """A maildir holding ``messages`` (in new/, as the local delivery agent leaves them)."""
    box = mailbox.Maildir(path, create=True)
    for m in messages:
        box.add(m)
    box.close()
    return path


def write_mbox(path: Path, messages: list[EmailMessage]) -> Path:
    """An mbox file holding ``messages``."""
    box = mailbox.mbox(path, create=True)
    for m in messages:
        box.add(m)
    box.flush()
    box.close()
    return path


def with_id(xml: bytes, report_id: str) -> bytes:
    """The same report under another report id (a second day's report)."""
    return re.sub(rb"<report_id>[^<]*</report_id>", b"<report_id>" + report_id.encode() + b"</report_id>", xml, count=1)


def dated(xml: bytes, end: int) -> bytes:
    """The same report for the day ending at ``end`` (a report inside the metrics' window)."""
    xml = re.sub(rb"<begin>\d+</begin>", b"<begin>%d</begin>" % (end - 86399), xml, count=1)
    return re.sub(rb"<end>\d+</end>", b"<end>%d</end>" % end, xml, count=1)
