"""``sendguard explain``: the decision the milter would take for a sender and client, and why.

It runs the milter's own decision (decision.decide) on a message made of the
given From and headers, so what it prints is what the milter does. Given a
whole message (``--message FILE``) it runs the milter's whole end of message
(end_of_message.prepare: link repair, text part, Message-ID, check, sign) and
can write the message as Postfix would send it on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from sendguard.streams import Stream

from . import dkim_sign
from .decision import Decision, Facts, decide
from .end_of_message import Field, Prepared, as_sent, prepare
from .keys import KeyStore
from .links.log import describe_change
from .message_file import read_message
from .refusal import reply_args
from .runtime import Runtime
from .settings import MilterSettings

#: The queue id the milter's own log lines carry for an explained message.
QUEUE_ID = "EXPLAIN"


@dataclass(frozen=True)
class Explained:
    """What ``explain_message`` found: the lines to print, and the message as Postfix would send it on."""

    text: str
    message: bytes


def _headers(from_addr: str, headers: Sequence[str]) -> list[Field]:
    out = [("From", from_addr.encode("utf-8", "surrogateescape"))]
    for line in headers:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {line!r} is not 'Name: value'")
        out.append((name.strip(), value.strip().encode("utf-8", "surrogateescape")))
    return out


def _facts(hdrs: list[Field], client: str, sasl: str | None, port: int | str | None, sender: str | None) -> Facts:
    from_addr = next((v.decode("utf-8", "surrogateescape") for n, v in hdrs if n.lower() == "from"), "")
    return Facts(
        client_addr=client,
        sasl_user=sasl or None,
        daemon_port=str(port) if port is not None else None,
        envelope_sender=sender or from_addr.strip().rpartition("<")[2].rstrip(">").strip(),
        headers=hdrs,
    )


def explain(
    settings: MilterSettings,
    streams: Sequence[Stream],
    keys: KeyStore,
    from_addr: str,
    client: str,
    sasl: str | None = None,
    headers: Sequence[str] = (),
    port: int | str | None = None,
    sender: str | None = None,
) -> str:
    """Describe, line by line, what the milter would do with such a message and why."""
    hdrs = _headers(from_addr, headers)
    facts = _facts(hdrs, client, sasl, port, sender)
    d = decide(settings, streams, keys.get, facts)
    return "\n".join(_describe(settings, keys, facts, d, hdrs)) + "\n"


def explain_message(
    settings: MilterSettings,
    streams: Sequence[Stream],
    keys: KeyStore,
    message: bytes,
    client: str,
    sasl: str | None = None,
    port: int | str | None = None,
    sender: str | None = None,
) -> Explained:
    """Run the milter's end of message on a saved message: what it decides, what it repairs, what it sends on."""
    hdrs, body = read_message(message)
    if not any(n.lower() == "from" for n, _ in hdrs):
        raise ValueError("the message has no From header field (the milter refuses or passes it on that alone)")
    facts = _facts(hdrs, client, sasl, port, sender)
    prepared = prepare(Runtime(settings, tuple(streams), keys), facts, body, QUEUE_ID)
    lines = _describe(settings, keys, facts, prepared.decision, prepared.headers, _repairs(settings, prepared))
    return Explained("\n".join(lines) + "\n", as_sent(prepared) if prepared.decision.action != "refuse" else b"")


