"""``sendguard explain``: the decision the milter would take for a sender and client, and why.

It runs the milter's own decision (decision.decide) on a message made of the
given From and headers, so what it prints is what the milter does.
"""

from __future__ import annotations

from typing import Sequence

from sendguard.streams import Stream

from . import dkim_sign
from .decision import Facts, decide
from .keys import KeyStore
from .refusal import reply_args
from .settings import MilterSettings


def _headers(from_addr: str, headers: Sequence[str]) -> list[tuple[str, bytes]]:
    out = [("From", from_addr.encode("utf-8", "surrogateescape"))]
    for line in headers:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {line!r} is not 'Name: value'")
        out.append((name.strip(), value.strip().encode("utf-8", "surrogateescape")))
    return out


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
    facts = Facts(
        client_addr=client,
        sasl_user=sasl or None,
        daemon_port=str(port) if port is not None else None,
        envelope_sender=sender or from_addr.strip().rpartition("<")[2].rstrip(">").strip(),
        headers=hdrs,
    )
    d = decide(settings, streams, keys.get, facts)
    lines = []
    f = d.sender_from
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
    return "\n".join(lines) + "\n"
