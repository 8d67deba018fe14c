"""From log lines to :class:`~sendguard_policyd.watch.Delivery`: the parsed fields plus stream, operator and reason.

One batch of lines at a time, so the stream look-up asks the store once per
batch. qmgr's ``status=expired`` line names no recipient: the recipients a
message still had deferred (remembered from its ``status=deferred`` lines
until Postfix removes it) each get an ``expired`` delivery, with the last
reply they were deferred with. An expiry of a message whose deferrals this
watcher did not see (they came before a restart) is one delivery without a
recipient.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from sendguard_policyd.operators import Operators
from sendguard_policyd.watch import Delivery
from sendguard_policyd.watch.classify import classify
from sendguard_policyd.watch.follow import LogLine
from sendguard_policyd.watch.parse import DELIVERY, OTHER, Attempt, Parsed, domain_of, parse_line, parse_message
from sendguard_policyd.watch.streams import StreamMap

#: Messages whose deferred recipients are remembered for their expiry (the oldest are forgotten first).
PENDING_MESSAGES = 100_000


@dataclass
class Batch:
    """What a batch of lines gave: each line's kind, and the deliveries in log order."""

    kinds: list[str] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    #: The time stamp of the batch's last line that had one (for the lag).
    last_at: float | None = None


class DeliveryParser:
    """Turn lines into deliveries (see the module docstring)."""

    def __init__(self, streams: StreamMap, operators: Operators, now: Callable[[], float] = time.time) -> None:
        self.streams = streams
        self.operators = operators
        self.now = now
        # queue id -> recipient -> its last deferral.
        self._pending: OrderedDict[str, dict[str, Attempt]] = OrderedDict()

    def parse(self, lines: Sequence[LogLine]) -> Batch:
        """Parse a batch of lines."""
        parsed = [self._parse_one(line) for line in lines]
        self.streams.prefetch([p.attempt.queue_id for p in parsed if p.attempt is not None])
        batch = Batch()
        for p in parsed:
            batch.kinds.append(p.kind)
            if p.at is not None:
                batch.last_at = p.at
            if p.kind == DELIVERY and p.attempt is not None:
                batch.deliveries.extend(self._deliveries(p.attempt))
            elif p.kind == OTHER and p.queue_id and p.text == "removed":
                self._pending.pop(p.queue_id, None)
                self.streams.forget(p.queue_id)
        return batch

    def _parse_one(self, line: LogLine) -> Parsed:
        if line.program is not None and line.at is not None:
            return parse_message(line.at, line.program, line.text)
        return parse_line(line.text, self.now)

    def _deliveries(self, a: Attempt) -> list[Delivery]:
        if a.status == "expired":
            pending = self._pending.pop(a.queue_id, {})
            if not pending:
                return [self._delivery(a, a, "")]
            return [self._delivery(a, last, rcpt) for rcpt, last in pending.items()]
        if a.status == "deferred":
            self._pending.setdefault(a.queue_id, {})[a.recipient] = a
            self._pending.move_to_end(a.queue_id)
            while len(self._pending) > PENDING_MESSAGES:
                self._pending.popitem(last=False)
        else:
            waiting = self._pending.get(a.queue_id)
            if waiting is not None:
                waiting.pop(a.recipient, None)
        return [self._delivery(a, a, a.recipient)]

    def _delivery(self, a: Attempt, last: Attempt, recipient: str) -> Delivery:
        """The delivery of ``a`` (for an expiry: with the recipient's ``last`` deferral's relay and reply)."""
        domain = domain_of(recipient)
        return Delivery(
            at=a.at,
            queue_id=a.queue_id,
            recipient=recipient,
            domain=domain,
            relay=last.relay,
            relay_ip=last.relay_ip,
            status=a.status,
            dsn=last.dsn,
            reply=last.reply,
            # An expiry is logged by qmgr: the transport that tried the recipient names its syslog name.
            stream=self.streams.stream_of(a.queue_id, last.program),
            operator=self.operators.classify(last.relay, domain),
            reason=classify(a.status, last.dsn, last.reply),
        )
