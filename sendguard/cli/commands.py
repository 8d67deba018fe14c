"""The ``sendguard`` sub-commands: start either service or both, check a config, show status.

Each sub-command is a thin shell over the service's own module; what a
service does lives there, not here.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import threading
from typing import TYPE_CHECKING, Callable, Sequence

from sendguard import __version__, logs
from sendguard.cli.settings import Settings, load
from sendguard.config_reader import ConfigError
from sendguard.gc_freeze import freeze_start_up_heap
from sendguard.metrics_http import ListenError

if TYPE_CHECKING:
    from sendguard.config import Config
    from sendguard_milter.settings import MilterSettings
    from sendguard.background import Background
    from sendguard_policyd.listmonk.service import ListmonkHandle
    from sendguard_policyd.stop_signal_rules import Rule

EXIT_USAGE = 64  # EX_USAGE from sysexits.h
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h, as Postfix's own tools use it
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a listener could not be opened
EXIT_CANTCREAT = 73  # EX_CANTCREAT: an output file exists or cannot be written
EXIT_NOINPUT = 66  # EX_NOINPUT: an input file cannot be read


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


#: What SIGHUP logs where the policy daemon runs: its settings are read once, at start.
POLICYD_NO_RELOAD = (
    "SIGHUP: the policy daemon does not reload its configuration ([policyd], [release], the streams' caps"
    " and ramps); restart it to apply changes"
)


def _policyd_ignores_hup() -> None:
    """SIGHUP's default action would kill the daemon: log instead that a restart is needed."""
    log = logs.get("policyd")
    signal.signal(signal.SIGHUP, lambda *_: log.warning(POLICYD_NO_RELOAD))


def _milter_loader(path: str | None, policyd_too: bool = False) -> Callable[[], tuple[Config, MilterSettings]]:
    """What the milter's SIGHUP reloads: the whole file, validated as start-up does."""

    def reload() -> tuple[Config, MilterSettings]:
        if policyd_too:
            logs.get("policyd").warning(POLICYD_NO_RELOAD)
        settings = load(path, check_keys=True)  # every bad key file named, not only the first
        return settings.config, settings.milter

    return reload


#: Seconds between the main thread's looks at ``stop``: the longest a SIGTERM can wait for its handler.
SIGNAL_POLL = 0.2


def _wait_for_signal(stop: threading.Event) -> None:
    """Block the main thread until ``stop`` is set.

    In short steps: the kernel may deliver SIGTERM to one of the service's
    threads, and then Python runs the handler only when the main thread next
    wakes; a long wait would leave the daemon running up to that long
    (seen as 3 ignored stops in 26 under load, with a one-hour wait).
    """
    while not stop.wait(SIGNAL_POLL):
        pass


def cmd_policyd(args: argparse.Namespace) -> int:
    """Run the policy daemon alone (its own metrics endpoint)."""
    settings = _load(args.config)
    from sendguard import metrics_http
    from sendguard_policyd import service

    stop = _stop_on_signal()
    _policyd_ignores_hup()
    metrics_http.serve(settings.policyd.metrics_listen, "the policy daemon")
    handle = service.start(settings.config, settings.policyd)
    listmonk = _start_listmonk(settings)
    freeze_start_up_heap()
    try:
        _wait_for_signal(stop)
    finally:
        if listmonk is not None:
            listmonk.stop()
        handle.stop()
    return 0


