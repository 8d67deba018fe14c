"""Running the watcher: follow the log, parse each batch, hand the deliveries on, save the position.

:class:`Watcher` is the loop; :func:`start` builds one from the config (its
own store connection, like the releaser's, the follower of the configured
file or journal, the consumers of ``consumers.py``) and runs it on a thread,
for ``sendguard watch`` and for ``sendguard run``.

A consumer that fails does not stop the watcher nor the other consumers: its
first failure is logged (and one line when it works again), and the position
moves on, as the line was read.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from sendguard import logs
from sendguard.background import Background
from sendguard.config import Config
from sendguard.config_reader import ConfigError
from sendguard_policyd.backend import open_store, store_key
from sendguard_policyd.operators import Operators
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.stop_signal_rules import Rule
from sendguard_policyd.store import CounterStore, StoreError
from sendguard_policyd.watch import Delivery, DeliveryConsumer
from sendguard_policyd.watch import metrics
from sendguard_policyd.watch.consumers import consumers as configured_consumers
from sendguard_policyd.watch.deliveries import DeliveryParser
from sendguard_policyd.watch.follow import FileFollower, Follower
from sendguard_policyd.watch.journal import JournalFollower
from sendguard_policyd.watch.parse import KINDS
from sendguard_policyd.watch.streams import StreamMap

log = logs.get("watch")

for _kind in KINDS:  # every kind exported from the start, 0 until seen
    metrics.LINES.labels(_kind)


class Watcher:
    """Follow, parse, hand on, commit: one batch per :meth:`step`."""

    def __init__(
        self,
        follower: Follower,
        parser: DeliveryParser,
        consumers: Sequence[DeliveryConsumer],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.follower = follower
        self.parser = parser
        self.consumers = list(consumers)
        self.clock = clock
        self._failing: dict[int, int] = {}

    def step(self) -> int:
        """Handle the next batch of lines; the number of lines (0: nothing new)."""
        lines = self.follower.read()
        metrics.SOURCE_UP.set(1 if self.follower.up else 0)
        if not lines:
            self.follower.commit()
            return 0
        batch = self.parser.parse(lines)
        for kind in KINDS:
            n = batch.kinds.count(kind)
            if n:
                metrics.LINES.labels(kind).inc(n)
        for delivery in batch.deliveries:
            for i, consumer in enumerate(self.consumers):
                self._hand(i, consumer, delivery)
        if batch.last_at is not None:
            metrics.LAG.set(max(0.0, self.clock() - batch.last_at))
        self.follower.commit()
        return len(lines)

    def _hand(self, i: int, consumer: DeliveryConsumer, delivery: Delivery) -> None:
        try:
            consumer.delivered(delivery)
        except Exception as exc:  # one consumer's failure must not stop the others or the watcher
            failures = self._failing.get(i, 0)
            if not failures:
                log.error("%s: delivery consumer %s failed: %s: %s (logged once until it works again)",
                          delivery.queue_id, type(consumer).__name__, type(exc).__name__, exc)  # fmt: skip
            self._failing[i] = failures + 1
            return
        if i in self._failing:
            log.info("delivery consumer %s works again after %d failure(s)", type(consumer).__name__, self._failing.pop(i))

    def run(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set, waiting a poll interval whenever there is nothing new."""
        while not stop.is_set():
            try:
                handled = self.step()
            except Exception:  # the watcher outlives any one bad batch
                log.exception("watcher: a batch failed; going on with the next")
                handled = 0
            if not handled:
                self.follower.wait(stop)

    def close(self) -> None:
        """Close the follower and the consumers that have a ``close``."""
        self.follower.close()
        for consumer in self.consumers:
            close = getattr(consumer, "close", None)
            if callable(close):
                close()


def follower_for(settings: PolicydSettings) -> Follower:
    """The follower of the configured source: the file, or the journal."""
    w = settings.watch
    if w.journal:
        return JournalFollower(w.position_file, w.journal_unit, w.journal_directory, w.start_at, w.poll_interval)
    return FileFollower(w.log, w.position_file, w.start_at, w.poll_interval)


def build(config: Config, settings: PolicydSettings, store: CounterStore, rules: Sequence[Rule] = ()) -> Watcher:
    """A watcher for the configured source, its deliveries placed through ``store``, acting on the
    stop-signal ``rules``."""
    parser = DeliveryParser(StreamMap(store, settings.watch.syslog_streams), Operators(settings.operators))
    return Watcher(follower_for(settings), parser, configured_consumers(config, settings, store, rules))


def start(config: Config, settings: PolicydSettings, rules: Sequence[Rule] = ()) -> Background:
    """Start the watcher on a daemon thread; a ConfigError when no source is configured or the store cannot open."""
    w = settings.watch
    if not w.configured:
        raise ConfigError(config.file, "watch.log", "sendguard watch needs a log file (watch.log) or watch.journal = true")
    try:
        store = open_store(settings)
    except (StoreError, OSError) as exc:
        raise ConfigError(config.file, store_key(settings), str(exc)) from None
    try:
        watcher = build(config, settings, store, rules)
    except BaseException:
        store.close()
        raise
    # Stopping finishes the batch in hand (its position saved), then closes the follower and the store.
    handle = Background(
        "sendguard-watch", watcher.run, join_seconds=30, closers=[watcher.close, store.close, lambda: log.info("watcher stopped")]
    ).start()
    source = f"the journal (unit {w.journal_unit or 'any'})" if w.journal else w.log
    log.info("watching %s; position in %s", source, w.position_file)
    return handle
