"""Relay throughput through a real Postfix: sendguard's milter beside OpenDKIM, and the policy hook's cost.

These VMs lose 0-28 % of their CPU to the hypervisor, so every figure here is a
ratio measured side by side in one run. Each round runs every setup once, in a
rotated order, and each run builds the whole path afresh and tears it down:

* a private Postfix instance from Debian's package on loopback
  (tests/support/sendguard_testing/postfix_instance.py: its own config, queue
  and log, no chroot), relaying everything to an ``smtp-sink`` that dumps each
  message to a file;
* ``smtp-source`` sending ``--messages`` Listmonk-shaped messages (HTML with a
  link per line, List-Unsubscribe, X-Listmonk-Campaign; ``--size`` bytes) over
  ``--sessions`` SMTP sessions, several messages per session as Listmonk does;
* one of the setups:

  ``postfix``            Postfix alone (no milter, no policy service);
  ``policyd``            Postfix with ``sendguard policyd`` in
                         smtpd_recipient_restrictions and smtpd_end_of_data_restrictions
                         (postfix-snippets/policyd-main.cf), caps never reached, on
                         inet 127.0.0.1 (the snippets' default);
  ``policyd-unix``       the same on the daemon's unix socket ([policyd] socket);
  ``policyd-rate-limit`` policyd-rate-limit (PyPI, the version bench_policyd_anchor.py
                         pins, its own venv) on inet 127.0.0.1, asked at RCPT and at
                         DATA (smtpd_data_restrictions: it counts there, count_mode 1),
                         limits never reached: the same two requests per message;
  ``opendkim-tcp``       OpenDKIM (Debian's package) on inet 127.0.0.1;
  ``sendguard-tcp``      ``sendguard milter`` on inet 127.0.0.1;
  ``opendkim-unix``      OpenDKIM on a unix socket;
  ``sendguard-unix``     ``sendguard milter`` on a unix socket.

Both signers get the same RSA-2048 key (generated per run of this script), the
same From domain and relaxed/relaxed canonicalization, and Postfix's milter
lines from postfix-snippets/milter-main.cf. A run's rate is messages delivered
to the sink over the time from the first connection to the last delivery. Its
milter CPU is the signer process's user+system time over the run (all its
threads: /proc/PID/stat), divided by the messages; ``delays=a`` is the mean of
Postfix's own "time before the queue manager" over the run's deliveries (it
holds smtpd's wait for the milter at end of data). The signer's RSS is read at
the end of the run.

A fast unsigned message is a failure: every delivered message of a signing
setup must carry a DKIM-Signature, and a sample (``--verify``) is verified with
dkimpy against the public key; the script exits 1 otherwise, or when a run does
not deliver every message.

``--rss-run N`` instead sends N messages through sendguard on a unix socket in
one run and samples the milter's RSS every 10,000 messages (the 10k/100k
flatness goal).

The policy daemons' own speed on a request stream with a day of traffic in
the store is bench_policyd_anchor.py's job (RESULTS-policyd-anchor.md); here
the question is what each hook costs Postfix.

Usage (as root, from the repository root, with the project's venv; Debian's
postfix and opendkim are installed when missing):
  .venv/bin/python benchmarks/bench_relay.py --rounds 3 --messages 2000 --out benchmarks/RESULTS-relay.md
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parent.parent
# Test helpers, not part of the package: only their folder goes on the path
# (never the repository root, whose milter/ folder would shadow pymilter's module).
sys.path.insert(0, str(REPO / "tests" / "support"))
from ports import free_port, wait_listening  # noqa: E402
from sendguard_testing.postfix_instance import PostfixInstance, split_sink_file  # noqa: E402

SETUPS = (
    "postfix", "policyd", "policyd-unix", "policyd-rate-limit",
    "opendkim-tcp", "sendguard-tcp", "opendkim-unix", "sendguard-unix",
)  # fmt: skip
SIGNERS = {s for s in SETUPS if s.startswith(("opendkim", "sendguard"))}
POLICY_SERVICES = {s for s in SETUPS if s.startswith("policyd")}
DOMAIN, SELECTOR = "send.example.net", "bench"
SENDER, RECIPIENT = "bounce@send.example.net", "carrier@example.org"
SMTP_SOURCE = "/usr/sbin/smtp-source"
OPENDKIM = "/usr/sbin/opendkim"

SENDGUARD_CONFIG = """\
[general]
state_dir = "{work}/state"
log_level = "warning"