def cmd_milter(args: argparse.Namespace) -> int:
    """Run the milter alone (its own metrics endpoint)."""
    settings = _load(args.config)
    from sendguard import metrics_http
    from sendguard_milter import service

    metrics_http.serve(settings.milter.metrics_listen, "the milter")
    freeze_start_up_heap()  # what the milter builds next (keys) is small beside its imports
    # Blocks in libmilter's main loop until SIGTERM/SIGINT; SIGHUP reloads the whole file.
    service.run(settings.config, settings.milter, _milter_loader(args.config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run both services in one process, one metrics endpoint (policyd.metrics_listen)."""
    settings = _load(args.config)
    from sendguard import metrics_http
    from sendguard_milter import service as milter_service
    from sendguard_policyd import service as policyd_service

    from sendguard_policyd import release_service

    metrics_http.serve(settings.policyd.metrics_listen, "the policy daemon and the milter")
    handle = policyd_service.start(settings.config, settings.policyd)
    releaser = None
    watcher = None
    listmonk = None
    dmarc = None
    try:
        if release_service.wanted_in_run(settings.policyd):
            releaser = _start_releaser(settings)
        watch = settings.policyd.watch
        if watch.enabled and watch.configured:
            from sendguard_policyd.watch import service as watch_service

            watcher = watch_service.start(settings.config, settings.policyd, settings.stop_signals.rules)
        listmonk = _start_listmonk(settings)
        if settings.dmarc.enabled and settings.dmarc.configured:
            dmarc = _start_dmarc(settings)
        freeze_start_up_heap()
        # The milter's SIGHUP reloads the milter's part only, and says so for the policy daemon's.
        milter_service.run(settings.config, settings.milter, _milter_loader(args.config, policyd_too=True))
    finally:
        if dmarc is not None:
            dmarc.stop()
        if watcher is not None:
            watcher.stop()
        if listmonk is not None:
            listmonk.stop()
        if releaser is not None:
            releaser.stop()
        handle.stop()
    return 0


def _start_listmonk(settings: Settings) -> ListmonkHandle | None:
    """The Listmonk syncs, each on a thread of its own (None when no ``[listmonk.NAME]`` is enabled)."""
    if not any(one.enabled for one in settings.listmonk):
        return None
    from sendguard_policyd.listmonk import service as listmonk_service

    return listmonk_service.start(settings.config, settings.listmonk, settings.policyd)


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
            paused = f" ({result.paused[stream]} for a pause)" if result.paused.get(stream) else ""
            print(f"stream {stream}: released {result.released.get(stream, 0)}, still held "
                  f"{result.waiting.get(stream, 0)}{paused}, gone {result.gone.get(stream, 0)}")  # fmt: skip
        return 1 if result.errors else 0
    from sendguard import metrics_http

    stop = _stop_on_signal()
    _policyd_ignores_hup()  # the releaser is the policy daemon's: a restart applies changes
    metrics_http.serve(settings.policyd.release.metrics_listen, "the releaser")
    releaser = _start_releaser(settings)
    try:
        _wait_for_signal(stop)
    finally:
        releaser.stop()
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a stream's new mail (or its mail to one receiving operator) by hand: held until resumed or over."""
    from sendguard_policyd import pause_command

    settings = _load(args.config)
    outcome = pause_command.pause(
        settings.policyd, [s.name for s in settings.streams], settings.source.data, args.stream,
        args.operator or "", args.for_, args.reason,
    )  # fmt: skip
    print(outcome.text, file=sys.stderr if outcome.code else sys.stdout)
    return outcome.code


def cmd_resume(args: argparse.Namespace) -> int:
    """End a stream's pause (or the pause of its mail to one operator): the releaser lets the held mail go."""
    from sendguard_policyd import pause_command

    settings = _load(args.config)
    outcome = pause_command.resume(
        settings.policyd, [s.name for s in settings.streams], settings.source.data, args.stream, args.operator or ""
    )
    print(outcome.text, file=sys.stderr if outcome.code else sys.stdout)
    return outcome.code


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow Postfix's log: delivery metrics per stream and operator (and what the consumers do with them)."""
    settings = _load(args.config)
    from sendguard import metrics_http
    from sendguard_policyd.watch import service as watch_service

    stop = _stop_on_signal()
    # SIGHUP's default would kill the watcher; it reads its settings once, at start.
    signal.signal(signal.SIGHUP, lambda *_: logs.get("watch").warning(
        "SIGHUP: the watcher does not reload its configuration ([watch], [operators]); restart it to apply changes"))
    watch = settings.policyd.watch
    if not watch.configured:  # before the metrics endpoint, so the config error is the only output
        raise ConfigError(settings.file, "watch.log", "sendguard watch needs a log file (watch.log) or watch.journal = true")
    metrics_http.serve(watch.metrics_listen, "the watcher")
    handle = watch_service.start(settings.config, settings.policyd, settings.stop_signals.rules)
    try:
        _wait_for_signal(stop)
    finally:
        handle.stop()
    return 0


def cmd_dmarc(args: argparse.Namespace) -> int:
    """Ingest DMARC aggregate reports: one pass (the default), or ``--follow``: a pass every interval, metrics served."""
    settings = _load(args.config)
    dmarc = settings.dmarc
    if not dmarc.configured:
        raise ConfigError(settings.file, "dmarc.sources", "sendguard dmarc needs at least one source (a file, folder, maildir or mbox), or [dmarc.imap]")
    from sendguard_policyd.dmarc import service as dmarc_service
    from sendguard_policyd.dmarc.store import ReportStore

    if not args.follow:
        try:
            store = ReportStore(dmarc.database)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(settings.file, "dmarc.database", f"cannot open {dmarc.database}: {exc}") from None
        try:
            result = dmarc_service.ingest_pass(dmarc, store)
        finally:
            store.close()
        print(f"dmarc: {result.text()}")
        return 0
    from sendguard import metrics_http
    from sendguard.addresses import parse_hostport

    if args.listen:
        try:
            parse_hostport(args.listen)
        except ValueError as exc:
            print(f"sendguard dmarc: --listen {exc}", file=sys.stderr)
            return EXIT_USAGE
    stop = _stop_on_signal()
    signal.signal(signal.SIGHUP, lambda *_: logs.get("dmarc").warning(
        "SIGHUP: the DMARC ingester does not reload its configuration ([dmarc]); restart it to apply changes"))
    handle = _start_dmarc(settings)
    try:
        metrics_http.serve(args.listen or dmarc.metrics_listen, "the DMARC ingester")
    except ListenError:
        handle.stop()
        raise
    try:
        _wait_for_signal(stop)
    finally:
        handle.stop()
    return 0


def _start_dmarc(settings: Settings) -> Background:
    """The DMARC ingester on its thread, its totals exported on the default registry."""
    from sendguard_policyd.dmarc import service as dmarc_service

    try:
        handle = dmarc_service.start(settings.dmarc)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(settings.file, "dmarc.database", f"cannot open {settings.dmarc.database}: {exc}") from None
    dmarc_service.register_metrics(settings.dmarc)
    return handle


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file as start-up would, report every problem, and print the effective configuration."""
    from sendguard import effective

    settings = load(args.file, check_keys=True)  # as start-up does, every key file must serve
    notes = {("streams", s.name, "match"): f"match: {s.rule.describe()}" for s in settings.streams}
    sys.stdout.write(effective.render(settings.source, notes))
    sys.stdout.write(_stop_signal_summary(settings.stop_signals.rules))
    print(f"# {args.file}: OK", file=sys.stderr)
    return 0


def _stop_signal_summary(rules: Sequence[Rule]) -> str:
    """The stop-signal rules in force, built-in ones included, as comments: the file shows only what it changes."""
    from sendguard.timetext import format_duration

    lines = ["", "# stop-signal rules in force (built-in and [stop_signals.*]; docs/policyd.md):"]
    for r in rules:
        if not r.enabled:
            lines.append(f"#   {r.name}: off")
            continue
        duration = "until resumed" if r.duration is None else f"for {format_duration(r.duration)}"
        lines.append(
            f"#   {r.name}: /{r.pattern}/ from {r.operator or 'any operator'}, {r.threshold}/h -> {r.action}"
            f" {duration}, step back {r.step_back_days} day(s)"
        )
    return "\n".join(lines) + "\n"


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
    """Print the decision the milter would take for a sender and client, and why (with --message, for a whole message)."""
    from sendguard_milter import explain
    from sendguard_milter.keys import open_keys

    if (args.message is None) == (args.from_addr is None):
        print("sendguard explain: give --from ADDR (with --header) or --message FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.message is not None and args.header:
        print("sendguard explain: --header is for --from; with --message the message's own header fields count", file=sys.stderr)
        return EXIT_USAGE
    if args.output is not None and args.message is None:
        print("sendguard explain: --output needs --message", file=sys.stderr)
        return EXIT_USAGE
    settings = load(args.config)
    keys = open_keys(settings.milter.keys, settings.file)
    milter, streams = settings.milter, settings.config.streams
    try:
        if args.message is None:
            text = explain.explain(
                milter, streams, keys, from_addr=args.from_addr, client=args.client, sasl=args.sasl,
                headers=args.header, port=args.port, sender=args.sender,
            )  # fmt: skip
        else:
            data = sys.stdin.buffer.read() if args.message == "-" else _read_file(args.message)
            if data is None:
                return EXIT_NOINPUT
            done = explain.explain_message(
                milter, streams, keys, data, client=args.client, sasl=args.sasl, port=args.port, sender=args.sender
            )
            text = done.text
            if args.output is not None:
                if not done.message:
                    print("sendguard explain: refused: nothing written to --output", file=sys.stderr)
                else:
                    try:
                        with open(args.output, "wb") as out:
                            out.write(done.message)
                    except OSError as exc:
                        print(f"sendguard explain: {args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
                        return EXIT_CANTCREAT
                    text += f"written:   {args.output}, as Postfix would send it on (CRLF line ends)\n"
    except ValueError as exc:
        print(f"sendguard explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    return 0


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        print(f"sendguard explain: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return None


def cmd_keygen(args: argparse.Namespace) -> int:
    """Generate a DKIM key pair: the key file, its DNS record, and the config block to paste."""
    from pathlib import Path

    from sendguard_milter import keygen
    from sendguard_milter.settings import check_domain, check_selector
    from sendguard_milter.signing_table import normalise_domain

    domain = normalise_domain(args.domain)
    problem = check_domain(domain) or check_selector(args.selector)
    if problem:
        print(f"sendguard keygen: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = keygen.generate(domain, args.selector, Path(args.dir).absolute(), args.type, args.bits, args.force)
    except keygen.KeygenError as exc:
        print(f"sendguard keygen: {exc}", file=sys.stderr)
        return EXIT_CANTCREAT
    print(f"# wrote {key.key_file} ({key.key_type}, {key.bits} bits, mode 0600) and {key.txt_file}")
    print(f"# publish at {key.record_name} (zone-file form in {key.txt_file}):")
    print(key.zone_text)
    print("# the TXT value as one string, for a DNS provider's web form:")
    print(key.txt_value)
    print()
    print("# then add to the config (check with sendguard dns-check once the record is published):")
    print(keygen.config_block(key, args.name), end="")
    return 0


def cmd_dns_check(args: argparse.Namespace) -> int:
    """Check the DNS for every signing key and stream: DKIM records, SPF, DMARC, reverse DNS."""
    from sendguard_milter import dns_check
    from sendguard_milter.dns_records import make_resolver

    settings = _load(args.config)
    try:
        resolver = make_resolver(args.nameserver)
    except ValueError as exc:
        print(f"sendguard dns-check: nameserver {exc}", file=sys.stderr)
        return EXIT_USAGE
    findings = dns_check.run_checks(settings.milter, settings.streams, resolver)
    sys.stdout.write(dns_check.render_json(findings) if args.json else dns_check.render_text(findings))
    return 0 if dns_check.passed(findings) else 1


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
    with_config(sub.add_parser("watch", help="follow Postfix's log: deliveries per stream and receiving operator")
                ).set_defaults(func=cmd_watch)  # fmt: skip
    dmarc = with_config(sub.add_parser("dmarc", help="ingest DMARC aggregate reports ([dmarc] sources) for the metrics"))
    dmarc.add_argument("--follow", action="store_true", help="a pass every [dmarc] interval, metrics served, until stopped")
    dmarc.add_argument("--listen", metavar="HOST:PORT", help="with --follow: serve metrics here (default: [dmarc] metrics_listen)")
    dmarc.set_defaults(func=cmd_dmarc)
    check = sub.add_parser("check-config", help="validate a config and print the effective configuration")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check_config)
    with_config(sub.add_parser("status", help="per-stream warmup, caps, counts, holds and pauses")).set_defaults(
        func=cmd_status
    )
    pause = with_config(sub.add_parser("pause", help="hold a stream's new mail (or its mail to one operator) until resumed"))
    pause.add_argument("stream", metavar="STREAM", help="a stream of the config")
    pause.add_argument("--operator", metavar="OP", help="pause only the mail to this receiving operator (google, microsoft, ...)")
    pause.add_argument("--for", dest="for_", metavar="DURATION", help="end by itself after this long (30m, 6h, 3d); default: until resumed")
    pause.add_argument("--reason", required=True, metavar="TEXT", help="why: quoted in the HOLD answers and by status")
    pause.set_defaults(func=cmd_pause)
    resume = with_config(sub.add_parser("resume", help="end a pause: its held mail is released through the caps"))
    resume.add_argument("stream", metavar="STREAM", help="a stream of the config")
    resume.add_argument("--operator", metavar="OP", help="end the pause of this operator's mail (default: the whole-stream pause)")
    resume.set_defaults(func=cmd_resume)
    explain = with_config(sub.add_parser("explain", help="what the milter would do with a message, and why"))
    explain.add_argument("--from", dest="from_addr", metavar="ADDR", help="RFC 5322 From address (or --message)")
    explain.add_argument("--message", metavar="FILE", help="a whole message (- for standard input): run the milter's repairs and signing on it")
    explain.add_argument("--output", metavar="FILE", help="with --message: write the message as Postfix would send it on")
    explain.add_argument("--client", required=True, metavar="IP", help="SMTP client address")
    explain.add_argument("--sasl", metavar="USER", help="SASL login name, if the client authenticated")
    explain.add_argument("--port", type=int, metavar="PORT", help="Postfix port the client connected to (for port-based streams)")
    explain.add_argument("--sender", metavar="ADDR", help="envelope sender (default: the From address)")
    explain.add_argument(
        "--header", action="append", default=[], metavar="'Name: value'", help="a header the message carries"
    )
    explain.set_defaults(func=cmd_explain)
    keygen = sub.add_parser("keygen", help="generate a DKIM key, its DNS record and the [signing.keys] block")
    keygen.add_argument("domain", metavar="DOMAIN", help="the signing domain (d=)")
    keygen.add_argument("selector", metavar="SELECTOR", help="the selector (s=): the record goes at SELECTOR._domainkey.DOMAIN")
    keygen.add_argument("--dir", default="/etc/sendguard/keys", metavar="DIR", help="where DOMAIN.SELECTOR.pem and .txt go (default: %(default)s)")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="key type (default: rsa)")
    keygen.add_argument("--bits", type=int, default=2048, metavar="N", help="RSA key size (default: 2048)")
    keygen.add_argument("--name", metavar="NAME", help="the [signing.keys.NAME] of the printed block (default: the selector; with --type ed25519, the RSA entry it joins)")
    keygen.add_argument("--force", action="store_true", help="replace existing key and record files")
    keygen.set_defaults(func=cmd_keygen)
    dns = with_config(sub.add_parser("dns-check", help="check DKIM records, SPF, DMARC and reverse DNS (exit 1 on any problem)"))
    dns.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    dns.add_argument("--nameserver", metavar="IP[:PORT]", help="ask this server (default: the system's resolvers)")
    dns.set_defaults(func=cmd_dns_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sendguard`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        for problem in exc.all():  # every problem found in the file, one line each
            print(f"sendguard: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except ListenError as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
