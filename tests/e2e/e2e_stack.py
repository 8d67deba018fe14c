"""Helpers over the end-to-end stack of docker-compose.test.yml: engine, keys, SMTP in, sink out, metrics.

Used by conftest.py (which builds and starts the stack) and by the tests.
"""

from __future__ import annotations

import base64
import calendar
import email
import email.policy
import email.utils
import json
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.test.yml"
#: The suite's sendguard config; each run mounts a copy of it (Stack.config) in both containers.
TEST_CONFIG = Path(__file__).resolve().parent / "sendguard.test.toml"
PROJECT = "sendguard-e2e"
#: Container names, fixed in docker-compose.test.yml (container_name).
CONTAINERS = ("postfix", "sendguard", "sink", "redis", "listmonk", "listmonk-hc", "app", "outsider")
#: uid of the sendguard user in the project's Dockerfile; the key files are given to it.
SENDGUARD_UID = 10001

#: The DKIM keys the test config names (tests/e2e/sendguard.test.toml): domain -> selector.
SELECTORS = {"send.example.net": "send", "example.net": "mail"}
#: The Ed25519 keys that sign beside them (RFC 8463, a second signature below the RSA one): domain -> selector.
ED25519_SELECTORS = {"send.example.net": "send-ed"}

#: Fixed addresses of docker-compose.test.yml.
ADDR = {
    "postfix": "172.30.25.4",
    "listmonk": "172.30.25.5",
    "app": "172.30.25.7",
    "sink": "172.30.25.10",
    "listmonk-hc": "172.30.25.25",
    "outsider": "172.30.25.66",
}
METRICS_URL = f"http://{ADDR['postfix']}:9466/metrics"
#: `sendguard release` in the postfix container ([release] metrics_listen of the test config).
RELEASER_METRICS_URL = f"http://{ADDR['postfix']}:9468/metrics"
#: A file in the postfix container that tells start-releaser to start the stopped releaser again.
RELEASER_RESTART = "/run/sendguard-release.restart"

TIMINGS: dict[str, float] = {}


def container(service: str) -> str:
    """The container name of a compose service."""
    return f"{PROJECT}-{service}"


# -- the engine --------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """The container CLI and its compose front end."""

    cli: str  # "docker" or "podman"
    compose: tuple[str, ...]


def _answers(cmd: list[str]) -> bool:
    if not shutil.which(cmd[0]):
        return False
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_engine() -> Engine:
    """`docker compose` when a Docker engine answers, else podman-compose; fail otherwise."""
    if _answers(["docker", "info"]) and _answers(["docker", "compose", "version"]):
        return Engine("docker", ("docker", "compose"))
    if _answers(["podman", "info"]) and _answers(["podman-compose", "--version"]):
        return Engine("podman", ("podman-compose",))
    pytest.fail(
        "the container suite needs a container engine and none answers: neither `docker info` (with the"
        " compose plugin) nor `podman info` + `podman-compose` works. Run `scripts/container-setup.sh` as"
        " root (installs Podman and the offline base image), or start Docker. The suite is never skipped.",
        pytrace=False,
    )


# -- DKIM test keys -------------------------------------------------------------------------


def generate_keys(directory: Path) -> dict[str, bytes]:
    """Write a fresh 2048-bit key per domain (and the Ed25519 keys) as ``DOMAIN.SELECTOR.pem``; return the DNS TXT records."""
    records: dict[str, bytes] = {}
    for domain, selector in SELECTORS.items():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = directory / f"{domain}.{selector}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        records[f"{selector}._domainkey.{domain}."] = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    for domain, selector in ED25519_SELECTORS.items():
        ed = ed25519.Ed25519PrivateKey.generate()
        path = directory / f"{domain}.{selector}.pem"
        path.write_bytes(ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        path.chmod(0o600)
        raw = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        records[f"{selector}._domainkey.{domain}."] = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)
    return records


# -- the stack ---------------------------------------------------------------------------------


@dataclass
class Submission:
    """What the SMTP server answered an injector."""

    stage: str
    code: int
    message: str
    rcpt: dict[str, list]
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.stage == "data" and self.code == 250

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.message}" + (f" ({self.error})" if self.error else "")


@dataclass
class SinkMessage:
    """One message the sink stored: the envelope and the raw bytes as Postfix delivered them."""

    raw: bytes
    envelope: dict

    @property
    def parsed(self) -> email.message.Message:
        return email.message_from_bytes(self.raw, policy=email.policy.compat32)