def _repairs(settings: MilterSettings, p: Prepared) -> list[str]:
    """What the milter changed in the message before signing: links, text part, Message-ID."""
    if not p.decision.scope.trusted:
        return ["repairs:   none: only mail in scope is repaired"]
    lines = []
    mode = settings.link_policy(p.decision.stream).mode
    if p.links is None:
        lines.append(f"links:     not looked at (mode = {mode!r})")
    elif p.links.error:
        lines.append(f"links:     body left unchanged ({p.links.reason}): {p.links.error}")
    elif not p.links.changes:
        lines.append("links:     nothing to repair")
    else:
        verb = "would " if mode == "report-only" else ""
        kinds = Counter(c.kind for c in p.links.changes)
        lines.append(
            f"links:     {verb}strip {kinds['marker_stripped']} @TrackLink marker(s), "
            f"{verb}repair {kinds['query_repaired']} query string(s)"
        )
        lines.extend(f"           {describe_change(c)}" for c in p.links.changes)
    if p.text_part is None:
        lines.append("text part: not asked for (add_text_part = false)")
    elif p.text_part == "added":
        lines.append("text part: added a text/plain part rendered from the HTML")
    elif p.text_part == "not_html_only":
        lines.append("text part: not needed: the message is not HTML-only")
    else:
        lines.append(f"text part: not added: {p.text_part}: {p.text_part_detail}")
    lines.append("message-id: " + ("kept" if p.message_id is None else p.message_id.text()))
    return lines


def _describe(
    settings: MilterSettings, keys: KeyStore, facts: Facts, d: Decision, hdrs: list[Field], repairs: Sequence[str] = ()
) -> list[str]:
    lines = []
    f = d.sender_from
    client, sasl, port = facts.client_addr, facts.sasl_user, facts.daemon_port
    lines.append(f"from:      {f.address} (domain {f.domain})" if f.address else f"from:      {f.detail}")
    lines.append(f"client:    {client}" + (f", SASL user {sasl}" if sasl else ", no SASL") + (f", port {port}" if port else ""))
    lines.append(f"scope:     {'in scope' if d.scope.trusted else 'NOT in scope'}: {d.scope.why}")
    if d.stream is not None:
        lines.append(f"stream:    {d.stream.name}" + (" (bulk = true)" if settings.rules_for(d.stream).bulk else ""))
    else:
        lines.append("stream:    none matched")
    lines.append("bulk:      " + ("yes: " + ", ".join(d.bulk) if d.bulk else "no"))
    row = d.row or (settings.table.lookup(f.domain) if f.domain else None)
    if row is not None:
        kind = "wildcard" if row.wildcard else "exact"
        lines.append(f"table row: {row.pattern} -> key {row.key} ({kind} match)")
        spec = settings.key_spec(row.key)
        key = keys.get(row.key)
        if spec is not None:
            state = f"{key.bits}-bit RSA, loaded" if key is not None else "NOT loaded"
            lines.append(f"key:       {spec.name}: d={spec.domain} s={spec.selector}, {spec.key_file} ({state})")
            if spec.ed25519_key_file is not None:
                state = "Ed25519, loaded" if key is not None and key.ed25519_key is not None else "NOT loaded"
                lines.append(f"           and s={spec.ed25519_selector}, {spec.ed25519_key_file} ({state})")
    elif f.domain:
        lines.append(f"table row: none for {f.domain}")
    lines.extend(repairs)
    if d.action == "sign" and d.key is not None:
        spec = d.key.spec
        h = b":".join(dkim_sign.header_list([n for n, _ in hdrs], settings.signed_headers, settings.oversign_headers))
        lines.append(f"decision:  SIGN d={spec.domain} s={spec.selector} a=rsa-sha256 c=relaxed/relaxed h={h.decode()}")
        for selector, private in d.key.signers()[1:]:
            a = dkim_sign.algorithm(private).decode()
            lines.append(f"           and SIGN d={spec.domain} s={selector} a={a}, the second DKIM-Signature (below the RSA one)")
    elif d.action == "refuse" and d.refusal is not None:
        rcode, xcode, text = reply_args(d.refusal, settings.refusal_code, settings.refusal_xcode)
        lines.append(f"decision:  REFUSE ({d.reason}): {rcode} {xcode} {text.replace('%%', '%')}")
    else:
        why = {"not_in_scope": "not bulk and not in scope: inbound mail passes untouched"}.get(d.reason, d.reason)
        notes = "; ".join(d.notes)
        lines.append(f"decision:  PASS unsigned: {why}" + (f" ({notes})" if notes else ""))
    for note in d.notes if d.action == "sign" else ():
        lines.append(f"warning:   {note}")
    return lines
