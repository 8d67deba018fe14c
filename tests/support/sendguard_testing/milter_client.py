"""The MTA side of the milter, for tests and benchmarks: drive sendguard's milter as Postfix would.

Two ways in, for two depths:

* :class:`Driver` / :func:`feed` call the milter's callbacks in-process through
  pymilter's test harness (``Milter.testctx.TestCtx``), in libmilter's order —
  fast, and the milter object stays inspectable;
* :class:`MilterClient` speaks the milter protocol (version 6) over a socket to
  a real ``sendguard milter`` (:class:`MilterProcess`), through libmilter and
  pymilter's C glue, as Postfix does.

Both hand the header fields over as Postfix does (:func:`split_message`) and
rebuild what Postfix would send on (:func:`forwarded`).
"""

from __future__ import annotations

import io
import re
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import Milter
from Milter.testctx import TestCtx
from ports import wait_listening

from sendguard.cli.settings import load
from sendguard_milter.app import Runtime, SendguardMilter
from sendguard_milter.keys import KeyStore
from sendguard_milter.message_file import split_message as split_message  # Postfix's hand-over, as the milter reads a file

from .command import sendguard_command

#: A header field as the milter receives it: name, and value with folding kept as LF.
Field = tuple[str, bytes]
#: A header field the milter asked to add: name, value, index (-1: appended).
Added = tuple[str, "str | bytes", int]
#: A header field the milter asked to change (SMFIR_CHGHEADER): name, index (1: the first of that name), value (empty: delete).
Changed = tuple[str, int, bytes]


def top_down(added: Sequence[Added]) -> list[tuple[str, str | bytes]]:
    """The added fields in the order they end up on top of the message.

    An insert at index i goes above what is at i by then, as Postfix does it:
    two inserts at 0 leave the second on top.
    """
    top: list[tuple[str, str | bytes]] = []
    for n, v, idx in added:
        if idx >= 0:
            top.insert(min(idx, len(top)), (n, v))
        else:
            top.append((n, v))
    return top


def changed(headers: Sequence[Field], changes: Sequence[Changed]) -> list[Field]:
    """``headers`` with the milter's SMFIR_CHGHEADER changes applied as Postfix applies them.

    The ``index``-th field of that name (counted from 1) gets the new value, or
    goes when the value is empty; an index past the last field of that name adds one.
    """
    out = list(headers)
    for name, index, value in changes:
        seen = 0
        for i, (field_name, _) in enumerate(out):
            if field_name.lower() == name.lower():
                seen += 1
                if seen == index:
                    if value:
                        out[i] = (field_name, value)
                    else:
                        del out[i]
                    break
        else:
            if value:
                out.append((name, value))
    return out


def forwarded(added: Sequence[Added], headers: Sequence[Field], body: bytes, changes: Sequence[Changed] = ()) -> bytes:
    """The message as Postfix sends it on: the fields inserted at the top, then the received ones (changed), then the appended ones.

    Fields are folded with LF inside the milter protocol; on the wire that is CRLF.
    """

    def line(name: str, value: str | bytes) -> bytes:
        raw = value.encode() if isinstance(value, str) else value
        return name.encode() + b": " + raw.replace(b"\n", b"\r\n") + b"\r\n"

    fields = [*top_down([a for a in added if a[2] != -1]), *changed(headers, changes), *[(n, v) for n, v, i in added if i == -1]]
    return b"".join(line(n, v) for n, v in fields) + b"\r\n" + body


# -- in-process, through pymilter's test harness ---------------------------------------


def _as_mta(rc: int) -> int:
    """What the MTA makes of a callback's code: NOREPLY (a no-reply callback) means go on."""
    return Milter.CONTINUE if rc == Milter.NOREPLY else rc