@dataclass(frozen=True)
class Counted:
    """Recipients the suite had counted against a stream, at a moment known to lie in [lo, hi] (epoch s)."""

    stream: str
    recipients: int
    lo: float
    hi: float


@dataclass
class Stack:
    """Helpers over the running compose stack."""

    engine: Engine
    spool: Path
    dns: dict[str, bytes]
    #: The host folder mounted at /var/lib/sendguard in the sendguard and postfix containers.
    state: Path
    #: The run's copy of TEST_CONFIG, mounted at /etc/sendguard/sendguard.toml in both containers.
    config: Path
    #: What the tests had counted against the streams' windows, and when (the stack is fresh per run).
    ledger: list[Counted] = field(default_factory=list)

    # -- running things
    def run(self, *args: str, input: bytes | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run the engine CLI (``docker``/``podman``) with ``args``."""
        proc = subprocess.run([self.engine.cli, *args], input=input, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{self.engine.cli} {' '.join(args[:4])}... failed ({proc.returncode}):"
                f" {proc.stderr.decode(errors='replace')[-2000:]}"
            )
        return proc

    def exec(self, service: str, *cmd: str, input: bytes | None = None, check: bool = True) -> str:
        """Run ``cmd`` inside a service's container; return its stdout."""
        proc = self.run("exec", "-i", container(service), *cmd, input=input, check=check)
        return proc.stdout.decode(errors="replace")

    def logs(self, service: str) -> str:
        """Everything a container has logged so far (stdout and stderr); for postfix, its mail log too."""
        proc = self.run("logs", container(service), check=False)
        text = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        maillog = self.state / "maillog"
        if service == "postfix" and maillog.exists():
            text += "\n" + maillog.read_text(errors="replace")
        return text

    # -- mail in
    def submit(self, injector: str, message: bytes, sender: str, rcpts: list[str], port: int = 25) -> Submission:
        """Submit ``message`` over SMTP to Postfix from an injector container (its fixed address)."""
        args = ["python3", "/usr/local/bin/inject.py", "--port", str(port), "--from", sender]
        for r in rcpts:
            args += ["--to", r]
        out = self.exec(injector, *args, input=message)
        data = json.loads(out.strip().splitlines()[-1])
        return Submission(data["stage"], data["code"], data["message"], data.get("rcpt", {}), data.get("error"))

    def sendmail(self, message: bytes, sender: str, rcpts: list[str]) -> str:
        """Submit ``message`` locally with Postfix's sendmail(1) inside the postfix container."""
        return self.exec("postfix", "/usr/sbin/sendmail", "-i", "-f", sender, "--", *rcpts, input=message)

    # -- mail out
    def sink_messages(self) -> list[SinkMessage]:
        """Every message the sink has stored so far, oldest first."""
        out = []
        for eml in sorted(self.spool.glob("*.eml")):
            meta = json.loads(eml.with_suffix(".json").read_text())
            out.append(SinkMessage(eml.read_bytes(), meta))
        return out

    def find_in_sink(self, token: str) -> list[SinkMessage]:
        """The sink's messages whose bytes contain ``token``."""
        needle = token.encode()
        return [m for m in self.sink_messages() if needle in m.raw]

    def wait_for_sink(self, token: str, count: int = 1, timeout: float = 30) -> list[SinkMessage]:
        """Wait until the sink holds ``count`` messages containing ``token``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_in_sink(token)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the sink got {len(found)} message(s) with {token!r} after {timeout}s, expected {count};"
                    f" Postfix queue: {self.queue()}"
                )
            time.sleep(0.3)

    def assert_not_in_sink(self, token: str, wait: float = 5) -> None:
        """Fail if a message containing ``token`` reaches the sink within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            found = self.find_in_sink(token)
            assert not found, f"the sink received a message with {token!r} it must never see:\n{found[0].raw[:2000]!r}"
            time.sleep(0.3)

    def queue(self) -> list[dict]:
        """Postfix's queue as ``postqueue -j`` reports it (one dict per message)."""
        out = self.exec("postfix", "postqueue", "-j")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now (``postqueue -f``)."""
        self.exec("postfix", "postqueue", "-f")

    # -- DKIM
    def dkim_verify(self, raw: bytes, idx: int = 0) -> bool:
        """Verify the message's ``idx``-th DKIM signature (top first) with dkimpy against the generated keys."""

        def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
            key = name.decode() if isinstance(name, bytes) else name
            return self.dns.get(key if key.endswith(".") else key + ".", b"")

        return dkim.DKIM(raw).verify(idx=idx, dnsfunc=dnsfunc)

    # -- metrics
    def scrape(self) -> dict[str, float]:
        """Scrape sendguard's metrics endpoint over HTTP from the ``app`` container."""
        text = self.exec("app", "python3", "/usr/local/bin/scrape.py", METRICS_URL)
        return parse_metrics(text)

    def scrape_releaser(self) -> dict[str, float]:
        """Scrape the releaser's metrics endpoint (in the postfix container) from the ``app`` container."""
        text = self.exec("app", "python3", "/usr/local/bin/scrape.py", RELEASER_METRICS_URL)
        return parse_metrics(text)

    # -- the ledger of counted mail
    def counted(self, stream: str) -> int:
        """Recipients the suite has counted against ``stream`` in this run."""
        return sum(c.recipients for c in self.ledger if c.stream == stream)

    def in_window(self, stream: str, start: float, end: float, window: float) -> tuple[int, int]:
        """For a window count read between ``start`` and ``end``: the recipients surely in it and
        those that may be in it (counted near the window's edge, or at a moment known only roughly)."""
        surely = sum(c.recipients for c in self.ledger if c.stream == stream and c.lo > end - window)
        maybe = sum(c.recipients for c in self.ledger if c.stream == stream and c.hi > start - window - 1)
        return surely, maybe

    # -- the sendguard container
    def restart_sendguard(self) -> None:
        """Stop and start the sendguard container (its state survives, as with a real restart)."""
        self.run("restart", container("sendguard"))
        wait_for_sendguard(self)

    # -- the releaser in the postfix container
    def restart_releaser(self, timeout: float = 30) -> None:
        """Stop `sendguard release` and wait until start-releaser has started it again, listening."""
        old = releaser_pids(self)
        assert old, f"no releaser runs in the postfix container:\n{self.logs('postfix')[-4000:]}"
        self.exec("postfix", "sh", "-c", f"touch {RELEASER_RESTART} && kill -TERM {' '.join(old)}")
        deadline = time.monotonic() + timeout
        while True:
            now = releaser_pids(self)
            if now and not set(now) & set(old) and _port_open(self, "postfix", 9468):
                return
            log = self.logs("postfix")
            if time.monotonic() > deadline or "sendguard release exited" in log:
                raise AssertionError(f"the releaser did not start again:\n{log[-4000:]}")
            time.sleep(0.3)

    # -- the counter store
    def use_store(self, store: str) -> None:
        """Run the policy daemon and the releaser on ``store`` ("sqlite" or "redis"); wait until both answer."""
        text = TEST_CONFIG.read_text()
        line = 'store = "sqlite"'
        assert text.count(line) == 1, f"{TEST_CONFIG} must set {line} exactly once"
        # In place, not a new file: a bind-mounted file is its inode, so a replaced file
        # would stay unseen by the containers.
        started = time.monotonic()
        self.config.write_text(text.replace(line, f'store = "{store}"'))
        self.restart_sendguard()
        self.restart_releaser()
        TIMINGS[f"switch to the {store} store"] = time.monotonic() - started


_POSTFIX_LINE = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) \S+ (postfix/[\w/.-]+)\[\d+\]: (.*)$")


