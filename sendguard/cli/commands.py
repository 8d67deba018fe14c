"""The ``sendguard`` sub-commands: start either service or both, check a config, show status.

Each sub-command is a thin shell over the service's own module; what a
service does lives there, not here.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Sequence

from sendguard import __version__, logs
from sendguard.cli.settings import Settings, load
from sendguard.config_reader import ConfigError
from sendguard.gc_freeze import freeze_start_up_heap
from sendguard.metrics_http import ListenError

EXIT_USAGE = 64  # EX_USAGE from sysexits.h
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h, as Postfix's own tools use it
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a listener could not be opened


def _load(path: str | None) -> Settings:
    settings = load(path)
    logs.setup(settings.config.general.log_level)
    return settings


def _stop_on_signal() -> threading.Event:
    """An event that SIGTERM and SIGINT set, installed before a service starts.

    A signal that arrives while the service is still starting then stops it
    cleanly once it has started, instead of killing the process halfway.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait_for_signal(stop: threading.Event) -> None:
    """Block the main thread until ``stop`` is set."""
    while not stop.wait(3600):
        pass


def cmd_policyd(args: argparse.Namespace) -> int:
    """Run the policy daemon alone (its own metrics endpoint)."""
    settings = _load(args.config)
    from sendguard import metrics_http
    from sendguard_policyd import service

    stop = _stop_on_signal()
    metrics_http.serve(settings.policyd.metrics_listen)
    handle = service.start(settings.config, settings.policyd)
    freeze_start_up_heap()
    try:
        _wait_for_signal(stop)
    finally:
        handle.stop()
    return 0


def cmd_milter(args: argparse.Namespace) -> int:
    """Run the milter alone (its own metrics endpoint)."""
    settings = _load(args.config)
    from sendguard import metrics_http
    from sendguard_milter import service

    metrics_http.serve(settings.milter.metrics_listen)
    freeze_start_up_heap()  # what the milter builds next (keys) is small beside its imports
    service.run(settings.config, settings.milter)  # blocks in libmilter's main loop until SIGTERM/SIGINT
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run both services in one process, one metrics endpoint (policyd.metrics_listen)."""
    settings = _load(args.config)
    from sendguard import metrics_http
    from sendguard_milter import service as milter_service
    from sendguard_policyd import service as policyd_service

    from sendguard_policyd import release_service

    metrics_http.serve(settings.policyd.metrics_listen)
    handle = policyd_service.start(settings.config, settings.policyd)
    releaser = None
    try:
        if release_service.wanted_in_run(settings.policyd):
            releaser = _start_releaser(settings)
        freeze_start_up_heap()
        milter_service.run(settings.config, settings.milter)
    finally:
        if releaser is not None:
            releaser.stop()
        handle.stop()
    return 0


def _start_releaser(settings: Settings):  # type: ignore[no-untyped-def]
    from sendguard_policyd import release_service
    from sendguard_policyd.store import StoreError

    try:
        return release_service.start(settings.config, settings.policyd)
    except StoreError as exc:
        raise ConfigError(settings.file, "policyd.database", str(exc)) from None


def cmd_release(args: argparse.Namespace) -> int:
    """Release over-cap held mail as the streams' windows free: one pass (--once) or a loop."""
    settings = _load(args.config)
    if args.once:
        from sendguard_policyd import release_service
        from sendguard_policyd.store import StoreError

        try:
            result = release_service.run_once(settings.config, settings.policyd)
        except StoreError as exc:
            raise ConfigError(settings.file, "policyd.database", str(exc)) from None
        for stream in sorted(set(result.released) | set(result.waiting) | set(result.gone)):
            print(f"stream {stream}: released {result.released.get(stream, 0)}, still held "
                  f"{result.waiting.get(stream, 0)}, gone {result.gone.get(stream, 0)}")  # fmt: skip
        return 1 if result.errors else 0
    from sendguard import metrics_http

    stop = _stop_on_signal()
    metrics_http.serve(settings.policyd.release.metrics_listen)
    releaser = _start_releaser(settings)
    try:
        _wait_for_signal(stop)
    finally:
        releaser.stop()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file as start-up would, and print the effective configuration."""
    from sendguard import effective
    from sendguard_milter.keys import open_keys

    settings = load(args.file)
    open_keys(settings.milter.keys, settings.file)  # as start-up does: every key file must serve
    sections = (("policyd", settings.policyd), ("release", settings.policyd.release), ("milter", settings.milter))
    stream_keys = [settings.policyd.stream_policies, settings.milter.stream_rules]
    sys.stdout.write(effective.render(settings.config, sections, stream_keys))
    print(f"# {args.file}: OK", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show, per stream, the warmup day, cap in force, window counts and family holds."""
    from sendguard.cli.settings import parse
    from sendguard_policyd import status

    try:
        settings = load(args.config)
    except ConfigError as exc:
        # A start stamp the running daemon tolerates (it warns, keeps its start) is reported, not fatal.
        if args.config is None:
            raise
        settings = status.load_tolerating_stamps(args.config, parse, exc)
    text, code = status.report(settings.config, settings.policyd)
    sys.stdout.write(text)
    return code


def cmd_explain(args: argparse.Namespace) -> int:
    """Print the decision the milter would take for a sender and client, and why."""
    from sendguard_milter import explain
    from sendguard_milter.keys import open_keys

    settings = load(args.config)
    keys = open_keys(settings.milter.keys, settings.file)
    try:
        text = explain.explain(
            settings.milter,
            settings.config.streams,
            keys,
            from_addr=args.from_addr,
            client=args.client,
            sasl=args.sasl,
            headers=args.header,
            port=args.port,
            sender=args.sender,
        )
    except ValueError as exc:
        print(f"sendguard explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sendguard`` command."""
    parser = argparse.ArgumentParser(prog="sendguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sendguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", metavar="FILE", help="config file (default: embedded defaults)")
        return p

    with_config(sub.add_parser("policyd", help="run the policy daemon")).set_defaults(func=cmd_policyd)
    with_config(sub.add_parser("milter", help="run the milter")).set_defaults(func=cmd_milter)
    with_config(sub.add_parser("run", help="run both services in one process (and the releaser on a Postfix host)")
                ).set_defaults(func=cmd_run)  # fmt: skip
    release = with_config(sub.add_parser("release", help="release over-cap held mail as the windows free"))
    release.add_argument("--once", action="store_true", help="one pass, then exit (status 1 if it hit an error)")
    release.set_defaults(func=cmd_release)
    check = sub.add_parser("check-config", help="validate a config and print the effective configuration")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check_config)
    with_config(sub.add_parser("status", help="per-stream warmup, caps, counts and family holds")).set_defaults(
        func=cmd_status
    )
    explain = with_config(sub.add_parser("explain", help="what the milter would do with a message, and why"))
    explain.add_argument("--from", dest="from_addr", required=True, metavar="ADDR", help="RFC 5322 From address")
    explain.add_argument("--client", required=True, metavar="IP", help="SMTP client address")
    explain.add_argument("--sasl", metavar="USER", help="SASL login name, if the client authenticated")
    explain.add_argument("--port", type=int, metavar="PORT", help="Postfix port the client connected to (for port-based streams)")
    explain.add_argument("--sender", metavar="ADDR", help="envelope sender (default: the From address)")
    explain.add_argument(
        "--header", action="append", default=[], metavar="'Name: value'", help="a header the message carries"
    )
    explain.set_defaults(func=cmd_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sendguard`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"sendguard: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ListenError as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
