"""The policy protocol fuzzer: planned requests (valid and broken), sent pipelined over many
connections with the byte stream split at random boundaries, and the check of the replies.

Shared by the fast test (``tests/fuzz/test_policyd_protocol_fuzz.py``) and the full campaign
(``tests/soak/run_campaign.py``). Every request knows its expected answer beforehand:

* ``bad``: broken in a way the protocol documents as bad (no ``request=``, a wrong one, no
  ``protocol_state``, a NUL byte, a line that is not ``name=value``, random bytes, too many
  attributes) — answered ``bad_request_action``. None of them loses the framing (lines under
  8 KiB, requests under 64 KiB), so the connection goes on and every later reply is checked;
* ``dunno``: a valid request that needs no count (RCPT, another state, mail of no stream) —
  ``DUNNO``;
* ``capped``: an END-OF-MESSAGE of the capped stream with its own ``instance`` — ``DUNNO``
  while the cap has room, then ``DEFER_IF_PERMIT 4.7.1``; exactly ``min(cap, offered)`` pass.
"""

from __future__ import annotations

import random
import selectors
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ports import wait_listening
from sendguard_testing.command import sendguard_command
from sendguard_testing.policy_client import postfix_request

#: The answer the fuzzed daemon gives to bad input: distinct from every decision, so a reply
#: that lands on the wrong request is seen.
BAD_ACTION = "450 4.7.0 sendguard fuzz: bad request"
#: The capped stream: mail to server port 25; other ports match no stream.
STREAM_PORT = "25"

_TEXT = "abcdefghijklmnopqrstuvwxyz0123456789.-_+"
_ODD = ["jörg", "ünïcödé", "用户", "a=b=c", "tab\there", "cr\rhere", "sp ace", "%41", "\u2028", "\x7f"]
_STATES = ["CONNECT", "EHLO", "HELO", "MAIL", "VRFY", "ETRN", "DATA"]


@dataclass(frozen=True)
class Planned:
    """One request as bytes on the wire (with its empty line) and what it must be answered."""

    data: bytes
    kind: str  # "bad" | "dunno" | "capped"
    instance: str = ""


def _word(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice(_TEXT) for _ in range(rng.randint(1, n)))


