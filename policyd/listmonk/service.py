"""Running the Listmonk syncs: one thread per enabled ``[listmonk.NAME]``, beside the policy daemon.

The threads share nothing with the daemon's event loop: a Listmonk that is
down, slow or refusing only delays its own sync.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from sendguard import logs
from sendguard.config import Config
from sendguard_policyd.backend import open_store
from sendguard_policyd.cap_in_force import CapInForceSource, WarmupCapInForce
from sendguard_policyd.listmonk.settings import ListmonkSettings
from sendguard_policyd.listmonk.sync import ListmonkSync
from sendguard_policyd.listmonk.window import HOUR
from sendguard_policyd.ramp_refresh import RampRefresher
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.store import CounterStore, StoreError
from sendguard_policyd.warmup import make_warmups

log = logs.get("listmonk")



@dataclass
class ListmonkHandle:
    """The running syncs."""

    syncs: list[ListmonkSync]
    _threads: list[threading.Thread] = field(repr=False)
    _stop: threading.Event = field(repr=False)
    #: The store connection and ramp refresher behind the cap in force (when start() made them).
    _store: CounterStore | None = field(default=None, repr=False)
    _ramps: RampRefresher | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop every sync (a request under way finishes within its timeout); idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self._ramps is not None:
            self._ramps.close()
        if self._store is not None:
            self._store.close()


def store_cap_in_force(config: Config, policyd: PolicydSettings, store: CounterStore) -> tuple[CapInForceSource, RampRefresher]:
    """The cap in force as the policy daemon enforces it: the effective warmup day (the ramp history
    read from ``store`` every minute) and the stream's whole-stream pause. A store that cannot be
    read counts as a pause: Listmonk then sends at the floor, never faster than the daemon lets through."""
    warmups = make_warmups(config.streams, policyd)
    ramps = RampRefresher(warmups, store)

    def paused(stream: str, now: float) -> str | None:
        try:
            pauses = store.pauses(now)
        except StoreError as exc:
            return f"the counter store cannot be read ({exc})"
        for p in pauses:
            if p.stream == stream and not p.operator:
                return f"rule {p.rule}: {p.reason}"
        return None

    return WarmupCapInForce(config.streams, paused, warmups), ramps


def build(
    config: Config,
    listmonks: Sequence[ListmonkSettings],
    policyd: PolicydSettings,
    cap_in_force: CapInForceSource | None = None,
) -> list[ListmonkSync]:
    """A sync per enabled table; ``cap_in_force`` defaults to the streams' warmup caps (no pauses)."""
    enabled = [one for one in listmonks if one.enabled]
    source = cap_in_force or WarmupCapInForce(config.streams)
    # Several Listmonk instances feeding one stream share its caps equally: each window counts one instance.
    shares = Counter(one.stream for one in enabled)
    hour = policyd.test_window_seconds or HOUR
    return [ListmonkSync(one, source, shares[one.stream], hour) for one in enabled]


def start(
    config: Config,
    listmonks: Sequence[ListmonkSettings],
    policyd: PolicydSettings,
    cap_in_force: CapInForceSource | None = None,
) -> ListmonkHandle:
    """Start a thread per enabled table; return at once (the first pass runs on the thread).

    Without ``cap_in_force``, the cap in force comes from the counter store (:func:`store_cap_in_force`)."""
    store = ramps = None
    if cap_in_force is None:
        store = open_store(policyd)
        cap_in_force, ramps = store_cap_in_force(config, policyd, store)
        ramps.refresh()
        ramps.start()
    syncs = build(config, listmonks, policyd, cap_in_force)
    stop = threading.Event()
    threads = [
        threading.Thread(target=sync.serve, args=(stop,), name=f"sendguard-listmonk-{sync.settings.name}", daemon=True)
        for sync in syncs
    ]
    for thread in threads:
        thread.start()
    return ListmonkHandle(syncs, threads, stop, store, ramps)
