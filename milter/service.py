"""Running the milter for real: keys, libmilter's listener, reloads and shutdown.

libmilter's own signal thread treats SIGHUP like SIGTERM (it stops the
milter). To give SIGHUP its conventional meaning — reload the configuration,
keep every connection — libmilter's loop runs in a worker thread; it blocks
SIGHUP, SIGTERM and SIGINT only in its own threads, so the kernel delivers a
``kill`` to the main thread, where Python handlers reload (SIGHUP) or stop
libmilter cleanly (SIGTERM, SIGINT). Key files are also watched for changes
every ``key_check_interval`` seconds.

A SIGHUP reads and validates the whole file again, as start-up does, and opens
its key files; only when all of that succeeds does the milter switch to the new
settings, streams and keys, in one step (each message takes the runtime in
service at MAIL FROM and keeps it to its end). On any error the running
configuration stays. Either way one line is logged.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Callable

import Milter
import milter as libmilter  # pymilter's C extension

from sendguard import logs
from sendguard.config import Config
from sendguard.config_reader import ConfigError
from sendguard.socket_access import AccessError, apply_access

from . import metrics
from .app import Runtime, SendguardMilter
from .command_size import COMMAND_LIMIT, raise_command_limit
from .dns_records import make_resolver
from .keys import open_keys
from .published_keys import PublishedKeyCheck
from .settings import MilterSettings
from .tcp_nodelay import set_nodelay_on_listener
from .unix_socket import wait_for_unix_listener

log = logs.get("milter")

#: The name the milter registers under (Postfix does not use it; sendmail would).
MILTER_NAME = "sendguard"

#: Reads and validates the config file again: what SIGHUP switches to (raises ConfigError).
Loader = Callable[[], tuple[Config, MilterSettings]]

#: Settings libmilter (or the metrics endpoint) takes once, at start: a change waits for a restart.
RESTART_ONLY = ("listen", "socket_mode", "socket_group", "metrics_listen", "timeout")


def build_runtime(config: Config, settings: MilterSettings) -> Runtime:
    """Open the keys (a failure is a config error) and bundle them with the settings and streams."""
    keys = open_keys(settings.keys, config.file, observer=metrics.count_reload)
    published = None
    if settings.verify_published_keys:
        try:
            resolver = make_resolver(settings.published_key_nameserver)
        except ValueError as exc:
            keys.stop()
            raise ConfigError(config.file, "signing.published_key_nameserver", str(exc)) from None
        published = PublishedKeyCheck(keys, resolver, observer=metrics.count_published_check)
    return Runtime(settings, config.streams, keys, published)


class RuntimeSwitch:
    """The runtime in service, switched whole by a reload (one reference assignment: atomic)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def current(self) -> Runtime:
        """The runtime a new message starts with."""
        return self._runtime

    def switch(self, runtime: Runtime) -> Runtime:
        """Put ``runtime`` in service; return the one it replaces."""
        old, self._runtime = self._runtime, runtime
        return old


def _describe_error(exc: ConfigError) -> str:
    errors = exc.all()
    more = f" (and {len(errors) - 1} more: run sendguard check-config {exc.file})" if len(errors) > 1 else ""
    return f"{errors[0]}{more}"


def reload(switch: RuntimeSwitch, loader: Loader) -> bool:
    """Reload the whole configuration into ``switch``; keep the running one on any error. Logs one line."""
    running = switch.current()
    try:
        config, settings = loader()
        new = build_runtime(config, settings)
    except ConfigError as exc:
        metrics.CONFIG_RELOADS.labels(result="failed").inc()
        log.error("SIGHUP: %s; keeping the running configuration", _describe_error(exc))
        return False
    old = switch.switch(new)
    old.stop_watching()
    new.start_watching()
    logs.set_level(config.general.log_level)
    metrics.CONFIG_RELOADS.labels(result="ok").inc()
    pending = [
        f"{name} {getattr(running.settings, name)} -> {getattr(settings, name)}"
        for name in RESTART_ONLY
        if getattr(running.settings, name) != getattr(settings, name)
    ]
    later = f"; restart needed for: {', '.join(pending)} (still the old value)" if pending else ""
    log.info("SIGHUP: configuration reloaded from %s%s", config.file, later)
    return True


