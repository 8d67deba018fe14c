"""Running the releaser: alone (``sendguard release``) or beside the daemon (``sendguard run``).

It opens a store connection of its own, so it coordinates with the daemon's
event loop (and with daemons on other hosts, through Redis) exactly as a
second process would: through the store's own locks and atomic steps.
"""

from __future__ import annotations

import shutil

from sendguard.background import Background
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


def start(config: Config, settings: PolicydSettings) -> Background:
    """Start the releaser loop in a daemon thread; return at once (stopping lets the pass in hand finish, then closes the store)."""
    releaser, store = _releaser(config, settings)
    return Background(
        "sendguard-release", lambda stop: releaser.serve(settings.release.interval, stop), join_seconds=60, closers=[store.close]
    ).start()
