"""Running the releaser: alone (``sendguard release``) or beside the daemon (``sendguard run``).

It opens a store connection of its own, so it coordinates with the daemon's
event loop (and with daemons on other hosts, through Redis) exactly as a
second process would: through the store's own locks and atomic steps.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field

from sendguard.config import Config
from sendguard_policyd.backend import open_store
from sendguard_policyd.postfix_queue import PostfixQueue
from sendguard_policyd.release import PassResult, Releaser
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.store import CounterStore
from sendguard_policyd.warmup import make_warmups


def wanted_in_run(settings: PolicydSettings) -> bool:
    """Whether ``sendguard run`` starts the releaser: ``[release] enabled``, "auto" meaning Postfix is here."""
    enabled = settings.release.enabled
    if enabled == "auto":
        return shutil.which("postqueue") is not None
    return bool(enabled)


def _releaser(config: Config, settings: PolicydSettings) -> tuple[Releaser, CounterStore]:
    store = open_store(settings)
    queue = PostfixQueue(settings.release.postfix_config_dir)
    warmups = make_warmups(config.streams, settings)
    return Releaser(config.streams, store, queue, settings.release.lifetime_warn_share, warmups=warmups), store


def run_once(config: Config, settings: PolicydSettings) -> PassResult:
    """One pass (``sendguard release --once``)."""
    releaser, store = _releaser(config, settings)
    try:
        return releaser.run_pass()
    finally:
        store.close()


@dataclass
class ReleaseHandle:
    """A releaser running in a thread of its own."""

    store: CounterStore
    _thread: threading.Thread = field(repr=False)
    _stop: threading.Event = field(repr=False)

    def stop(self) -> None:
        """Let the current pass finish, stop, close the store (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=60)
        self.store.close()


def start(config: Config, settings: PolicydSettings) -> ReleaseHandle:
    """Start the releaser loop in a daemon thread; return at once."""
    releaser, store = _releaser(config, settings)
    stop = threading.Event()
    thread = threading.Thread(
        target=releaser.serve, args=(settings.release.interval, stop), name="sendguard-release", daemon=True
    )
    thread.start()
    return ReleaseHandle(store, thread, stop)
