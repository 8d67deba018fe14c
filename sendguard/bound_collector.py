"""A Prometheus collector that reads, at each scrape, whatever source a running service has bound to it.

A collector is registered once, at import; the thing it reads (a store, a
watcher's windows) exists only while a service runs, and a test may start and
stop several. Binding swaps the source under a lock; with none bound, a scrape
yields nothing from it rather than stale or half-built values.
"""

from __future__ import annotations

import threading
from typing import Generic, Iterable, TypeVar

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

S = TypeVar("S")


class BoundCollector(Collector, Generic[S]):
    """Yields :meth:`collect_from` the bound source (nothing when none is bound)."""

    def __init__(self) -> None:
        self._source: S | None = None
        self._lock = threading.Lock()

    def bind(self, source: S | None) -> None:
        """Set (or clear, with None) the source a scrape reads."""
        with self._lock:
            self._source = source

    def unbind(self, source: S) -> None:
        """Clear the source if it is still ``source`` (a newer service's binding stays)."""
        with self._lock:
            if self._source is source:
                self._source = None

    def describe(self) -> Iterable[Metric]:
        """No fixed description: the families depend on the bound source."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Read the bound source once, if there is one."""
        with self._lock:
            source = self._source
        if source is None:
            return
        yield from self.collect_from(source)

    def collect_from(self, source: S) -> Iterable[Metric]:
        """The families read from ``source`` (each subclass's own)."""
        raise NotImplementedError
