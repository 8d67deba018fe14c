"""``sendguard watch``: what receivers answered, per stream and receiving operator.

The watcher follows Postfix's log, turns each delivery line into a
:class:`Delivery` and hands it to every :class:`DeliveryConsumer` (the
metrics, the stop-signal rules that pause a stream, the sending-day counter of
the warmup). The interface is here, beside its users; the follower, the parser
and the consumers live in the files of this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: Postfix's delivery outcomes the watcher reports (``status=`` in an smtp/lmtp/local line;
#: ``expired`` is qmgr's "message has been in the queue too long" bounce).
STATUSES = ("sent", "deferred", "bounced", "expired")

#: Why a delivery was deferred or bounced: a bounded set (a metric label), never the reply text.
REASONS = ("reputation", "rate_limited", "user_unknown", "mailbox_full", "dead_tenant", "other")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One recipient's delivery attempt as Postfix logged it."""

    #: Epoch seconds of the log line.
    at: float
    queue_id: str
    #: The recipient address (``to=<...>``), lower-cased.
    recipient: str
    #: The recipient's domain.
    domain: str
    #: The host that answered (``relay=HOST[IP]:PORT``); "" when none did.
    relay: str
    relay_ip: str
    #: One of :data:`STATUSES`.
    status: str
    #: The enhanced status code (``dsn=5.7.1``).
    dsn: str
    #: The remote reply, or Postfix's own reason: the text in the parentheses.
    reply: str
    #: The stream the message belongs to, or ``"none"``.
    stream: str
    #: The receiving operator (operators.py): ``google``, ``microsoft``, ``yahoo``, a configured one, ``other``.
    operator: str
    #: One of :data:`REASONS` for a deferral or bounce; "" for a delivery that was sent.
    reason: str


class DeliveryConsumer(Protocol):
    """Something that acts on deliveries: called on the watcher's thread, in log order."""

    def delivered(self, delivery: Delivery) -> None:
        """Take one delivery; must not block for long (the watcher waits for it)."""
        ...