[milter]
listen = "{listen}"
metrics_listen = "127.0.0.1:{mport}"
trusted_hosts = ["127.0.0.0/8"]
{socket_access}

[milter.bulk]
headers = ["List-Unsubscribe", "X-Listmonk-Campaign"]

[signing.keys.bench]
domain = "{domain}"
selector = "{selector}"
key_file = "{key}"

[signing.table]
"{domain}" = "bench"
"""

POLICYD_CONFIG = """\
[general]
state_dir = "{work}/state"
log_level = "warning"

[policyd]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{mport}"
database = "{work}/policyd.sqlite"
socket = "{socket}"

[streams.trucking]
hourly_ceiling = 10000000
daily_cap = 10000000
[streams.trucking.match]
client_address = ["127.0.0.1"]
"""

# OpenDKIM as Debian ships it, configured like sendguard: the same key, domain and
# canonicalization; signing for 127.0.0.1 (its InternalHosts default). Traps: the key must
# belong to its UserID and be unreadable to others (RequireSafeKeys), and its unix socket is
# created with its UMask, which must let Postfix's smtpd (user postfix) connect.
OPENDKIM_CONFIG = """\
Syslog no
Background no
Mode s
Domain {domain}
Selector {selector}
KeyFile {key}
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
Socket {socket}
PidFile {work}/opendkim.pid
UserID opendkim
UMask 000
RequireSafeKeys yes
InternalHosts 127.0.0.1
"""


def listmonk_message(size: int) -> bytes:
    """A Listmonk-shaped campaign message of about ``size`` bytes: multipart/alternative, a link per line."""
    head = (
        f"From: Acme Trucking <news@{DOMAIN}>\r\nTo: <{RECIPIENT}>\r\nSubject: This week's loads\r\n"
        f"Date: Thu, 03 Dec 2026 08:00:00 +0000\r\nMessage-ID: <bench.1@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
        f"List-Unsubscribe: <https://{DOMAIN}/subscription/unsubscribe/abc>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nX-Listmonk-Campaign: 7f2e\r\n"
        'Content-Type: multipart/alternative; boundary="lm-boundary"\r\n\r\n'
    )
    text = "--lm-boundary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThis week's loads: see the HTML part.\r\n"
    html_head = '--lm-boundary\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n<html><body>\r\n'
    lines, n = [], 0
    budget = size - len(head) - len(text) - len(html_head) - 40
    while budget > 0:
        line = f'<p>Load {n}: Dallas TX to Tulsa OK, 42,000 lb, <a href="https://{DOMAIN}/link/{n:06d}/load?id={n}&amp;src=nl">book it</a></p>\r\n'
        lines.append(line)
        budget -= len(line)
        n += 1
    return (head + text + html_head + "".join(lines) + "</body></html>\r\n--lm-boundary--\r\n").encode()


@dataclass
class Keys:
    pem: bytes
    record: bytes


def make_keys() -> Keys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Keys(pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))


def ensure_packages() -> None:
    """Debian's postfix (smtpd, smtp-source, smtp-sink) and opendkim, installed when missing."""
    from sendguard_testing.postfix_instance import ensure_postfix

    ensure_postfix()
    if not Path(OPENDKIM).exists():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "opendkim"]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        # The package may start its own instance; only ours may run.
        if shutil.which("systemctl") and Path("/run/systemd/system").exists():
            subprocess.run(["systemctl", "disable", "--now", "opendkim"], capture_output=True)


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process, all its threads and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_cpu() -> tuple[int, int, int]:
    """(all, idle+iowait, steal) jiffies of the whole machine so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values[:8]), values[3] + values[4], values[7]


class Service:
    """A signer or policy daemon run for one setup; ``pid`` is the process whose CPU is counted."""

    def __init__(self, argv: list[str], log: Path, ready: Callable[[Service], None], env: dict[str, str] | None = None) -> None:
        self.log_file = open(log, "wb")
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        ready(self)
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()


def wait_socket(path: Path, service: Service, timeout: float = 20) -> None:
    """Wait until ``path`` is a socket Postfix's group may write (sendguard sets the mode just after it listens)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_mode & 0o020):
        if service.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{service.proc.args[0]} did not listen on {path}: {service.log.read_text()[-2000:]}")
        time.sleep(0.05)


