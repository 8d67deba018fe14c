"""Postfix's log lines: the syslog header, and the delivery lines of Postfix 3.7.

A delivery line is what a delivery agent (smtp, lmtp, local, virtual, pipe,
error, discard; qmgr and the error service for mail they defer without an
agent, as in "delivery temporarily suspended") logs per recipient::

    QUEUEID: to=<RCPT>, [orig_to=<...>, ]relay=RELAY, [conn_use=N, ]delay=..., delays=..., dsn=X.Y.Z, status=STATUS (TEXT)

and qmgr's line for a message that stayed in the queue longer than
``maximal_queue_lifetime``, which names no recipient::

    QUEUEID: from=<SENDER>, status=expired, returned to sender

``RELAY`` is ``none`` (no host answered), ``local``, ``virtual``, a pipe
transport's name, or ``HOST[ADDRESS]:PORT`` where ADDRESS is IPv4, IPv6 or a
unix socket's path. A remote server's multi-line reply arrives joined into one
line by Postfix (``550-5.7.1 ... 550-5.7.1 ... 550 5.7.1 ...``): the parser
keeps it as one text.

Three header forms are read: the traditional syslog stamp (``Mar  1
10:00:00``, local time, no year), the same with fractions of a second (some
``maillog_file`` set-ups), and RFC 3339 (rsyslog's default on Debian 12,
``2024-03-01T10:00:00.123456+01:00``). The journal gives its fields apart
(:func:`parse_message`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

#: What :func:`parse_line` makes of a line.
DELIVERY = "delivery"  # a delivery line (or qmgr's expired line)
OTHER = "other"  # a well-formed log line that is not a delivery (smtpd, cleanup, qmgr "removed" ...)
UNPARSED = "unparsed"  # not a syslog line, or a delivery line whose fields cannot be read

KINDS = (DELIVERY, OTHER, UNPARSED)

_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

_HEADER = re.compile(
    r"(?:(?P<iso>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r"|(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d)(?P<frac>\.\d+)?)"
    r" +(?P<host>\S+) +(?P<prog>[^\s\[:]+)(?:\[\d+\])?: (?P<msg>.*)"
)

# The queue id, then the fields. Short queue ids are hex, long ones (enable_long_queue_ids) base 52.
_QUEUED = re.compile(r"(?P<qid>[0-9A-Za-z]{5,}): (?P<rest>.*)")
_TO = re.compile(r"to=<(?P<to>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]*), (?P<rest>.*)")
_STATUS = re.compile(r"(?:.*, )?dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), status=(?P<status>\w+)(?: \((?P<reply>.*)\))?\s*")
_EXPIRED = re.compile(r"from=<[^>]*>, status=expired, (?P<reply>.*)")
_RELAY = re.compile(r"(?P<host>[^\[\]]*)(?:\[(?P<addr>[^\]]*)\](?::\d+)?)?")

#: The delivery outcomes a delivery line may carry; any other ``status=`` word is unparsed.
_STATUSES = ("sent", "deferred", "bounced", "expired", "undeliverable", "deliverable")


@dataclass(frozen=True, slots=True)
class Attempt:
    """A delivery line's fields, before the watcher adds the stream, operator and reason."""

    at: float
    #: The program that logged it (``postfix/smtp``, ``postfix-bulk/smtp``): its syslog name.
    program: str
    queue_id: str
    #: Lower-cased; "" for qmgr's expired line.
    recipient: str
    relay: str
    relay_ip: str
    status: str
    dsn: str
    reply: str


@dataclass(frozen=True, slots=True)
class Parsed:
    """One line: its kind (:data:`KINDS`), the delivery it holds if any, and its stamp and program."""

    kind: str
    attempt: Attempt | None = None
    #: The line's queue id, also for lines that are not deliveries (qmgr's "removed").
    queue_id: str = ""
    text: str = ""
    at: float | None = None


