"""The DKIM record of each signing key: published, parseable, and the public half of the key file.

As ``opendkim-testkey`` does: a record that exists but holds another key
(an old selector's, a key regenerated without republishing) fails every
signature at every receiver, while the milter itself sees nothing wrong.
A key entry with an Ed25519 key has two records, each checked the same way:
the RSA one at ``selector``, the ``k=ed25519`` one at ``ed25519_selector``.
"""

from __future__ import annotations

import base64
import binascii

import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .dns_records import Finding, LookupFailed, lookup, tags
from .keys import KeyLoadError, KeySpec, LoadedKey, load_key

#: Below this, receivers increasingly treat the signature as weak (RFC 8301 recommends 2048).
RECOMMENDED_BITS = 2048


def record_name(spec: KeySpec) -> str:
    """Where the key's record lives: ``SELECTOR._domainkey.DOMAIN``."""
    return f"{spec.selector}._domainkey.{spec.domain}"


def ed25519_record_name(spec: KeySpec) -> str | None:
    """Where the Ed25519 key's record lives: ``ED25519_SELECTOR._domainkey.DOMAIN`` (None without one)."""
    return None if spec.ed25519_selector is None else f"{spec.ed25519_selector}._domainkey.{spec.domain}"


def check_key(spec: KeySpec, resolver: dns.resolver.Resolver) -> list[Finding]:
    """The findings for one ``[signing.keys.NAME]``: its record, the key match, and DNSSEC."""
    name = record_name(spec)
    try:
        key = load_key(spec)
    except KeyLoadError as exc:
        where = f"signing.keys.{spec.name}.{exc.field}"
        if exc.field == "ed25519_key_file":
            name = ed25519_record_name(spec) or name
        return [Finding("dkim", "fail", name, f"{where}: {exc}", "fix the key file (sendguard check-config says the same)")]
    try:
        return published_findings(spec, key, resolver)
    except LookupFailed as exc:
        return [Finding("dkim", "fail", name, f"lookup failed: {exc}", "check the nameserver answers for the domain")]


def published_findings(spec: KeySpec, key: LoadedKey, resolver: dns.resolver.Resolver) -> list[Finding]:
    """The findings for the record(s) of ``key`` (already loaded), RSA first; raise LookupFailed when DNS cannot answer."""
    findings = _record_findings(spec, key, record_name(spec), "rsa", key.dns_txt(), resolver)
    ed_name, ed_txt = ed25519_record_name(spec), key.ed25519_dns_txt()
    if ed_name is not None and ed_txt is not None:
        findings += _record_findings(spec, key, ed_name, "ed25519", ed_txt, resolver)
    return findings


def _record_findings(
    spec: KeySpec, key: LoadedKey, name: str, kind: str, txt: str, resolver: dns.resolver.Resolver
) -> list[Finding]:
    publish = f"publish TXT {name} \"{txt}\""
    answer = lookup(resolver, name, "TXT")
    records = [t for t in answer.texts if "p=" in t or t.lower().startswith("v=dkim1")]
    if not records:
        return [Finding("dkim", "fail", name, f"no DKIM record (key {spec.name})", publish)]
    if len(records) > 1:
        return [Finding("dkim", "fail", name, f"{len(records)} DKIM records: receivers may pick either", f"keep one: {publish}")]
    judge = _judge if kind == "rsa" else _judge_ed25519
    findings = judge(spec, key, records[0], name, publish)
    if answer.authenticated:
        findings.append(Finding("dnssec", "ok", name, "the resolver validated the record (AD flag set)"))
    else:
        findings.append(Finding("dnssec", "info", name, "not validated by DNSSEC (no AD flag from the resolver)"))
    return findings


def _common(spec: KeySpec, record: str, name: str, publish: str, want: str) -> tuple[dict[str, str], list[Finding]]:
    """The record's tags, and a failure when v=, k= or p= rule out a key of type ``want`` (rsa, ed25519)."""
    found = tags(record)
    version = found.get("v")
    if version is not None and version != "DKIM1":
        return found, [Finding("dkim", "fail", name, f"v={version}: not a DKIM1 record", publish)]
    kind = found.get("k", "rsa").lower()
    if kind != want:
        label = "an RSA" if want == "rsa" else "an Ed25519"
        return found, [Finding("dkim", "fail", name, f"k={kind}, but key {spec.name} at this selector is {label} key", publish)]
    data = found.get("p")
    if data is None:
        return found, [Finding("dkim", "fail", name, "the record has no p= (public key)", publish)]
    if data == "":
        return found, [Finding("dkim", "fail", name, "p= is empty: the key is revoked", publish)]
    return found, []


def _testing_flag(found: dict[str, str], name: str) -> list[Finding]:
    flags = [f.strip().lower() for f in found.get("t", "").split(":")]
    if "y" in flags:
        return [
            Finding("dkim", "warn", name, "t=y (testing): receivers may treat failing and passing signatures alike",
                    "remove t=y from the record once signatures verify")
        ]  # fmt: skip
    return []


def _judge_ed25519(spec: KeySpec, key: LoadedKey, record: str, name: str, publish: str) -> list[Finding]:
    found, problem = _common(spec, record, name, publish, "ed25519")
    if problem:
        return problem
    assert key.ed25519_key is not None and spec.ed25519_key_file is not None  # only judged for a key that has one
    try:
        # RFC 8463 section 4: p= is the bare 32-byte key.
        public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(found["p"], validate=True))
    except (binascii.Error, ValueError) as exc:
        return [Finding("dkim", "fail", name, f"p= is not a 32-byte Ed25519 public key ({type(exc).__name__})", publish)]
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if public.public_bytes(*raw) != key.ed25519_key.public_key().public_bytes(*raw):
        return [
            Finding(
                "dkim", "fail", name,
                f"the published key is not the public half of {spec.ed25519_key_file} (key {spec.name}): every"
                " Ed25519 signature fails", publish + " (or point ed25519_key_file at the key that was published)",
            )
        ]  # fmt: skip
    return [Finding("dkim", "ok", name, f"published key matches {spec.ed25519_key_file} (Ed25519)"), *_testing_flag(found, name)]


def _judge(spec: KeySpec, key: LoadedKey, record: str, name: str, publish: str) -> list[Finding]:
    found, problem = _common(spec, record, name, publish, "rsa")
    if problem:
        return problem
    data = found["p"]
    try:
        public = serialization.load_der_public_key(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        return [Finding("dkim", "fail", name, f"p= does not parse as a public key ({type(exc).__name__})", publish)]
    if not isinstance(public, rsa.RSAPublicKey):
        return [Finding("dkim", "fail", name, f"p= holds a {type(public).__name__.lstrip('_')}, not an RSA key", publish)]
    if public.public_numbers() != key.private_key.public_key().public_numbers():
        return [
            Finding(
                "dkim", "fail", name,
                f"the published key is not the public half of {spec.key_file} (key {spec.name}): every signature fails",
                publish + " (or point key_file at the key that was published)",
            )
        ]  # fmt: skip
    findings = [Finding("dkim", "ok", name, f"published key matches {spec.key_file} ({public.key_size} bits)")]
    findings += _testing_flag(found, name)
    if public.key_size < RECOMMENDED_BITS:
        findings.append(
            Finding(
                "dkim", "warn", name, f"{public.key_size}-bit key, under the recommended {RECOMMENDED_BITS}",
                f"sendguard keygen {spec.domain} NEWSELECTOR, publish it, then switch signing.keys.{spec.name} to it",
            )
        )  # fmt: skip
    return findings