def sendguard_exe() -> str:
    return shutil.which("sendguard") or os.path.join(os.path.dirname(sys.executable), "sendguard")


def start_signer(setup: str, work: Path, keys: Keys) -> tuple[Service, str]:
    """Start the setup's signer; return it and the milter address Postfix is given."""
    unix = setup.endswith("-unix")
    sock_dir = work / "sock"
    sock_dir.mkdir(mode=0o755)
    sock = sock_dir / "milter.sock"
    port = free_port()
    if setup.startswith("sendguard"):
        key_file = work / "sendguard.pem"
        key_file.write_bytes(keys.pem)
        key_file.chmod(0o600)
        listen = f"unix:{sock}" if unix else f"inet:{port}@127.0.0.1"
        config = work / "sendguard.toml"
        # As the snippets advise: a socket Postfix's group may write, whatever the umask.
        access = 'socket_mode = "0660"\nsocket_group = "postfix"' if unix else ""
        config.write_text(SENDGUARD_CONFIG.format(work=work, listen=listen, mport=free_port(), domain=DOMAIN, selector=SELECTOR,
                                                  key=key_file, socket_access=access))  # fmt: skip
        argv = [sendguard_exe(), "milter", "--config", str(config)]
    else:
        key_file = work / "opendkim.private"
        key_file.write_bytes(keys.pem)
        key_file.chmod(0o600)
        shutil.chown(key_file, "opendkim", "opendkim")
        # It creates its socket after dropping to UserID: the folder must be its own.
        shutil.chown(sock_dir, "opendkim", "opendkim")
        socket_spec = f"local:{sock}" if unix else f"inet:{port}@127.0.0.1"
        config = work / "opendkim.conf"
        config.write_text(OPENDKIM_CONFIG.format(domain=DOMAIN, selector=SELECTOR, key=key_file, socket=socket_spec, work=work))
        argv = [OPENDKIM, "-f", "-x", str(config)]
    if unix:
        service = Service(argv, work / f"{setup}.log", lambda s: wait_socket(sock, s))
        return service, f"unix:{sock}"
    service = Service(argv, work / f"{setup}.log", lambda s: wait_listening(port, s.proc, s.log.read_text))
    return service, f"inet:127.0.0.1:{port}"


def start_policyd(setup: str, work: Path, prl_venv: Path) -> tuple[Service, str]:
    """Start the setup's policy daemon; return it and the check_policy_service address."""
    port = free_port()
    if setup == "policyd-rate-limit":
        # The anchor benchmark's installer and configuration, so both benchmarks measure the same daemon.
        from bench_policyd_anchor import ensure_prl, prl_config

        script = ensure_prl(prl_venv)
        conf = prl_config(work, port)
        conf["limits"] = [[10_000_000, 3600], [10_000_000, 86400]]  # never reached, like sendguard's caps here
        (work / "policyd-rate-limit.yaml").write_text(json.dumps(conf, indent=2))
        argv = [str(script.parent / "python"), str(script), "--file", str(work / "policyd-rate-limit.yaml")]
        service = Service(argv, work / "policyd.log", lambda s: wait_listening(port, s.proc, s.log.read_text))
        return service, f"inet:127.0.0.1:{port}"
    sock = work / "policy.sock" if setup == "policyd-unix" else None
    config = work / "policyd.toml"
    config.write_text(POLICYD_CONFIG.format(work=work, port=port, mport=free_port(), socket=sock or ""))
    service = Service([sendguard_exe(), "policyd", "--config", str(config)], work / "policyd.log",
                      lambda s: wait_listening(port, s.proc, s.log.read_text))  # fmt: skip
    if sock is not None:
        wait_socket(sock, service)
        return service, f"unix:{sock}"
    return service, f"inet:127.0.0.1:{port}"