@dataclass(frozen=True)
class LogLine:
    """One line of Postfix's log: when (epoch seconds, whole seconds), which program, what."""

    at: float
    program: str
    text: str


def postfix_log(text: str) -> list[LogLine]:
    """Postfix's lines in a container log (maillog_file = /dev/stdout), in order; other lines skipped."""
    year = time.gmtime().tm_year  # Postfix's stamp has no year; the stack lives minutes, in UTC
    out = []
    for line in text.splitlines():
        m = _POSTFIX_LINE.match(line)
        if m:
            at = calendar.timegm(time.strptime(f"{year} {m[1]}", "%Y %b %d %H:%M:%S"))
            out.append(LogLine(float(at), m[2], m[3]))
    return out


def queue_id(submission: Submission) -> str:
    """The queue id in Postfix's 250 answer ("2.0.0 Ok: queued as 4F1A22C3B1")."""
    m = re.search(r"queued as ([0-9A-Za-z]+)", submission.message)
    assert m, f"no queue id in Postfix's answer: {submission}"
    return m[1]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to ``{'name{label="v",...}': value}`` (labels as printed)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


# -- readiness -------------------------------------------------------------------------------------


def _port_open(stack: Stack, service: str, port: int) -> bool:
    probe = f"exec 3<>/dev/tcp/127.0.0.1/{port}"
    return stack.run("exec", container(service), "bash", "-c", probe, check=False, timeout=30).returncode == 0