class RecordingCtx(TestCtx):
    """TestCtx that keeps header additions and body replacements as the MTA would receive them.

    It also treats a no-reply callback as Postfix does: pymilter's TestCtx
    offers every no-reply bit in its negotiation, and then stops the message
    (connect) or the body (after the first chunk) when a callback answers
    NOREPLY. Here NOREPLY means "go on", as it does for an MTA.
    """

    def __init__(self) -> None:
        super().__init__()
        self.added: list[Added] = []
        self.changed: list[Changed] = []
        self.new_body: bytes | None = None

    def _connect(self, host: str = "localhost", helo: str = "spamrelay", ip: str = "1.2.3.4") -> int:
        self._negotiate()
        if self._protocol & Milter.P_NOCONNECT:
            return Milter.CONTINUE
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self._stage = Milter.M_CONNECT
        rc = _as_mta(Milter.connect_callback(self, host, family, ip))
        self._stage = None
        if rc != Milter.CONTINUE:
            self._close()
            return rc
        return _as_mta(self._helo(helo))

    def _envfrom(self, *args: bytes) -> int:
        return _as_mta(super()._envfrom(*args))

    def _envrcpt(self, recipient: bytes) -> int:
        return _as_mta(super()._envrcpt(recipient))

    def _data(self) -> int:
        return _as_mta(super()._data())

    def _header_bytes(self, name: str, value: bytes) -> int:
        """One header field, as Postfix sends it (HEADER), unless negotiated away."""
        if self._protocol & Milter.P_NOHDRS:
            return Milter.CONTINUE
        return _as_mta(self._priv.header_bytes(name, value))

    def _eoh(self) -> int:
        return _as_mta(super()._eoh())

    def _feed_body(self, bfp: io.BufferedIOBase) -> int:
        if self._protocol & Milter.P_NOBODY:
            return Milter.CONTINUE
        while chunk := bfp.read(8192):
            rc = _as_mta(self._priv.body(chunk))
            if rc != Milter.CONTINUE:
                return rc
        return Milter.CONTINUE

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.added.append((field, value, idx))

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        self.changed.append((field, idx, (value or "").encode()))

    def replacebody(self, chunk: bytes) -> None:
        self.new_body = (self.new_body or b"") + chunk


def feed(
    runtime: Runtime,
    headers: Sequence[Field],
    body: bytes,
    *,
    client: str = "127.0.0.1",
    client_port: str = "41234",
    hostname: str = "client.example",
    helo: str = "helo.example",
    daemon_port: str = "25",
    sasl: str | None = None,
    sender: str = "bounce@send.example.net",
    recipient: str = "rcpt@example.org",
    queue_id: str = "4ABCDEF123",
) -> tuple[RecordingCtx, int]:
    """Call one milter's callbacks for one message in libmilter's order; return the context and eom's code.

    Every callback before end of message must answer CONTINUE (an AssertionError otherwise).
    """
    Milter.factory = lambda: SendguardMilter(runtime)
    ctx = RecordingCtx()
    ctx._setsymval("{daemon_port}", daemon_port)
    ctx._setsymval("{client_port}", client_port)
    ctx._setsymval("{client_addr}", client)
    ctx._setsymval("i", queue_id)
    if sasl:
        ctx._setsymval("{auth_authen}", sasl)
    assert ctx._connect(host=hostname, helo=helo, ip=client) == Milter.CONTINUE
    assert ctx._envfrom(f"<{sender}>".encode()) == Milter.CONTINUE
    assert ctx._envrcpt(f"<{recipient}>".encode()) == Milter.CONTINUE
    assert ctx._data() == Milter.CONTINUE
    for name, value in headers:
        assert ctx._header_bytes(name, value) == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._feed_body(io.BytesIO(body)) == Milter.CONTINUE
    return ctx, ctx._eom()


