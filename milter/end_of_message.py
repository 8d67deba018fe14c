"""What happens to a message at end of message, apart from libmilter: repair, decide, check, sign.

The milter (app.py) hands over the facts and the body and applies what comes
back; ``sendguard explain --message`` runs the very same on a file, so what it
prints and writes is what the milter does. The steps log their own lines with
the queue id (link repair, text part, Message-ID); the verdict's line is the
milter's, once Postfix has been answered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sendguard import logs

from . import dkim_sign, message_id, metrics
from .decision import Decision, Facts, after_signing_error, check_body, decide, find_long_line
from .links import log as link_log, metrics as link_metrics, rewrite as link_rewrite
from .runtime import Runtime
from .text_part.add import HeaderChange, add_text_part, changed_headers

log = logs.get("milter")

_NEWLINE = re.compile(rb"\r?\n")

#: A header field as the MTA hands it to a milter: name, and the value with folding kept.
Field = tuple[str, bytes]


@dataclass
class Prepared:
    """The verdict on one message and what the MTA must change for it."""

    decision: Decision
    #: The header fields as the MTA will hold them after the changes below (what was signed).
    headers: list[Field]
    #: The body as it will be sent (what was signed).
    body: bytes
    #: The new body for ``replacebody``; None when the body is unchanged.
    new_body: bytes | None = None
    changes: list[HeaderChange] = field(default_factory=list)
    additions: list[tuple[str, str]] = field(default_factory=list)
    #: The DKIM-Signature lines (each ``DKIM-Signature: ...\r\n``), RSA first.
    signatures: list[bytes] = field(default_factory=list)
    #: What link repair found (None when it did not run: out of scope or ``mode = "off"``).
    links: link_rewrite.RewriteResult | None = None
    #: The text part's outcome label (None when not asked for this mail).
    text_part: str | None = None
    text_part_detail: str = ""
    #: The Message-ID repair made (None when none was needed or asked for).
    message_id: message_id.Repair | None = None


def header_block(headers: list[Field]) -> bytes:
    """The header section as it will be sent (CRLF line ends), from the values the MTA passed."""
    out = []
    for name, value in headers:
        raw_name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
        value = _NEWLINE.sub(b"\r\n", value)
        # Without SMFIP_HDR_LEADSPC the MTA strips the space after the colon; put one back.
        sep = b":" if value[:1] in (b" ", b"\t") else b": "
        out.append(raw_name + sep + value + b"\r\n")
    return b"".join(out)


def prepare(runtime: Runtime, facts: Facts, body: bytes, queue_id: str) -> Prepared:
    """Decide on ``facts``, repair the in-scope message, check it as it will be sent, and sign it or not."""
    settings = runtime.settings
    # Scope, stream, bulk, From, row and key depend on the headers only, which
    # link repair leaves alone: decide once, check the final body afterwards.
    decision = decide(settings, runtime.streams, runtime.keys.get, facts, runtime.key_problem)
    out = Prepared(decision, list(facts.headers), body)
    if decision.scope.trusted:
        # Only our own outgoing mail is repaired; inbound mail passes untouched.
        _repair_links(out, settings.link_policy(decision.stream), queue_id)
        if settings.text_part(decision.stream):
            # After link repair, so the text part shows the repaired links.
            _add_text_part(out, queue_id)
        repair = message_id.needed_repair(out.headers, settings.message_id, decision.sender_from.domain)
        if repair is not None:
            _repair_message_id(out, repair, settings.message_id.keep_original, queue_id)

    block = header_block(out.headers)
    out.decision = check_body(decision, find_long_line(block, out.body), facts.client_addr)
    if out.decision.action == "sign":
        try:
            out.signatures = _sign(runtime, out.decision, out.headers, block, out.body)
        except Exception as exc:  # a message we cannot sign is a decision, not a crash
            log.error("%s: signing failed: %s: %s", queue_id, type(exc).__name__, exc)
            out.decision = after_signing_error(out.decision, f"{type(exc).__name__}: {exc}", facts.client_addr)
    return out


def _repair_links(out: Prepared, policy: link_rewrite.LinkPolicy, queue_id: str) -> None:
    if policy.mode == "off":
        return
    result = link_rewrite.rewrite_message(out.headers, out.body, policy)
    link_log.log_result(log, queue_id, result, policy.mode)
    link_metrics.record(result, policy.mode)
    out.links = result
    if result.body is not None and result.body != out.body:
        out.new_body = out.body = result.body


def _add_text_part(out: Prepared, queue_id: str) -> None:
    added = add_text_part(out.headers, out.body)
    out.text_part, out.text_part_detail = added.outcome, added.detail
    if added.body is not None:
        out.new_body = out.body = added.body
        out.changes += added.header_changes
        out.additions += added.header_additions
        # Signed as Postfix will send it: with the changed Content-Type.
        out.headers = changed_headers(out.headers, added)
        log.info("%s: text part: added a text/plain part rendered from the HTML", queue_id)
    elif added.outcome != "not_html_only":
        log.warning("%s: text part: not added: %s: %s", queue_id, added.outcome, added.detail)
    if added.outcome != "not_html_only":
        metrics.TEXT_PARTS.labels(outcome=added.outcome).inc()


def _repair_message_id(out: Prepared, repair: message_id.Repair, keep_original: bool, queue_id: str) -> None:
    """Note the new Message-ID for the MTA (``changes``/``additions``) and in ``headers``, which are signed."""
    headers = out.headers
    if repair.original is None:
        out.additions.append(("Message-ID", repair.new_id))
        headers.append(("Message-ID", repair.new_id.encode("ascii")))
    else:
        out.changes.append(HeaderChange("Message-ID", repair.new_id))
        i = next(i for i, (n, _) in enumerate(headers) if n.lower() == "message-id")
        headers[i] = (headers[i][0], repair.new_id.encode("ascii"))
    if keep_original and repair.original:
        out.additions.append(("X-Original-Message-ID", repair.original))
        headers.append(("X-Original-Message-ID", repair.original.encode("utf-8")))
    out.message_id = repair
    metrics.MESSAGE_ID_REPAIRED.labels(reason=repair.reason).inc()
    log.info("%s: message-id: %s", queue_id, repair.text())


def _sign(runtime: Runtime, decision: Decision, headers: list[Field], block: bytes, body: bytes) -> list[bytes]:
    """The DKIM-Signature lines for the message, RSA first (an Ed25519 one follows when the key has it)."""
    settings = runtime.settings
    key = decision.key
    assert key is not None  # a "sign" decision always carries its key
    include = dkim_sign.header_list([n for n, _ in headers], settings.signed_headers, settings.oversign_headers)
    return dkim_sign.sign_all(block, body, domain=key.spec.domain, signers=key.signers(), include_headers=include)


def as_sent(prepared: Prepared) -> bytes:
    """The message as the MTA sends it on: the signatures on top (RSA first), the header fields, the body."""
    return b"".join(prepared.signatures) + header_block(prepared.headers) + b"\r\n" + prepared.body