def _value(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.6:
        return _word(rng, 12)
    if r < 0.85:
        return rng.choice(_ODD) + _word(rng, 4)
    if r < 0.95:
        return ""
    return _word(rng, 4) * rng.randint(50, 500)  # long, far under the 8 KiB line limit


def _encode(attrs: list[tuple[str, str]]) -> bytes:
    return b"".join(k.encode() + b"=" + v.encode() + b"\n" for k, v in attrs) + b"\n"


def _decorate(rng: random.Random, attrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Unknown attributes and odd values where a valid request may carry them, in any order."""
    for _ in range(rng.randint(0, 3)):
        attrs.append((f"future_{_word(rng, 6).replace('.', '_').replace('-', '_').replace('+', '_')}", _value(rng)))
    for name in ("helo_name", "client_name", "ccert_subject", "policy_context", "stress"):
        if rng.random() < 0.2:
            attrs = [(k, _value(rng) if k == name else v) for k, v in attrs]
    if rng.random() < 0.3:
        rng.shuffle(attrs)
    return attrs


def valid_request(rng: random.Random, tag: str) -> Planned:
    """A request Postfix could send, with the answer it must get."""
    r = rng.random()
    sender = f"{_word(rng)}@send.example.net" if rng.random() < 0.7 else f"{rng.choice(_ODD)}@bücher.example"
    common = {"sender": sender, "client_port": str(rng.randint(1024, 65535)), "instance": tag}
    if r < 0.35:
        attrs = postfix_request(protocol_state="RCPT", recipient=f"{_word(rng)}@example.com", server_port=STREAM_PORT, **common)
        kind = "dunno"
    elif r < 0.45:
        attrs = postfix_request(protocol_state=rng.choice(_STATES), server_port=STREAM_PORT, **common)
        kind = "dunno"
    elif r < 0.55:
        attrs = postfix_request(protocol_state="END-OF-MESSAGE", queue_id=f"Q{zlib.crc32(tag.encode()):X}",
                                recipient_count="1", server_port="587", **common)  # fmt: skip
        kind = "dunno"
    else:
        attrs = postfix_request(protocol_state="END-OF-MESSAGE", queue_id=f"Q{zlib.crc32(tag.encode()):X}",
                                recipient="carrier@example.com", recipient_count="1", server_port=STREAM_PORT, **common)  # fmt: skip
        kind = "capped"
    return Planned(_encode(_decorate(rng, attrs)), kind, tag if kind == "capped" else "")


def _frame(raw: bytes) -> bytes:
    """``raw`` made one whole request block: no empty line inside, none before, under the limits."""
    while b"\n\n" in raw:
        raw = raw.replace(b"\n\n", b"\n")
    raw = raw.strip(b"\n")[:60000]
    lines = raw.split(b"\n")
    raw = b"\n".join(line[:8000] for line in lines)
    return (raw or b"x") + b"\n\n"


def broken_request(rng: random.Random, tag: str) -> Planned:
    """A request the protocol documents as bad; its framing is intact (the connection goes on)."""
    base = valid_request(rng, tag).data[:-1].split(b"\n")[:-1]  # the attribute lines
    how = rng.randrange(8)
    if how == 0:
        lines = [line for line in base if not line.startswith(b"request=")]
    elif how == 1:
        lines = [b"request=" + _word(rng).encode() if line.startswith(b"request=") else line for line in base]
    elif how == 2:
        lines = [line for line in base if not line.startswith(b"protocol_state=")]
        if rng.random() < 0.5:
            lines.append(b"protocol_state=")
    elif how == 3:
        at = rng.randrange(len(base))
        lines = base[:at] + [base[at] + b"\0" + bytes(rng.randrange(256) for _ in range(3))] + base[at + 1 :]
    elif how == 4:
        junk = rng.choice([b"no equals sign", b"=value", b"bad-name=1", b"sp ace=1", "名前=v".encode(), b"\xff\xfe"])
        lines = list(base)
        lines.insert(rng.randrange(len(lines) + 1), junk)
    elif how == 5:
        lines = [f"x{i}=1".encode() for i in range(rng.randint(201, 400))] + base
    elif how == 6:
        lines = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))]
    else:
        lines = [line + b"\r" for line in base]  # CRLF line ends: request= reads "smtpd_access_policy\r"
    raw = _frame(b"\n".join(lines))
    if b"request=smtpd_access_policy" in raw and how == 6:
        raw = b"junk\n\n"  # random bytes that spelled a request line: astronomically rare
    return Planned(raw, "bad")


def plan_connection(rng: random.Random, conn: int, count: int, bad_share: float, run: str) -> list[Planned]:
    """``count`` requests for connection ``conn``, a ``bad_share`` of them broken."""
    out = []
    for i in range(count):
        tag = f"{run}.{conn}.{i}"
        out.append(broken_request(rng, tag) if rng.random() < bad_share else valid_request(rng, tag))
    return out


def split_stream(rng: random.Random, data: bytes, max_chunk: int) -> list[bytes]:
    """``data`` cut at random boundaries into pieces of 1..``max_chunk`` bytes."""
    out, at = [], 0
    while at < len(data):
        n = rng.randint(1, max_chunk) if rng.random() < 0.7 else rng.randint(1, 8)
        out.append(data[at : at + n])
        at += n
    return out


@dataclass
class Figures:
    """What one fuzzing round found; every field but the volumes must be zero."""

    requests: int = 0
    replies: int = 0
    capped_offered: int = 0
    capped_passed: int = 0
    missing: int = 0  # complete requests left unanswered by the deadline (a hang)
    extra: int = 0  # replies beyond the requests sent
    wrong: int = 0  # a reply other than the request's expected one (or out of order)
    overshoot: int = 0  # capped passes beyond the cap
    undershoot: int = 0  # capped requests deferred although the cap had room
    connection_errors: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, other: Figures) -> None:
        """Sum another round into this one (examples: the first few kept)."""
        for name in ("requests", "replies", "capped_offered", "capped_passed", "missing", "extra", "wrong",
                     "overshoot", "undershoot", "connection_errors"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples = (self.examples + other.examples)[:5]

    @property
    def faults(self) -> int:
        """The sum of the figures that must be zero."""
        return self.missing + self.extra + self.wrong + self.overshoot + self.undershoot + self.connection_errors


@dataclass
class _Stream:
    """One fuzzing connection: its socket, the chunks still to send, the replies read so far."""

    sock: socket.socket
    chunks: list[bytes]
    want: int
    pending: bytes = b""
    buf: bytes = b""
    replies: list[bytes] = field(default_factory=list)
    open: bool = True


def drive(port: int, plans: list[list[Planned]], rng: random.Random, max_chunk: int, timeout: float) -> list[list[bytes]]:
    """Send every connection's requests pipelined, interleaved across connections and cut at random
    boundaries; collect the replies until each request has one or ``timeout`` seconds pass."""
    sel = selectors.DefaultSelector()
    streams: list[_Stream] = []
    for n, plan in enumerate(plans):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        streams.append(_Stream(sock, split_stream(rng, b"".join(p.data for p in plan), max_chunk), len(plan)))
        sel.register(sock, selectors.EVENT_READ, n)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            senders = [st for st in streams if st.open and (st.pending or st.chunks)]
            for st in rng.sample(senders, len(senders)):
                if not st.pending:
                    st.pending = st.chunks.pop(0)
                try:
                    sent = st.sock.send(st.pending)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    st.open = False
                    continue
                st.pending = st.pending[sent:]
            if all(len(st.replies) >= st.want or not st.open for st in streams):
                break
            for key, _ in sel.select(0 if senders else 0.05):
                st = streams[key.data]
                try:
                    data = st.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    st.open = False
                    sel.unregister(st.sock)
                    continue
                st.buf += data
                *whole, st.buf = st.buf.split(b"\n\n")
                st.replies.extend(whole)
    finally:
        for st in streams:
            st.sock.close()
        sel.close()
    return [st.replies for st in streams]


def check(plans: list[list[Planned]], replies: list[list[bytes]], cap: int, already_counted: int = 0) -> Figures:
    """Compare the replies with the plan: one per request, in order, each the expected answer,
    and exactly as many capped passes as the cap has room for."""
    fig = Figures()
    bad = b"action=" + BAD_ACTION.encode()
    for plan, got in zip(plans, replies):
        fig.requests += len(plan)
        fig.replies += len(got)
        fig.missing += max(0, len(plan) - len(got))
        fig.extra += max(0, len(got) - len(plan))
        for p, r in zip(plan, got):
            if p.kind == "capped":
                fig.capped_offered += 1
                if r == b"action=DUNNO":
                    fig.capped_passed += 1
                    continue
                ok = r.startswith(b"action=DEFER_IF_PERMIT 4.7.1 ")
            else:
                ok = r == (bad if p.kind == "bad" else b"action=DUNNO")
            if not ok:
                fig.wrong += 1
                if len(fig.examples) < 5:
                    fig.examples.append(f"{p.kind} {p.data[:120]!r} -> {r[:120]!r}")
    room = max(0, cap - already_counted)
    fig.overshoot = max(0, fig.capped_passed - room)
    # Deferrals while room was left: counted only when every capped request was answered.
    if not fig.missing:
        fig.undershoot = max(0, min(room, fig.capped_offered) - fig.capped_passed)
    return fig


def policyd_process(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``sendguard policyd --config CONFIG`` logging to ``log``, once it listens on ``port``.

    The log goes to a file, not a pipe: under a fuzzing load the daemon logs a line per
    refusal, and a pipe nobody reads fills up and stalls it.
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen([sendguard_command(), "policyd", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    wait_listening(port, proc, lambda: log.read_text(errors="replace")[-2000:])
    return proc


def stopped_on_sigterm(proc: subprocess.Popen[bytes], wait: float) -> bool:
    """SIGTERM ``proc``; whether it exits within ``wait`` seconds (if not, it is killed).

    The daemon sometimes misses a SIGTERM (docs/reliability.md, Observations): callers
    that test something else must not hang on it.
    """
    if proc.poll() is not None:
        return True
    proc.terminate()
    try:
        proc.wait(wait)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