def wait_for_sendguard(stack: Stack, timeout: float = 60) -> None:
    """Wait until the milter (8891) and the policy daemon (10040) accept connections inside Postfix's namespace."""
    deadline = time.monotonic() + timeout
    while True:
        if all(_port_open(stack, "postfix", p) for p in (8891, 10040, 9466)):
            return
        state = stack.run("inspect", "-f", "{{.State.Status}}", container("sendguard"), check=False).stdout.decode()
        if time.monotonic() > deadline or state.strip() in ("exited", "dead"):
            raise AssertionError(f"sendguard did not come up ({state.strip()}):\n{stack.logs('sendguard')[-4000:]}")
        time.sleep(0.5)


def wait_for_stack(stack: Stack, timeout: float = 90) -> None:
    """Wait until Postfix and the sink answer SMTP and sendguard listens."""
    deadline = time.monotonic() + timeout
    for service, port in (("postfix", 25), ("postfix", 2526)):
        while not _port_open(stack, service, port):
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} does not listen on {port}:\n{stack.logs(service)[-4000:]}")
            time.sleep(0.5)
    probe = "import socket; socket.create_connection(('172.30.25.10', 25), 5).close()"
    while stack.run("exec", container("app"), "python3", "-c", probe, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"the sink does not listen:\n{stack.logs('sink')[-4000:]}")
        time.sleep(0.5)
    wait_for_sendguard(stack, timeout=max(5, deadline - time.monotonic()))
    wait_for_releaser(stack, timeout=max(5, deadline - time.monotonic()))


def releaser_pids(stack: Stack) -> list[str]:
    """The process ids of `sendguard release` in the postfix container."""
    ps = "for f in /proc/[0-9]*/cmdline; do echo \"${f#/proc/} $(tr '\\0' ' ' < $f 2>/dev/null)\"; done"
    out = stack.run("exec", container("postfix"), "bash", "-c", ps, check=False, timeout=30).stdout.decode()
    return [line.split("/")[0] for line in out.splitlines() if "sendguard release" in line]


def releaser_running(stack: Stack) -> bool:
    """Whether `sendguard release` runs in the postfix container."""
    return bool(releaser_pids(stack))


def wait_for_releaser(stack: Stack, timeout: float = 30) -> None:
    """Wait until the releaser runs beside Postfix (it starts once the policy daemon made the store)."""
    deadline = time.monotonic() + timeout
    while not releaser_running(stack):
        log = stack.logs("postfix")
        if time.monotonic() > deadline or "sendguard release exited" in log:
            raise AssertionError(f"the releaser does not run in the postfix container:\n{log[-4000:]}")
        time.sleep(0.5)


# -- messages -----------------------------------------------------------------------------------------------


def make_message(
    token: str,
    from_addr: str,
    to: str,
    subject: str = "hello",
    body: str = "Hello,\nthis is a test.\n",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A plain text message carrying ``token`` in its Subject and Message-ID, CRLF line endings."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = from_addr
    msg["To"] = to
    msg["Subject"] = f"{subject} [{token}]"
    msg["Message-ID"] = f"<{token}.{uuid.uuid4().hex[:6]}@{from_addr.rpartition('@')[2]}>"
    msg["Date"] = email.utils.formatdate(localtime=False)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()


BULK_HEADERS = {
    "List-Unsubscribe": "<https://lists.example.net/subscription/optout>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    "Precedence": "bulk",
    "X-Listmonk-Campaign": "42",
}


def dkim_tags(raw: bytes) -> list[dict[str, str]]:
    """The tags of every DKIM-Signature header in the message, top first."""
    msg = email.message_from_bytes(raw)
    out = []
    for value in msg.get_all("DKIM-Signature") or []:
        flat = re.sub(r"\s+", "", str(value))
        out.append(dict(part.split("=", 1) for part in flat.split(";") if "=" in part))
    return out
