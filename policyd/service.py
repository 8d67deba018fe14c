"""Start and stop the policy daemon: the store, the decider, the listening sockets, the live gauges.

The counter store is opened through `backend.py`, the one place that picks its implementation;
everything else uses the interface of :mod:`sendguard_policyd.store`.

:func:`start` returns once every socket is bound (a bind failure stops start-up
with the config key at fault) and serves in a background thread, so that
``sendguard run`` can run the milter's main loop in the main thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sendguard import logs
from sendguard.addresses import parse_hostport
from sendguard.config import Config
from sendguard.config_reader import ConfigError
from sendguard.socket_access import AccessError
from sendguard_policyd import metrics
from sendguard_policyd.backend import open_store, store_key, store_label, store_windows
from sendguard_policyd.decide import Decider
from sendguard_policyd.operators import Operators
from sendguard_policyd.ramp_refresh import RampRefresher
from sendguard_policyd.server import PolicyServer
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.status import StreamStatus, snapshot
from sendguard_policyd.store import CounterStore, StoreError

log = logs.get("policyd")


@dataclass
class Handle:
    """A running policy daemon."""

    #: The TCP address actually bound.
    host: str
    port: int
    unix_socket: str
    store: CounterStore
    decider: Decider
    #: Reads the streams' ramp history into the decider's warmups (and records step-backs).
    ramps: RampRefresher
    _thread: threading.Thread = field(repr=False)
    _server: PolicyServer = field(repr=False)
    _gauges: Callable[[], list[StreamStatus]] = field(repr=False)
    _stopped: bool = False

    def stop(self) -> None:
        """Close the sockets and connections, stop the loop, close the store (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        metrics.unbind(self._gauges)
        self._server.stop()
        self._thread.join(timeout=10)
        self.ramps.close()
        self.decider.close()
        self.store.close()
        log.info("policyd stopped")


def start(config: Config, settings: PolicydSettings) -> Handle:
    """Start the policy daemon for ``config``'s streams; return a :class:`Handle` (non-blocking)."""
    try:
        store = open_store(settings)
    except (StoreError, OSError) as exc:
        raise ConfigError(config.file, store_key(settings), str(exc)) from None
    decider = Decider(settings, config.streams, store, operators=Operators(settings.operators))
    ramps = RampRefresher(decider.warmups, store)
    ramps.refresh()  # the first warmup days from the store's history, before the first request
    decider.pauses.start()  # the pauses in force, read now and every second off the loop (pause_board.py)
    server = PolicyServer(decider, settings.idle_timeout, settings.bad_request_action, settings.busy_poll_usec / 1e6)
    try:
        host, port = _bind(config.file, settings, server)
    except BaseException:
        server.close()
        decider.close()
        store.close()
        raise
    thread = threading.Thread(target=server.serve_forever, name="sendguard-policyd", daemon=True)
    thread.start()
    ramps.start()
    warmups = decider.warmups
    windows = store_windows(settings)

    def gauges() -> list[StreamStatus]:
        return snapshot(config.streams, store, warmups, time.time(), windows)

    metrics.bind(gauges)
    log.info(
        "policyd listening on %s:%d%s, counters in %s, streams: %s",
        host, port, f" and {settings.socket}" if settings.socket else "", store_label(settings),
        ", ".join(s.name for s in config.streams) or "(none)",
    )  # fmt: skip
    return Handle(host, port, settings.socket, store, decider, ramps, thread, server, gauges)


def _bind(file: str, settings: PolicydSettings, server: PolicyServer) -> tuple[str, int]:
    """Open the listening sockets; a failure is a :class:`ConfigError` naming the key."""
    host, port = parse_hostport(settings.listen)
    try:
        bound = server.listen_tcp(host, port, settings.reuse_port)
    except OSError as exc:
        raise ConfigError(file, "policyd.listen", f"cannot listen on {settings.listen}: {exc.strerror or exc}")
    if settings.socket:
        try:
            server.listen_unix(settings.socket, settings.socket_mode, settings.socket_group)
        except AccessError as exc:
            key = "policyd.socket_group" if settings.socket_group is not None else "policyd.socket_mode"
            raise ConfigError(file, key, f"cannot set the access of {settings.socket}: {exc.strerror or exc}")
        except OSError as exc:
            raise ConfigError(file, "policyd.socket", f"cannot listen on {settings.socket}: {exc.strerror or exc}")
    return bound