@dataclass
class Outcome:
    """What the milter did to one message, and the message as Postfix would send it on."""

    rc: int
    reply: tuple | None
    added: list[Added]
    new_body: bytes | None
    message: bytes  # added headers on top, body possibly replaced
    milter: SendguardMilter | None = field(repr=False, default=None)
    #: Header fields the milter asked to change (chgheader).
    changed: list[Changed] = field(default_factory=list)

    @property
    def signature_headers(self) -> list[bytes]:
        """The values of the DKIM-Signature fields added, top first."""
        return [v.encode() if isinstance(v, str) else v for f, v in top_down(self.added) if f == "DKIM-Signature"]

    def tags(self, i: int = 0) -> dict[str, str]:
        """The tags of the ``i``-th added signature, white space removed."""
        sig = re.sub(rb"\s+", b"", self.signature_headers[i]).decode()
        return dict(part.split("=", 1) for part in sig.split(";") if part)


class Driver:
    """Feeds one message per call through SendguardMilter, configured from a config file."""

    def __init__(self, config_path: Path) -> None:
        self.config = load(config_path)
        self.keys = KeyStore(self.config.milter.keys)
        self.runtime = Runtime(self.config.milter, self.config.streams, self.keys)

    def run(self, message: bytes, *, crlf_body: bool = True, **connection: str | None) -> Outcome:
        """Feed raw ``message``; ``connection`` takes :func:`feed`'s keywords (client, sasl, ...).

        With ``crlf_body`` the body's bare LFs become CRLF, as SMTP (and so the
        milter protocol) carries them.
        """
        headers, body = split_message(message)
        if crlf_body:
            body = re.sub(rb"(?<!\r)\n", b"\r\n", body)
        return self.run_parts(headers, body, **connection)

    def run_parts(self, headers: Sequence[Field], body: bytes, **connection: str | None) -> Outcome:
        """Feed header fields and a body as the milter receives them."""
        ctx, rc = feed(self.runtime, headers, body, **connection)
        sent = forwarded(ctx.added, headers, ctx.new_body if ctx.new_body is not None else body, ctx.changed)
        return Outcome(rc=rc, reply=ctx._reply, added=ctx.added, new_body=ctx.new_body, message=sent, milter=ctx._priv, changed=ctx.changed)


# -- over a socket, through the real libmilter -----------------------------------------

P_NOCONNECT, P_NOHELO, P_NOMAIL, P_NORCPT, P_NOBODY, P_NOHDRS, P_NOEOH = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40
P_NR_HDR, P_NODATA = 0x80, 0x200
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT, P_NR_DATA, P_NR_EOH, P_NR_BODY = (
    0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x40000, 0x80000,
)  # fmt: skip