def _set_socket_access(file: str, settings: MilterSettings, worker: threading.Thread) -> None:
    """Give libmilter's unix socket ``socket_mode`` / ``socket_group``; stop the milter with a config error when that fails."""
    path = settings.listen.split(":", 1)[1]
    if not wait_for_unix_listener(path, worker.is_alive):
        if worker.is_alive():  # still not listening after 10 s: never serve with the wrong access
            libmilter.stop()
            worker.join()
            raise ConfigError(file, "milter.listen", f"libmilter did not listen on {path} within 10 s")
        return  # it never listened: run() reports libmilter's reason
    try:
        apply_access(path, settings.socket_mode, settings.socket_group)
    except AccessError as exc:
        libmilter.stop()
        worker.join()
        key = "milter.socket_group" if settings.socket_group is not None else "milter.socket_mode"
        raise ConfigError(file, key, f"cannot set the access of {path}: {exc.strerror or exc}") from None
    mode = "" if settings.socket_mode is None else f" mode {settings.socket_mode:04o}"
    group = "" if settings.socket_group is None else f" group {settings.socket_group}"
    log.info("milter socket %s:%s%s", path, mode, group)


def run(config: Config, settings: MilterSettings, loader: Loader | None = None) -> None:
    """Serve Postfix until SIGTERM or SIGINT (blocking). SIGHUP reloads the configuration through ``loader``.

    Without a ``loader`` SIGHUP reloads the key files only.
    """
    switch = RuntimeSwitch(build_runtime(config, settings))
    Milter.factory = lambda: SendguardMilter(switch.current)
    # Only what the milter does: add the signature header, replace a repaired body, change
    # Content-Type (a text part added to a text/html message) and Message-ID (repaired).
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGBODY | Milter.CHGHDRS)
    # Postfix sends a header field whole; libmilter would drop the connection on one over 64 KiB.
    raise_command_limit(COMMAND_LIMIT)

    failure: list[BaseException] = []

    def serve() -> None:
        try:
            Milter.runmilter(MILTER_NAME, settings.listen, timeout=settings.timeout)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        if loader is None:
            log.info("SIGHUP: reloading keys")
            switch.current().keys.reload()
            return
        try:
            reload(switch, loader)
        except Exception:  # a reload must never stop the milter
            log.exception("SIGHUP: unexpected error; keeping the running configuration")

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        libmilter.stop()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    switch.current().start_watching()
    scope = settings.scope
    names = ", ".join(
        f"{s.name} (d={s.domain} s={s.selector}" + (f"+{s.ed25519_selector}" if s.ed25519_selector else "") + ")"
        for s in settings.keys
    ) or "none"
    log.info(
        "milter starting on %s; trusted_hosts %s; trusted_public_hosts %s; keys %s",
        settings.listen, ", ".join(str(n) for n in scope.networks),
        ", ".join(str(n) for n in scope.public_networks) or "none", names,
    )  # fmt: skip
    if not settings.keys:
        log.warning(
            "no signing keys configured ([signing.keys]): every bulk message will be refused"
            " and other mail passes unsigned"
        )

    worker = threading.Thread(target=serve, name="libmilter")
    worker.start()
    if settings.listen.startswith(("inet:", "inet6:")):
        set_nodelay_on_listener(int(settings.listen.split(":", 1)[1].split("@", 1)[0]), worker.is_alive)
    try:
        if settings.listen.startswith("unix:") and (settings.socket_mode is not None or settings.socket_group is not None):
            _set_socket_access(config.file, settings, worker)
        while worker.is_alive():
            worker.join(0.5)  # wakes for signal handlers
    finally:
        switch.current().stop_watching()
    if failure:
        log.error("milter stopped: %s", failure[0])
        raise SystemExit(f"sendguard milter: cannot serve on {settings.listen}: {failure[0]}")
    log.info("milter stopped")
