"""A private Postfix instance on loopback, wired to sendguard from ``postfix-snippets/``, relaying to smtp-sink.

For the campaign (``tests/soak/run_campaign.py``, the Postfix phase) and benchmarks that want
the real MTA in the path without containers. Everything lives under one folder (a temp dir):
its own ``config_directory``, ``queue_directory``, ``data_directory`` and ``maillog_file``, an
smtpd on a free loopback port, no chroot, no local delivery, and the main.cf lines a user
pastes (``postfix-snippets/*main.cf``) with their ports pointed at the sendguard milter and
policy daemon under test. Every message is relayed to an ``smtp-sink`` on loopback that dumps
each one to a file, so what left Postfix can be checked (DKIM, body) byte for byte.

The host's own Postfix is never touched: when Debian's ``postfix`` package is missing,
:func:`ensure_postfix` installs it with "No configuration" and makes sure the system
instance it brings is neither running nor enabled.

    with PostfixInstance(root, milter_port=..., policy_port=...) as pf:
        smtplib.SMTP("127.0.0.1", pf.smtpd_port) ...
        pf.wait_idle(600)
        pf.log_counts()

Run as root (Postfix's own daemons drop to the ``postfix`` user).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ports import free_port, wait_listening

REPO = Path(__file__).resolve().parents[3]
SNIPPETS = REPO / "postfix-snippets"
#: Where the snippets point Postfix; rewritten to the ports of the services under test.
SNIPPET_MILTER, SNIPPET_POLICY = "inet:127.0.0.1:8891", "inet:127.0.0.1:10040"
POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"
#: Debian's package and its default instance (the one that must stay off).
SYSTEM_PID_FILE = Path("/var/spool/postfix/pid/master.pid")

#: main.cf lines of the private instance; the snippets are appended after them.
MAIN_CF = """\
# A private Postfix instance (tests/support/sendguard_testing/postfix_instance.py).
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.example.net
mydomain = example.net
myorigin = $mydomain
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Loopback to loopback: nothing to protect, and a campaign must not stall on a 1 s
# per-message pause when the queue manager falls behind.
in_flow_delay = 0
# Every message goes to one sink: let as many SMTP clients talk to it as smtpd has clients.
default_destination_concurrency_limit = {concurrency}
default_destination_rate_delay = 0
# The campaign reads each delivery's status from the log: name every one.
smtp_connection_cache_on_demand = yes
"""

#: master.cf of the private instance: smtpd on the chosen port, the daemons a relay
#: needs, postlogd for maillog_file; nothing chrooted (no copies of /etc in the queue).
MASTER_CF = """\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _run(*cmd: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def ensure_postfix() -> None:
    """Install Debian's ``postfix`` (smtpd, smtp-sink) if missing, leaving the system instance off.

    debconf is preseeded with "No configuration", so the package writes no main.cf and
    starts nothing; should an init script have started the default instance anyway, it is
    stopped and disabled, because only the private instances may run.
    """
    if Path(POSTFIX).exists() and Path(SMTP_SINK).exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError("Postfix is not installed and installing it needs root: apt-get install postfix")
    subprocess.run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select No configuration\n",
                   text=True, check=True)  # fmt: skip
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ("apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix")
    if _run(*install, timeout=900, env=env).returncode != 0:
        _run("apt-get", "update", "-q", timeout=900, env=env)  # the lists may be stale or empty
        done = _run(*install, timeout=900, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install postfix failed: {done.stderr[-2000:]}")
    stop_system_postfix()


def stop_system_postfix() -> None:
    """Stop the host's default Postfix instance if it runs, and keep it from starting at boot."""
    if _pid_alive(SYSTEM_PID_FILE):
        _run(POSTFIX, "stop")
    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        _run("systemctl", "disable", "--now", "postfix")
    elif shutil.which("update-rc.d") and Path("/etc/init.d/postfix").exists():
        _run("update-rc.d", "postfix", "disable")


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


def snippet_lines(milter: str, policy: str) -> str:
    """The main.cf lines of ``postfix-snippets/``, with the milter and policy addresses replaced."""
    out = []
    for path in sorted(SNIPPETS.glob("*.cf")):
        if path.name.endswith("master.cf"):
            continue
        text = path.read_text().replace(SNIPPET_MILTER, milter).replace(SNIPPET_POLICY, policy)
        out.append(f"\n# --- snippet {path.name}\n{text}")
    return "".join(out)


@dataclass
class LogCounts:
    """What the private instance's log says about the mail it handled."""

    received: int  # queue ids that entered the queue (qmgr "from=<...>, size=")
    statuses: Counter[str]  # delivery attempts by status= (sent, deferred, bounced, ...)
    milter_timeouts: list[str]  # smtpd/cleanup lines about a milter that timed out or was unreachable
    milter_errors: list[str]  # other milter trouble Postfix logged
    policy_errors: list[str]  # check_policy_service trouble
    panics: list[str]  # fatal/panic lines of any Postfix daemon


_MILTER_TIMEOUT = re.compile(r"milter\b.*(timeout|timed out)", re.I)
_MILTER_TROUBLE = re.compile(r"milter\b.*(error|refused|unreachable|disconnect|unknown|can't|cannot)", re.I)
_POLICY_TROUBLE = re.compile(r"problem talking to server|policy.*(error|timeout|timed out|refused)", re.I)


class PostfixInstance:
    """A private Postfix (started and stopped with ``postfix -c DIR``) and its smtp-sink.

    ``root`` is an empty folder the instance owns (its config, queue, data, log, sink dumps).
    ``milter_port``/``policy_port`` are where the sendguard services under test listen; the
    snippets' 8891 and 10040 are rewritten to them. Use it as a context manager: leaving it
    stops Postfix and the sink whatever happened inside.
    """

    def __init__(self, root: Path, milter_port: int, policy_port: int, *, concurrency: int = 20) -> None:
        ensure_postfix()
        self.root = root.resolve()
        self.etc, self.spool, self.data = self.root / "etc", self.root / "spool", self.root / "data"
        self.maillog, self.sink_dir = self.root / "maillog", self.root / "sink"
        self.smtpd_port, self.sink_port = free_port(), free_port()
        self.milter_port, self.policy_port, self.concurrency = milter_port, policy_port, concurrency
        self.sink: subprocess.Popen[bytes] | None = None
        self._started = False

    # -- setting up
    def write_config(self) -> None:
        """Write main.cf and master.cf and create the folders Postfix needs."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        for folder in (self.root, *self.root.parents):
            if not folder.stat().st_mode & 0o001:  # Postfix's daemons and the sink run as postfix
                raise RuntimeError(f"{folder}: the postfix user cannot enter it (mode {folder.stat().st_mode & 0o777:o})")
        for d in (self.etc, self.spool, self.data, self.sink_dir):
            d.mkdir(parents=True, exist_ok=True)
        main = MAIN_CF.format(root=self.root, sink_port=self.sink_port, concurrency=self.concurrency)
        main += snippet_lines(f"inet:127.0.0.1:{self.milter_port}", f"inet:127.0.0.1:{self.policy_port}")
        dups = [k for k, n in Counter(re.findall(r"^([a-z_0-9]+)\s*=", main, re.M)).items() if n > 1]
        if dups:  # the last one would win silently: a snippet fights this file
            raise RuntimeError(f"main.cf sets these more than once: {dups}")
        (self.etc / "main.cf").write_text(main)
        (self.etc / "master.cf").write_text(MASTER_CF.format(smtpd_port=self.smtpd_port))
        # postfix(1) runs its helper scripts from here; Debian keeps them beside the default config.
        for name in ("postfix-files", "dynamicmaps.cf"):
            src = Path("/etc/postfix") / name
            if src.exists():
                shutil.copy(src, self.etc / name)
        self.data.chmod(0o700)
        shutil.chown(self.data, "postfix", "postfix")
        self.maillog.touch()

    def postfix(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c ETC ARGS``."""
        return _run(POSTFIX, "-c", str(self.etc), *args, timeout=timeout)

    def start(self) -> None:
        """Write the config, start the sink, check and start Postfix; return once smtpd answers."""
        self.write_config()
        self.sink_log = open(self.root / "sink.log", "wb")
        # -d: one file per transaction, named from a strftime template plus a random suffix;
        # -u: the unprivileged user it runs as once it listens (it then writes the dumps).
        # 1000: the listen backlog, far above the SMTP clients Postfix opens to it.
        self.sink = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-d", f"{self.sink_dir}/%H/%M%S.", f"127.0.0.1:{self.sink_port}", "1000"],
            stdout=self.sink_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        shutil.chown(self.sink_dir, "postfix", "postfix")
        wait_listening(self.sink_port, self.sink, lambda: (self.root / "sink.log").read_text(errors="replace"))
        for step in (("set-permissions",), ("check",), ("start",)):
            done = self.postfix(*step)
            if done.returncode != 0:
                raise RuntimeError(f"postfix {step[0]} failed ({done.returncode}): {self._why(step) or done.stderr[-3000:]}\n{self.log_text()[-3000:]}")
            self._started = self._started or step == ("start",)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtpd_port), timeout=2) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"smtpd does not answer on {self.smtpd_port}: {self.log_text()[-3000:]}")

    def _why(self, step: tuple[str, ...]) -> str:
        # postfix(1) tells why it refused only to syslog, or to stderr when that is a terminal:
        # ask again on a pseudo-terminal (script(1)) to have the reason in the error.
        if not shutil.which("script"):
            return ""
        cmd = " ".join([POSTFIX, "-c", str(self.etc), *step])
        return _run("script", "-qec", cmd, "/dev/null").stdout.strip()[-3000:]

    def stop(self) -> None:
        """Stop Postfix (``postfix stop``, then its master by pid) and the sink."""
        if self._started:
            self.postfix("stop")
            pid_file = self.spool / "pid" / "master.pid"
            deadline = time.monotonic() + 20
            while _pid_alive(pid_file) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(pid_file):
                os.kill(int(pid_file.read_text().split()[0]), 9)
            self._started = False
        if self.sink is not None:
            if self.sink.poll() is None:
                self.sink.terminate()
                try:
                    self.sink.wait(10)
                except subprocess.TimeoutExpired:
                    self.sink.kill()
                    self.sink.wait()
            self.sink_log.close()
            self.sink = None

    def __enter__(self) -> PostfixInstance:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- looking at it
    def log_text(self) -> str:
        """The instance's maillog so far."""
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def queued(self) -> int:
        """Messages in the queue now (incoming, active, deferred, hold, maildrop), by their files."""
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.spool / sub):
                total += len(files)
        return total

    def wait_idle(self, timeout: float, settle: float = 2.0) -> int:
        """Wait until the queue is empty (for ``settle`` s) or ``timeout`` passes; return what is left."""
        deadline = time.monotonic() + timeout
        empty_since: float | None = None
        while time.monotonic() < deadline:
            if self.queued() == 0:
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since >= settle:
                    return 0
            else:
                empty_since = None
            time.sleep(0.5)
        return self.queued()

    def sink_files(self) -> list[Path]:
        """The files smtp-sink dumped, one per transaction, in name order."""
        return sorted(p for p in self.sink_dir.rglob("*") if p.is_file())

    def log_counts(self) -> LogCounts:
        """Count what the log says: queue entries, delivery statuses, milter and policy trouble."""
        received, statuses = 0, Counter[str]()
        timeouts, milter, policy, panics = [], [], [], []
        for line in self.log_text().splitlines():
            if "postfix/qmgr" in line and ": from=<" in line and "size=" in line:
                received += 1
            m = re.search(r" status=([a-z]+)", line)
            if m and ("postfix/smtp[" in line or "postfix/error[" in line or "postfix/bounce[" in line):
                statuses[m.group(1)] += 1
            if _MILTER_TIMEOUT.search(line):
                timeouts.append(line)
            elif _MILTER_TROUBLE.search(line) and re.search(r"warning|error", line):
                milter.append(line)
            if _POLICY_TROUBLE.search(line) and ("warning" in line or "error" in line):
                policy.append(line)
            if re.search(r"\b(fatal|panic):", line):
                panics.append(line)
        return LogCounts(received, statuses, timeouts, milter, policy, panics)


def split_sink_file(raw: bytes) -> tuple[dict[str, list[str]], bytes]:
    """An smtp-sink dump (smtp-sink(1), DUMP FILE FORMAT): the envelope records it writes first
    (X-Client-Addr, X-Mail-Args, X-Rcpt-Args, ...), and the message as Postfix sent it, in CRLF
    lines — without the sink's own three-line Received field and the empty line it appends."""
    envelope: dict[str, list[str]] = {}
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and re.match(rb"X-[A-Za-z-]+: ", lines[i]):
        name, _, value = lines[i].partition(b": ")
        envelope.setdefault(name.decode(), []).append(value.decode(errors="replace"))
        i += 1
    if i < len(lines) and lines[i].startswith(b"Received: "):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    rest = lines[i:]
    if rest and rest[-1] == b"":  # the file's last newline
        rest.pop()
    if rest and rest[-1] == b"":  # the empty line the sink appends
        rest.pop()
    return envelope, b"".join(line.rstrip(b"\r") + b"\r\n" for line in rest)