class MilterClient:
    """A minimal MTA side of the milter protocol (version 6), the part Postfix speaks to a milter."""

    def __init__(self, port: int | str, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        """Connect to the milter on TCP ``port`` of ``host``, or on the unix socket at path ``port``."""
        if isinstance(port, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(port)
        else:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self._send(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
        cmd, data = self._recv()
        assert cmd == b"O", cmd
        self.version, self.actions, self.protocol = struct.unpack("!III", data[:12])

    def _send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!I", len(data) + 1) + cmd + data)

    def _recv(self) -> tuple[bytes, bytes]:
        head = self._read(4)
        (length,) = struct.unpack("!I", head)
        payload = self._read(length)
        return payload[:1], payload[1:]

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            buf += chunk
        return buf

    def _step(self, cmd: bytes, data: bytes, skip: int, noreply: int) -> bytes | None:
        # The milter negotiated away some steps (skip) or their replies (noreply).
        if self.protocol & skip:
            return None
        self._send(cmd, data)
        if self.protocol & noreply:
            return None
        reply, payload = self._recv()
        if reply != b"c":
            return reply + payload
        return None

    def _macros(self, stage: bytes, macros: dict[str, str]) -> None:
        if macros:
            self._send(b"D", stage + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in macros.items()))

    def connect(self, client: str, port: int, hostname: str = "client.example", daemon_port: str = "25") -> None:
        """Announce the SMTP client (address, port, name) and its HELO."""
        self._macros(b"C", {"{daemon_port}": daemon_port, "{client_addr}": client, "{client_port}": str(port)})
        family = b"6" if ":" in client else b"4"
        data = hostname.encode() + b"\0" + family + struct.pack("!H", port) + client.encode() + b"\0"
        assert self._step(b"C", data, P_NOCONNECT, P_NR_CONN) is None
        assert self._step(b"H", b"helo.example\0", P_NOHELO, P_NR_HELO) is None

    def message(self, message: bytes, sender: str, sasl: str | None = None, queue_id: str = "5B1E2D3C4F") -> dict:
        """Send one message; return {'result': b'a'|b'c'|b'r'|b't'|b'y...', 'added': [...], 'body': bytes|None}."""
        mail_macros = {"i": queue_id, "{mail_addr}": sender}
        if sasl:
            mail_macros["{auth_authen}"] = sasl
        self._macros(b"M", mail_macros)
        early = self._step(b"M", f"<{sender}>".encode() + b"\0", P_NOMAIL, P_NR_MAIL)
        assert early is None, early
        assert self._step(b"R", b"<rcpt@example.org>\0", P_NORCPT, P_NR_RCPT) is None
        assert self._step(b"T", b"", P_NODATA, P_NR_DATA) is None
        headers, body = split_message(message)
        for name, value in headers:
            assert self._step(b"L", name.encode() + b"\0" + value + b"\0", P_NOHDRS, P_NR_HDR) is None
        assert self._step(b"N", b"", P_NOEOH, P_NR_EOH) is None
        for i in range(0, len(body), 65535):
            assert self._step(b"B", body[i : i + 65535], P_NOBODY, P_NR_BODY) is None
        self._macros(b"E", {"i": queue_id})
        self._send(b"E")
        added: list[Added] = []
        changes: list[Changed] = []
        new_body = None
        while True:
            cmd, data = self._recv()
            if cmd == b"i":
                (idx,) = struct.unpack("!I", data[:4])
                name, value, _ = data[4:].split(b"\0")
                added.append((name.decode(), value, idx))
            elif cmd == b"h":
                name, value, _ = data.split(b"\0")
                added.append((name.decode(), value, -1))
            elif cmd == b"m":
                (idx,) = struct.unpack("!I", data[:4])
                name, value, _ = data[4:].split(b"\0")
                changes.append((name.decode(), idx, value))
            elif cmd == b"b":
                new_body = (new_body or b"") + data
            elif cmd in (b"a", b"c", b"r", b"t", b"y"):
                return {
                    "result": cmd + data.rstrip(b"\0"), "added": added, "changed": changes,
                    "body": new_body, "headers": headers, "raw_body": body,
                }  # fmt: skip
            else:
                raise AssertionError(f"unexpected milter reply {cmd!r}")

    def close(self) -> None:
        """Say goodbye (SMFIC_QUIT) and close the socket."""
        try:
            self._send(b"Q")
        finally:
            self.sock.close()


def final_message(result: dict) -> bytes:
    """The message as Postfix would send it on, from a :meth:`MilterClient.message` result."""
    body = result["body"] if result["body"] is not None else result["raw_body"]
    return forwarded(result["added"], result["headers"], body, result.get("changed", ()))


class MilterProcess:
    """``sendguard milter --config FILE`` as a real process, with its log."""

    def __init__(self, config: Path, log: Path, port: int, metrics_port: int) -> None:
        self.port, self.metrics_port, self.log = port, metrics_port, log
        self.fh = open(log, "wb")
        self.proc = subprocess.Popen([sendguard_command(), "milter", "--config", str(config)], stdout=self.fh, stderr=subprocess.STDOUT)
        wait_listening(port, self.proc, log.read_text)

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the log; return the whole log."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            content = self.log.read_text(errors="replace")
            if text in content:
                return content
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in log:\n{self.log.read_text()}")

    def stop(self) -> int:
        """Stop the milter (SIGTERM, then SIGKILL after 15 s); return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()
        return self.proc.returncode
