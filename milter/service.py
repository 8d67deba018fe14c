"""Running the milter for real: keys, libmilter's listener, reloads and shutdown.

libmilter's own signal thread treats SIGHUP like SIGTERM (it stops the
milter). To give SIGHUP its conventional meaning — reload the keys, keep every
connection — libmilter's loop runs in a worker thread; it blocks SIGHUP,
SIGTERM and SIGINT only in its own threads, so the kernel delivers a ``kill``
to the main thread, where Python handlers reload the keys (SIGHUP) or stop
libmilter cleanly (SIGTERM, SIGINT). Key files are also watched for changes
every ``key_check_interval`` seconds.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import Milter
import milter as libmilter  # pymilter's C extension

from sendguard import logs
from sendguard.config import Config

from . import metrics
from .app import Runtime, SendguardMilter
from .command_size import COMMAND_LIMIT, raise_command_limit
from .keys import open_keys
from .settings import MilterSettings

log = logs.get("milter")

#: The name the milter registers under (Postfix does not use it; sendmail would).
MILTER_NAME = "sendguard"


def build_runtime(config: Config, settings: MilterSettings) -> Runtime:
    """Open the keys (a failure is a config error) and bundle them with the settings and streams."""
    keys = open_keys(settings.keys, config.file, observer=metrics.count_reload)
    return Runtime(settings, config.streams, keys)


def run(config: Config, settings: MilterSettings) -> None:
    """Serve Postfix until SIGTERM or SIGINT (blocking). SIGHUP reloads the keys."""
    runtime = build_runtime(config, settings)
    Milter.factory = lambda: SendguardMilter(runtime)
    # Only what the milter does: add the signature header, replace a repaired body.
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGBODY)
    # Postfix sends a header field whole; libmilter would drop the connection on one over 64 KiB.
    raise_command_limit(COMMAND_LIMIT)

    failure: list[BaseException] = []

    def serve() -> None:
        try:
            Milter.runmilter(MILTER_NAME, settings.listen, timeout=settings.timeout)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    def reload(signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP: reloading keys")
        runtime.keys.reload()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        libmilter.stop()

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runtime.keys.watch(settings.key_check_interval)
    names = ", ".join(f"{s.name} (d={s.domain} s={s.selector})" for s in settings.keys) or "none"
    log.info(
        "milter starting on %s; trusted_hosts %s; keys %s",
        settings.listen, ", ".join(str(n) for n in settings.scope.networks), names,
    )  # fmt: skip

    worker = threading.Thread(target=serve, name="libmilter")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)  # wakes for signal handlers
    finally:
        runtime.keys.stop()
    if failure:
        log.error("milter stopped: %s", failure[0])
        raise SystemExit(f"sendguard milter: cannot serve on {settings.listen}: {failure[0]}")
    log.info("milter stopped")
