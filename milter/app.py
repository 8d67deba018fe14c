"""The milter itself: one ``Milter.Base`` object per SMTP connection.

It collects what the decision needs — client address and port, ``{daemon_port}``,
``{auth_authen}``, the envelope sender, every header as raw bytes and the raw
body — and at end of message hands them to :mod:`.end_of_message` (decide,
repair links, text part and Message-ID, check, sign), then answers Postfix with
the verdict and its changes and logs one line with the queue id. Header values
and the body are taken as bytes (``@Milter.decode('bytes')``) and never
re-encoded, so 8-bit headers and bodies are signed exactly as they will be sent.

If the milter itself fails (an exception of its own), the message is answered
``451 4.3.0``: Postfix keeps or retries it, and unsigned bulk mail never leaves.
"""

from __future__ import annotations

import socket
import tempfile
import time
from typing import Callable

import Milter

from sendguard import logs

from . import metrics
from .command_size import COMMAND_LIMIT
from .decision import Facts
from .end_of_message import Prepared, prepare
from .refusal import INTERNAL_ERROR, reply_args
from .runtime import Runtime
from .trusted_scope import is_local_submission

__all__ = ["BODY_SPILL_BYTES", "Runtime", "SendguardMilter"]

log = logs.get("milter")

_SIG_PREFIX = b"DKIM-Signature: "

#: A body larger than this is kept in a temporary file while it arrives, not in memory.
BODY_SPILL_BYTES = 1 << 20


