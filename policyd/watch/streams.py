"""Which stream a delivery belongs to: the store's record of its queue id, else its syslog name, else "none".

The policy daemon records each message it counts or holds at END-OF-MESSAGE
under Postfix's queue id, and the queue id stays the message's through
delivery: that record (:meth:`~sendguard_policyd.store.StoreReader.streams_of`)
names the stream. A message the store does not know (mail in no stream, a
record past the store's retention of about a day, a store that does not
answer) is mapped by the program that logged the delivery, through ``[watch]
syslog_streams``: the whole program (``postfix-bulk/smtp``) or its syslog name
(``postfix-bulk``, what ``-o syslog_name=`` gave the transport in master.cf).
Anything else is in stream ``"none"``.

Answers are cached per queue id (a message's recipients and retries ask
again) until Postfix logs the queue id ``removed``, as Postfix reuses ids.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Collection, Mapping

from sendguard import logs
from sendguard_policyd.store import StoreError, StoreReader

log = logs.get("watch")

#: The stream of mail no record and no syslog name places.
NONE = "none"
#: Queue ids remembered (a day of the brief's volume several times over).
CACHE_SIZE = 100_000


class StreamMap:
    """Map queue ids (and the logging program) to streams; see the module docstring."""

    def __init__(self, store: StoreReader | None, syslog_streams: Mapping[str, str], cache_size: int = CACHE_SIZE) -> None:
        self.store = store
        self.syslog_streams = dict(syslog_streams)
        self.cache_size = cache_size
        self._known: OrderedDict[str, str | None] = OrderedDict()
        self._store_down = False

    def prefetch(self, queue_ids: Collection[str]) -> None:
        """Ask the store, in one look-up, for the queue ids not known yet (a batch of lines)."""
        wanted = [q for q in dict.fromkeys(queue_ids) if q and q not in self._known]
        if not wanted or self.store is None:
            return
        try:
            found = self.store.streams_of(wanted)
        except StoreError as exc:
            if not self._store_down:
                log.warning("counter store unreadable (%s): deliveries are placed by [watch] syslog_streams until it answers", exc)
                self._store_down = True
            return
        if self._store_down:
            log.info("counter store answers again: deliveries are placed by their queue ids' records")
            self._store_down = False
        for q in wanted:
            self._remember(q, found.get(q))

    def _remember(self, queue_id: str, stream: str | None) -> None:
        self._known[queue_id] = stream
        self._known.move_to_end(queue_id)
        while len(self._known) > self.cache_size:
            self._known.popitem(last=False)

    def stream_of(self, queue_id: str, program: str) -> str:
        """The stream of a delivery of ``queue_id`` logged by ``program``."""
        if queue_id not in self._known:
            self.prefetch((queue_id,))
        stream = self._known.get(queue_id)
        if stream:
            return stream
        return self.syslog_streams.get(program) or self.syslog_streams.get(program.rpartition("/")[0]) or NONE

    def forget(self, queue_id: str) -> None:
        """Postfix removed the message: its queue id may name another message later."""
        self._known.pop(queue_id, None)
