"""The DKIM record of each signing key: published, parseable, and the public half of the key file.

As ``opendkim-testkey`` does: a record that exists but holds another key
(an old selector's, a key regenerated without republishing) fails every
signature at every receiver, while the milter itself sees nothing wrong.
"""

from __future__ import annotations

import base64
import binascii

import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .dns_records import Finding, LookupFailed, lookup, tags
from .keys import KeyLoadError, KeySpec, LoadedKey, load_key

#: Below this, receivers increasingly treat the signature as weak (RFC 8301 recommends 2048).
RECOMMENDED_BITS = 2048


def record_name(spec: KeySpec) -> str:
    """Where the key's record lives: ``SELECTOR._domainkey.DOMAIN``."""
    return f"{spec.selector}._domainkey.{spec.domain}"


def check_key(spec: KeySpec, resolver: dns.resolver.Resolver) -> list[Finding]:
    """The findings for one ``[signing.keys.NAME]``: its record, the key match, and DNSSEC."""
    name = record_name(spec)
    where = f"signing.keys.{spec.name}.key_file"
    try:
        key = load_key(spec)
    except KeyLoadError as exc:
        return [Finding("dkim", "fail", name, f"{where}: {exc}", "fix the key file (sendguard check-config says the same)")]
    try:
        return published_findings(spec, key, resolver)
    except LookupFailed as exc:
        return [Finding("dkim", "fail", name, f"lookup failed: {exc}", "check the nameserver answers for the domain")]


def published_findings(spec: KeySpec, key: LoadedKey, resolver: dns.resolver.Resolver) -> list[Finding]:
    """The findings for the record of ``key`` (already loaded); raise LookupFailed when DNS cannot answer."""
    name = record_name(spec)
    publish = f"publish TXT {name} \"{key.dns_txt()}\""
    answer = lookup(resolver, name, "TXT")
    records = [t for t in answer.texts if "p=" in t or t.lower().startswith("v=dkim1")]
    if not records:
        return [Finding("dkim", "fail", name, f"no DKIM record (key {spec.name})", publish)]
    if len(records) > 1:
        return [Finding("dkim", "fail", name, f"{len(records)} DKIM records: receivers may pick either", f"keep one: {publish}")]
    findings = _judge(spec, key, records[0], name, publish)
    if answer.authenticated:
        findings.append(Finding("dnssec", "ok", name, "the resolver validated the record (AD flag set)"))
    else:
        findings.append(Finding("dnssec", "info", name, "not validated by DNSSEC (no AD flag from the resolver)"))
    return findings


def _judge(spec: KeySpec, key: LoadedKey, record: str, name: str, publish: str) -> list[Finding]:
    found = tags(record)
    version = found.get("v")
    if version is not None and version != "DKIM1":
        return [Finding("dkim", "fail", name, f"v={version}: not a DKIM1 record", publish)]
    kind = found.get("k", "rsa").lower()
    if kind != "rsa":
        return [Finding("dkim", "fail", name, f"k={kind}, but key {spec.name} is an RSA key", publish)]
    data = found.get("p")
    if data is None:
        return [Finding("dkim", "fail", name, "the record has no p= (public key)", publish)]
    if data == "":
        return [Finding("dkim", "fail", name, "p= is empty: the key is revoked", publish)]
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
    flags = [f.strip().lower() for f in found.get("t", "").split(":")]
    if "y" in flags:
        findings.append(
            Finding("dkim", "warn", name, "t=y (testing): receivers may treat failing and passing signatures alike",
                    "remove t=y from the record once signatures verify")
        )  # fmt: skip
    if public.key_size < RECOMMENDED_BITS:
        findings.append(
            Finding(
                "dkim", "warn", name, f"{public.key_size}-bit key, under the recommended {RECOMMENDED_BITS}",
                f"sendguard keygen {spec.domain} NEWSELECTOR, publish it, then switch signing.keys.{spec.name} to it",
            )
        )  # fmt: skip
    return findings