class SendguardMilter(Milter.Base):
    """One SMTP connection (libmilter calls it from its own thread per connection).

    ``runtime`` is a :class:`Runtime`, or a callable giving the one in service:
    each message takes it once, at MAIL FROM, so a reload (SIGHUP) applies from
    the next message and a message in flight finishes with the runtime it started with.
    """

    def __init__(self, runtime: Runtime | Callable[[], Runtime]) -> None:
        self._current: Callable[[], Runtime] = runtime if callable(runtime) else (lambda: runtime)
        self.runtime = self._current()
        self.hostname: str | None = None
        self.client_addr: str | None = None
        self.client_port: int | None = None
        self.daemon_port: str | None = None
        self._new_message()

    def _new_message(self) -> None:
        #: Set at MAIL, cleared when the message ends (eom or abort): a close while set is a dropped message.
        self.in_message = False
        self.queue_id: str | None = None
        self.envelope_sender: str | None = None
        self.sasl_user: str | None = None
        self.headers: list[tuple[str, bytes]] = []
        body = getattr(self, "body_file", None)
        if body is not None:
            body.close()  # a spilled body's file is gone with it
        #: The body as it arrives: in memory up to BODY_SPILL_BYTES, then in a temporary file.
        self.body_file: tempfile.SpooledTemporaryFile[bytes] | None = None

    # -- callbacks -------------------------------------------------------------------
    #
    # The callbacks that only record are negotiated as no-reply (milter protocol 6):
    # Postfix does not wait for an answer to CONNECT, MAIL, RCPT, each header field
    # or body chunk, which saves a round trip and a thread hand-off each. HELO, EOH
    # and unknown commands are not sent at all (pymilter's Base marks them so).
    # DATA is the exception, see data().

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: tuple[str, int] | str | None) -> int:
        """Remember who the client is; every client may talk, the decision is at end of message."""
        self.hostname = hostname
        port = self.getsymval("{client_port}")
        self.client_port = int(port) if port and port.isdigit() else None
        if family in (socket.AF_INET, socket.AF_INET6) and isinstance(hostaddr, tuple):
            self.client_addr = str(hostaddr[0])
            self.client_port = int(hostaddr[1])
        elif family in (socket.AF_INET, socket.AF_INET6) and isinstance(hostaddr, str):
            self.client_addr = hostaddr
        else:  # a unix-socket client or no address: what Postfix says in {client_addr}
            self.client_addr = self.getsymval("{client_addr}")
        self.daemon_port = self.getsymval("{daemon_port}")
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def envfrom(self, mailfrom: bytes, *params: bytes) -> int:
        """A new message starts: reset, and note the envelope sender and SASL login."""
        self._new_message()
        self.runtime = self._current()
        self.in_message = True
        self.envelope_sender = mailfrom.decode("utf-8", "surrogateescape").strip().strip("<>")
        self.sasl_user = self.getsymval("{auth_authen}") or None
        self.queue_id = self.getsymval("i") or None
        if self.daemon_port is None:
            self.daemon_port = self.getsymval("{daemon_port}")
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, recipient: str, *params: str) -> int:
        """Note the queue id (Postfix sends ``i`` at RCPT when it opens the queue file there)."""
        if self.queue_id is None:
            # Kept for abort() and close(): a dropped connection has no end-of-message macros.
            self.queue_id = self.getsymval("i") or None
        return Milter.CONTINUE

    def data(self) -> int:
        """Answered on purpose: the reply is what lets Postfix's next packet leave at once.

        With DATA unanswered, smtpd's last milter packet before the hand-off to
        cleanup got no reply; cleanup's first write then waited on Nagle against
        the milter's delayed ACK, ~40 ms per message on TCP.
        """
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        """Collect each header exactly as received."""
        self.headers.append((name, value))
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        """Collect the raw body (a large one in a temporary file, so connections receiving one stay small)."""
        if self.body_file is None:
            self.body_file = tempfile.SpooledTemporaryFile(max_size=BODY_SPILL_BYTES, prefix="sendguard-body-")
        self.body_file.write(chunk)
        return Milter.CONTINUE

    def _take_body(self) -> bytes:
        """The whole body, read once at end of message; the buffer or file it came from is released."""
        if self.body_file is None:
            return b""
        self.body_file.seek(0)
        data = self.body_file.read()
        self.body_file.close()
        self.body_file = None
        return data

    def eom(self) -> int:
        """Repair links, text part and Message-ID, decide, sign or refuse. Never lets an exception pass bulk mail unsigned."""
        started = time.perf_counter()
        queue_id = self.getsymval("i") or self.queue_id or "NOQUEUE"
        self.in_message = False
        try:
            return self._end_of_message(queue_id)
        except Exception:
            log.exception("%s: internal error, answering %s %s", queue_id, INTERNAL_ERROR[0], INTERNAL_ERROR[1])
            metrics.INTERNAL_ERRORS.inc()
            metrics.MESSAGES.labels(outcome="tempfailed").inc()
            self.setreply(*INTERNAL_ERROR)
            return Milter.TEMPFAIL
        finally:
            # Nothing of this message outlives it: an idle connection holds no body.
            self._new_message()
            metrics.EOM_SECONDS.observe(time.perf_counter() - started)

    def abort(self) -> int:
        """The message ends without end-of-message: forget it, and say so if it was cut off in its headers."""
        self._note_dropped()
        self._new_message()
        return Milter.CONTINUE

    def close(self) -> int:
        """The MTA connection ends."""
        self._note_dropped()
        self._new_message()
        return Milter.CONTINUE

    def _note_dropped(self) -> None:
        """Log and count a message that ended after its first header field but before end-of-message.

        Postfix hands a message to its milters only once cleanup holds all of
        it, so nothing on Postfix's side stops one between its header fields and
        end-of-message. libmilter does: a command over its size limit
        (:mod:`.command_size`: a header field over 1 MiB) or a read timeout,
        after which it calls abort and close and drops the connection, before
        any callback sees the field. Postfix then applies the milter's
        ``default_action`` (tempfail in the snippets) and the message is retried.
        """
        if not (self.in_message and self.headers):
            return
        size = sum(len(name) + len(value) for name, value in self.headers)
        log.error(
            "%s: dropped: the message ended after %d header fields (%d bytes) without end-of-message: libmilter "
            "closes the connection on a header field over %d bytes (or a read timeout); Postfix applies the "
            "milter's default_action; lower Postfix's header_size_limit below %d",
            self.queue_id or "NOQUEUE", len(self.headers), size, COMMAND_LIMIT, COMMAND_LIMIT,
        )  # fmt: skip
        metrics.MESSAGES.labels(outcome="dropped").inc()

    # -- end of message ------------------------------------------------------------

    def facts(self) -> Facts:
        """The decision's view of the current message (the body is checked apart, after link repair)."""
        return Facts(
            client_addr=self.client_addr,
            sasl_user=self.sasl_user,
            local_submission=is_local_submission(self.hostname, self.client_addr, self.client_port),
            daemon_port=self.daemon_port,
            envelope_sender=self.envelope_sender,
            headers=list(self.headers),
        )

    def _end_of_message(self, queue_id: str) -> int:
        return self._apply(queue_id, prepare(self.runtime, self.facts(), self._take_body(), queue_id))

    def _apply(self, queue_id: str, prepared: Prepared) -> int:
        """Answer Postfix with the verdict and its changes, and log it in one line with the queue id."""
        settings = self.runtime.settings
        decision = prepared.decision
        bulk = "bulk (" + ", ".join(decision.bulk) + ")" if decision.bulk else "not bulk"
        stream = f" stream={decision.stream.name}" if decision.stream is not None else ""
        who = f"client={self.client_addr} from=<{decision.sender_from.address or ''}>{stream}"

        if decision.action == "refuse":
            refusal = decision.refusal
            assert refusal is not None
            rcode, xcode, text = reply_args(refusal, settings.refusal_code, settings.refusal_xcode)
            self.setreply(rcode, xcode, text)
            metrics.REFUSALS.labels(reason=refusal.reason).inc()
            metrics.MESSAGES.labels(outcome="refused").inc()
            log.warning("%s: refuse: %s: %s %s %s; %s", queue_id, refusal.reason, rcode, xcode, text, who)
            return Milter.REJECT if rcode.startswith("5") else Milter.TEMPFAIL

        if prepared.new_body is not None:
            self.replacebody(prepared.new_body)
        for change in prepared.changes:
            self.chgheader(change.name, change.index, change.value)
        for name, value in prepared.additions:
            self.addheader(name, value)

        if decision.action == "sign" and prepared.signatures:
            assert decision.key is not None and decision.row is not None
            spec = decision.key.spec
            # Index 0: each signature goes on top, above every header it covers. The last one
            # inserted ends up top-most, so RSA goes in last: a verifier that reads only the
            # first DKIM-Signature meets the algorithm every verifier knows (docs/milter.md).
            for signature, (selector, _) in reversed(list(zip(prepared.signatures, decision.key.signers()))):
                value = signature[len(_SIG_PREFIX) :].rstrip(b"\r\n").replace(b"\r\n", b"\n")
                self.addheader("DKIM-Signature", value.decode("ascii"), 0)
                metrics.SIGNATURES.labels(domain=spec.domain, selector=selector).inc()
            metrics.MESSAGES.labels(outcome="signed").inc()
            for note in decision.notes:
                log.warning("%s: sign: %s", queue_id, note)
            selectors = "+".join(selector for selector, _ in decision.key.signers())
            log.info(
                "%s: sign: d=%s s=%s row=%s; %s; %s; %s",
                queue_id, spec.domain, selectors, decision.row.pattern, decision.scope.why, bulk, who,
            )  # fmt: skip
            return Milter.CONTINUE

        metrics.PASSED_UNSIGNED.labels(reason=decision.reason).inc()
        metrics.MESSAGES.labels(outcome="passed").inc()
        detail = "; ".join(decision.notes)
        level = log.info if decision.reason == "not_in_scope" else log.warning
        level(
            "%s: pass unsigned: %s%s; %s; %s; %s",
            queue_id, decision.reason, f": {detail}" if detail else "", decision.scope.why, bulk, who,
        )  # fmt: skip
        return Milter.CONTINUE
