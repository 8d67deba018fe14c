"""Message-ID repair: a missing Message-ID, or one naming a host no receiver can trust, gets a new one.

Listmonk in a container writes ``<...@localhost>`` or ``<...@3f2a9c1b7d>`` (its
container id), which spam filters score; a message without one gets Postfix's
(with ``always_add_missing_headers``) only after signing, unsigned. With
``[milter] message_id_repair = true`` the milter writes ``<unique@HOST>`` before
it signs (docs/milter.md#message-id-repair).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from dataclasses import dataclass
from typing import Sequence

#: What ``message_id_bad_hosts`` holds unless the config says otherwise.
DEFAULT_BAD_HOSTS = ("localhost", "localhost.localdomain")
#: The fixed reasons (metric labels).
REASONS = ("missing", "bad_host")

_ANGLE = re.compile(r"<([^<>]*)>")


@dataclass(frozen=True)
class MessageIdPolicy:
    """``[milter] message_id_*``: whether and how to repair."""

    repair: bool = False
    bad_hosts: tuple[str, ...] = DEFAULT_BAD_HOSTS
    #: The right-hand side of new ids; None: the From domain.
    host: str | None = None
    #: Keep the replaced id in X-Original-Message-ID.
    keep_original: bool = False


@dataclass(frozen=True)
class Repair:
    """A repair to make: ``reason`` is missing or bad_host.

    ``original`` is the old value: None when there was no Message-ID field (one
    is added), ``""`` when the field was there but empty (it is changed).
    """

    reason: str
    new_id: str
    original: str | None
    bad_host: str | None = None

    def text(self) -> str:
        """The repair as the log and ``sendguard explain`` name it."""
        was = f" (right-hand side {self.bad_host!r})" if self.reason == "bad_host" else ""
        return f"{self.reason}{was}, replaced with {self.new_id}"


def right_hand_side(value: str) -> str | None:
    """The host part of a Message-ID value (``<left@right>``), lower case; None when there is no ``@``."""
    match = _ANGLE.search(value)
    inner = match.group(1) if match else value.strip()
    left, at, right = inner.rpartition("@")
    if not at or not left:
        return None
    return right.strip().lower()


def bad_host_problem(host: str | None, bad_hosts: Sequence[str]) -> str | None:
    """Why ``host`` is not a right-hand side to send (None when it is fine)."""
    if host is None or not host:
        return "no right-hand side"
    if host in bad_hosts:
        return f"{host} is listed in message_id_bad_hosts"
    if host.startswith("[") and host.endswith("]"):
        return f"{host} is an address literal"
    try:
        ipaddress.ip_address(host)
        return f"{host} is an IP address"
    except ValueError:
        pass
    if "." not in host:
        return f"{host} has no dot (a bare host or container name)"
    return None


def new_message_id(host: str) -> str:
    """A fresh ``<unique@host>``: time to the microsecond and 64 random bits, never reused."""
    return f"<{time.strftime('%Y%m%d%H%M%S', time.gmtime())}.{secrets.token_hex(8)}@{host}>"


def needed_repair(headers: Sequence[tuple[str, bytes]], policy: MessageIdPolicy, from_domain: str | None) -> Repair | None:
    """The repair the message needs, or None (fine, repair off, or no host to write)."""
    if not policy.repair:
        return None
    host = policy.host or from_domain
    if not host:
        return None
    current = next((v for n, v in headers if n.lower() == "message-id"), None)
    if current is None or not current.strip():
        return Repair("missing", new_message_id(host), None if current is None else "")
    value = current.decode("utf-8", "replace").replace("\n", " ").strip()
    right = right_hand_side(value)
    if bad_host_problem(right, policy.bad_hosts) is None:
        return None
    return Repair("bad_host", new_message_id(host), value, right)