class BenchPostfix(PostfixInstance):
    """The private instance with the setup's milter and policy service (None: that hook off)."""

    def __init__(self, root: Path, milter: str | None, policy: str | None, concurrency: int, policy_at_data: bool = False) -> None:
        super().__init__(root, 1, 1, concurrency=concurrency)
        self.milter_spec, self.policy_spec = milter, policy
        #: Ask the policy service at DATA rather than at end of data (policyd-rate-limit counts there).
        self.policy_at_data = policy_at_data

    def write_config(self) -> None:
        super().write_config()
        edits = []
        for name in ("smtpd_milters", "non_smtpd_milters"):
            edits.append(f"{name} = {{ {self.milter_spec}, default_action=tempfail }}" if self.milter_spec else f"{name} =")
        asked = {"smtpd_recipient_restrictions", "smtpd_data_restrictions" if self.policy_at_data else "smtpd_end_of_data_restrictions"}
        for name in ("smtpd_recipient_restrictions", "smtpd_data_restrictions", "smtpd_end_of_data_restrictions"):
            edits.append(f"{name} = check_policy_service {self.policy_spec}" if self.policy_spec and name in asked else f"{name} =")
        done = subprocess.run(["postconf", "-c", str(self.etc), "-e", *edits], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"postconf -e failed: {done.stderr}")


@dataclass
class Run:
    setup: str
    rate: float
    milter_cpu_ms: float | None
    delays_a_ms: float
    rss_mib: float | None
    machine_busy: float  # share of all cores busy (not idle) during the run
    steal: float
    delivered: int
    notes: list[str] = field(default_factory=list)


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def mean_delays_a(maillog: str) -> float:
    values = []
    for line in maillog.splitlines():
        if "postfix/smtp[" in line and " delays=" in line:
            values.append(float(line.split(" delays=", 1)[1].split("/", 1)[0]))
    return statistics.fmean(values) * 1000 if values else float("nan")


def check_signed(files: list[Path], record: bytes, sample: int) -> list[str]:
    """Every delivered message carries a DKIM-Signature; a sample of them verifies with dkimpy."""
    problems = []
    unsigned = 0
    for path in files:
        with open(path, "rb") as fh:
            if b"\nDKIM-Signature:" not in fh.read(16384):
                unsigned += 1
    if unsigned:
        problems.append(f"{unsigned} of {len(files)} delivered messages carry no DKIM-Signature")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else b""

    for path in random.sample(files, min(sample, len(files))):
        _, message = split_sink_file(path.read_bytes())
        if not dkim.verify(message, dnsfunc=dnsfunc):
            problems.append(f"{path.name}: the signature does not verify")
    return problems