#: A stamp without a year more than this far ahead of now is last year's (a December line read in January).
_AHEAD = 2 * 86400


def stamp(header: re.Match[str], now: float) -> float | None:
    """The epoch seconds of a header's time stamp, or None when it is not a valid time."""
    try:
        if header["iso"]:
            text = header["iso"].replace(" ", "T").replace("Z", "+00:00")
            parsed = datetime.fromisoformat(text)
            return parsed.timestamp()  # naive: local time, as syslog writes it
        month = _MONTHS.get(header["mon"])
        if month is None:
            return None
        hour, minute, second = map(int, header["hms"].split(":"))
        datetime(2000, month, int(header["day"]), hour, minute, second)  # a real day and time (2000: Feb 29 exists)
        year = time.localtime(now).tm_year
        base = time.mktime((year, month, int(header["day"]), hour, minute, second, 0, 0, -1))  # local time
        if base > now + _AHEAD:
            base = time.mktime((year - 1, month, int(header["day"]), hour, minute, second, 0, 0, -1))
        return base + (float(header["frac"]) if header["frac"] else 0.0)
    except (ValueError, OverflowError):
        return None


def parse_message(at: float, program: str, message: str) -> Parsed:
    """Read the text after ``program[pid]: `` (what the journal's MESSAGE holds)."""
    queued = _QUEUED.fullmatch(message)
    if queued is None:
        return Parsed(OTHER, text=message, at=at)
    qid, rest = queued["qid"], queued["rest"]
    if rest.startswith("to=<"):
        return _delivery(at, program, qid, rest)
    if rest.startswith("from=<") and ", status=expired" in rest:
        expired = _EXPIRED.fullmatch(rest)
        if expired is None:
            return Parsed(UNPARSED, queue_id=qid, text=message, at=at)
        attempt = Attempt(at, program, qid, "", "", "", "expired", "", expired["reply"])
        return Parsed(DELIVERY, attempt, qid, message, at)
    return Parsed(OTHER, queue_id=qid, text=rest, at=at)


def _delivery(at: float, program: str, qid: str, rest: str) -> Parsed:
    to = _TO.fullmatch(rest)
    status = _STATUS.fullmatch(to["rest"]) if to else None
    if to is None or status is None or status["status"] not in _STATUSES:
        # "to=<" begins every delivery line: one that does not read is a format we do not know.
        return Parsed(UNPARSED, queue_id=qid, text=rest, at=at)
    relay = _RELAY.fullmatch(to["relay"].strip())
    host, addr = (relay["host"], relay["addr"] or "") if relay else (to["relay"], "")
    if addr.startswith(("private/", "public/", "/")):
        addr = ""  # a unix socket (lmtp to a local Dovecot), not an IP address
    if host == "none":
        host = ""
    attempt = Attempt(
        at=at,
        program=program,
        queue_id=qid,
        recipient=to["to"].lower(),
        relay=host.lower(),
        relay_ip=addr,
        status=status["status"],
        dsn=status["dsn"],
        reply=status["reply"] or "",
    )
    return Parsed(DELIVERY, attempt, qid, rest, at)


def parse_line(line: str, now: Callable[[], float] = time.time) -> Parsed:
    """Read one line of the mail log (see the module docstring); ``now`` dates a stamp without a year."""
    # A file truncated in place by copytruncate may hold NUL bytes where a writer without
    # O_APPEND went on at its old offset.
    header = _HEADER.fullmatch(line.strip("\x00").rstrip("\r\n"))
    if header is None:
        return Parsed(UNPARSED, text=line)
    at = stamp(header, now())
    if at is None:
        return Parsed(UNPARSED, text=line)
    return parse_message(at, header["prog"], header["msg"])


def domain_of(address: str) -> str:
    """The domain of an address (after the last ``@``), lower-cased; "" when it has none."""
    return address.rpartition("@")[2].lower() if "@" in address else ""

