"""A service's loop on a daemon thread of its own (releaser, watcher, DMARC ingester), and the one way to stop it."""

from __future__ import annotations

import threading
from typing import Callable, Sequence


class Background:
    """A loop ``loop(stop)`` running on a daemon thread until ``stop`` is set.

    :meth:`stop` sets the event, waits up to ``join_seconds`` for the loop to
    finish what it has in hand, then runs ``closers`` in order (the loop's
    follower, its store, the service's "stopped" line); a second call does nothing.
    """

    def __init__(
        self,
        name: str,
        loop: Callable[[threading.Event], None],
        *,
        join_seconds: float,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=loop, args=(self._stop,), name=name, daemon=True)
        self._join_seconds = join_seconds
        self._closers = tuple(closers)

    def start(self) -> Background:
        """Start the thread; return self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the work in hand, then close what the loop used (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self._join_seconds)
        for close in self._closers:
            close()