def run_setup(setup: str, base: Path, keys: Keys, args: argparse.Namespace, messages: int, rss_every: int = 0) -> tuple[Run, list[tuple[int, float]]]:
    """One run of one setup, built from scratch and torn down."""
    work = Path(tempfile.mkdtemp(prefix=f"{setup}-", dir=base))
    work.chmod(0o755)
    (work / "state").mkdir()
    service: Service | None = None
    milter = policy = None
    rss_samples: list[tuple[int, float]] = []
    try:
        if setup in SIGNERS:
            service, milter = start_signer(setup, work, keys)
        elif setup in POLICY_SERVICES:
            service, policy = start_policyd(setup, work, args.prl_venv)
        message_file = work / "message.eml"
        # smtp-source -F sends each line with CRLF appended: give it LF lines.
        message_file.write_bytes(listmonk_message(args.size).replace(b"\r\n", b"\n"))
        at_data = setup == "policyd-rate-limit"
        with BenchPostfix(work / "postfix", milter, policy, concurrency=args.sessions * 2, policy_at_data=at_data) as pf:
            cpu0 = cpu_seconds(service.pid) if service else 0.0
            total0, idle0, steal0 = machine_cpu()
            started = time.monotonic()
            source = subprocess.Popen(
                [SMTP_SOURCE, "-d", "-s", str(args.sessions), "-m", str(messages), "-F", str(message_file),
                 "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{pf.smtpd_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            deadline = started + args.run_timeout
            delivered = 0
            next_rss = rss_every
            while time.monotonic() < deadline:
                delivered = count_files(pf.sink_dir)
                if rss_every and service and delivered >= next_rss:
                    rss_samples.append((delivered, rss_mib(service.pid)))
                    next_rss += rss_every
                if delivered >= messages:
                    break
                time.sleep(0.05 if messages <= 5000 else 0.5)
            elapsed = time.monotonic() - started
            total1, idle1, steal1 = machine_cpu()
            cpu1 = cpu_seconds(service.pid) if service else 0.0
            source.wait(60)
            notes = []
            if delivered < messages:
                notes.append(f"delivered {delivered} of {messages} in {elapsed:.0f} s; smtp-source: {source.stderr.read()[-300:]!r}")
            log = pf.log_text()
            counts = pf.log_counts()
            notes += [f"Postfix: {line[-200:]}" for line in (counts.milter_timeouts + counts.milter_errors + counts.policy_errors)[:3]]
            if setup in SIGNERS:
                notes += check_signed(pf.sink_files(), keys.record, args.verify)
            run = Run(
                setup=setup,
                rate=delivered / elapsed,
                milter_cpu_ms=(cpu1 - cpu0) * 1000 / max(delivered, 1) if service else None,
                delays_a_ms=mean_delays_a(log),
                rss_mib=rss_mib(service.pid) if service else None,
                machine_busy=1 - (idle1 - idle0) / max(total1 - total0, 1),
                steal=(steal1 - steal0) / max(total1 - total0, 1),
                delivered=delivered,
                notes=notes,
            )
            return run, rss_samples
    finally:
        if service:
            service.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[list[Run]], setups: list[str], args: argparse.Namespace, elapsed: float) -> str:
    by = {s: [r for rnd in rounds for r in rnd if r.setup == s] for s in setups}
    out = []
    out.append(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(rounds)} rounds of {args.messages:,} messages per setup "
        f"({args.size / 1000:.1f} KB, {args.sessions} SMTP sessions), {elapsed:.0f} s. Machine: {os.cpu_count()} cores "
        f"({platform.machine()}), {platform.platform()}, Python {platform.python_version()}, "
        f"Postfix {subprocess.run(['postconf', '-d', '-h', 'mail_version'], capture_output=True, text=True).stdout.strip()}, "
        f"OpenDKIM {opendkim_version()}. Steal over the whole run: {med([r.steal for rnd in rounds for r in rnd]) * 100:.1f} % (median of runs)."
    )
    out.append("")
    anchors = [
        ("sendguard-tcp", "opendkim-tcp"), ("sendguard-unix", "opendkim-unix"),
        ("policyd", "postfix"), ("policyd-unix", "postfix"), ("policyd-rate-limit", "postfix"),
        ("policyd", "policyd-rate-limit"),
    ]  # fmt: skip
    ratio_rows = []
    for s, anchor in anchors:
        if by.get(s) and by.get(anchor):
            rates = [a.rate / b.rate for a, b in zip(by[s], by[anchor])]
            line = f"| {s} / {anchor} | **{med(rates):.2f}×** | " + ", ".join(f"{x:.2f}" for x in rates)
            if s.startswith("sendguard"):
                cpu = [a.milter_cpu_ms / b.milter_cpu_ms for a, b in zip(by[s], by[anchor]) if a.milter_cpu_ms and b.milter_cpu_ms]
                line += f" | {med(cpu):.2f}× |"
            else:
                line += " | — |"
            ratio_rows.append(line)
    for s in ("sendguard-tcp", "opendkim-tcp"):
        if s in by and "postfix" in by:
            d = [a.delays_a_ms / b.delays_a_ms for a, b in zip(by[s], by["postfix"])]
            ratio_rows.append(f"| {s} `delays=a` / Postfix alone's | **{med(d):.2f}×** | " + ", ".join(f"{x:.2f}" for x in d) + " | — |")
    out.append("Per-round ratios (medians first):")
    out.append("")
    out.append("| ratio | median | per round | milter CPU/msg ratio |")
    out.append("|---|---:|---|---:|")
    out += ratio_rows
    out.append("")
    out.append("| setup | msgs/s (median) | range | service CPU ms/msg | mean `delays=a` | signer RSS | machine CPU busy |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for s in setups:
        runs = by[s]
        if not runs:
            continue
        cpu = [r.milter_cpu_ms for r in runs if r.milter_cpu_ms is not None]
        rss = [r.rss_mib for r in runs if r.rss_mib is not None]
        out.append(
            f"| {s} | {med([r.rate for r in runs]):.1f} | {min(r.rate for r in runs):.1f}–{max(r.rate for r in runs):.1f} | "
            f"{f'{med(cpu):.2f}' if cpu else '—'} | {med([r.delays_a_ms for r in runs]):.0f} ms | "
            f"{f'{med(rss):.0f} MiB' if rss else '—'} | {med([r.machine_busy for r in runs]) * 100:.0f} % |"
        )
    notes = [f"{r.setup}: {n}" for rnd in rounds for r in rnd for n in r.notes]
    if notes:
        out.append("")
        out.append("Problems:")
        out += [f"- {n}" for n in notes]
    return "\n".join(out)


def opendkim_version() -> str:
    done = subprocess.run([OPENDKIM, "-V"], capture_output=True, text=True)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split()[-1] if first else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=27700)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    ap.add_argument("--verify", type=int, default=20, help="delivered messages per run whose signature dkimpy verifies")
    ap.add_argument("--run-timeout", type=float, default=600)
    ap.add_argument("--rss-run", type=int, default=0, help="one sendguard-unix run of N messages, RSS every 10,000")
    ap.add_argument("--workdir", type=Path, default=Path("/var/lib/sendguard-bench-relay"), help="where each run's folder goes")
    ap.add_argument("--keep", action="store_true", help="keep each run's folder (config, logs, sink dumps)")
    ap.add_argument("--prl-venv", type=Path, default=REPO / "benchmarks" / ".venv-policyd-rate-limit", help="policyd-rate-limit's own venv (made if missing)")
    ap.add_argument("--out", type=Path, help="append the results to this Markdown file")
    ap.add_argument("--label", default="", help="a heading for the results")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_relay: run as root (Postfix's daemons and OpenDKIM drop to their own users)")
    ensure_packages()
    # Not under /tmp: OpenDKIM refuses a key or config file below a directory others may write
    # (RequireSafeKeys, kept on as Debian ships it), and /tmp is one.
    args.workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    base.chmod(0o755)
    keys = make_keys()
    started = time.monotonic()
    try:
        if args.rss_run:
            run, samples = run_setup("sendguard-unix", base, keys, args, args.rss_run, rss_every=10000)
            text = (
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {run.delivered:,} messages through sendguard-unix at "
                f"{run.rate:.1f} msgs/s; milter RSS (MiB) by messages delivered: "
                + ", ".join(f"{n:,}: {r:.1f}" for n, r in samples)
            )
            if len(samples) >= 2:
                first, last = samples[0][1], samples[-1][1]
                text += f". Last over first: {last / first:.3f}×."
            failed = bool(run.notes)
            text += "".join(f"\n- {n}" for n in run.notes)
        else:
            rounds: list[list[Run]] = []
            for i in range(args.rounds):
                order = args.setups[i % len(args.setups):] + args.setups[: i % len(args.setups)]
                runs = []
                for setup in order:
                    run, _ = run_setup(setup, base, keys, args, args.messages)
                    print(f"round {i + 1}: {setup}: {run.rate:.1f} msgs/s, delays=a {run.delays_a_ms:.0f} ms, "
                          f"milter CPU {run.milter_cpu_ms or 0:.2f} ms/msg, steal {run.steal * 100:.1f} %"
                          + ("".join(f"\n  PROBLEM: {n}" for n in run.notes)), flush=True)  # fmt: skip
                    runs.append(run)
                rounds.append(runs)
            text = summarise(rounds, args.setups, args, time.monotonic() - started)
            failed = any(r.notes for rnd in rounds for r in rnd)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(text)
    if args.out:
        command = " ".join([".venv/bin/python", "benchmarks/bench_relay.py", *sys.argv[1:]])
        with open(args.out, "a") as fh:
            fh.write(f"\n## {args.label or 'run'}\n\n`{command}`\n\n{text}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
