"""``sendguard keygen``: a new DKIM key pair, its DNS record, and the config block that signs with it.

The private key goes to ``DIR/DOMAIN.SELECTOR.pem`` (mode 0600, as
:func:`sendguard_milter.keys.load_key` demands: never world-readable), the
record to ``DIR/DOMAIN.SELECTOR.txt`` in zone-file form, split into quoted
strings a DNS TXT record can hold (each under 255 bytes, as ``opendkim-genkey``
writes it). Existing files are never replaced without ``force``: a new key
over a published one breaks every signature until the DNS catches up.
"""

from __future__ import annotations

import base64
import os
import pwd
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

#: Where keys go unless ``--dir`` says otherwise (the example config's key_file paths).
DEFAULT_DIR = Path("/etc/sendguard/keys")

#: The system user the services run as (the Debian package's and the container's).
SERVICE_USER = "sendguard"

#: One character-string of a TXT record holds at most 255 bytes; the zone text keeps well under.
TXT_CHUNK = 250

KEY_TYPES = ("rsa", "ed25519")


class KeygenError(Exception):
    """A key that could not be written: the message says which file and why."""


@dataclass(frozen=True)
class GeneratedKey:
    """What :func:`generate` wrote, and what to publish and paste."""

    domain: str
    selector: str
    key_type: str
    bits: int
    key_file: Path
    txt_file: Path
    #: The TXT value to publish (one string; DNS tools split it themselves).
    txt_value: str
    #: The same record as zone-file text, split into quoted strings.
    zone_text: str

    @property
    def record_name(self) -> str:
        """The owner name of the record, fully qualified."""
        return f"{self.selector}._domainkey.{self.domain}."


def txt_value(public_key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The DKIM TXT value (``v=DKIM1; k=...; p=...``) for a public key."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        # RFC 8463: p= is the bare 32-byte key, not a SubjectPublicKeyInfo.
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def zone_text(name: str, value: str) -> str:
    """``value`` as a zone-file TXT record at ``name``, each quoted string at most 250 bytes."""
    head, sep, key = value.partition("p=")
    parts = [head] if sep else [value]
    if sep:
        data = "p=" + key
        parts += [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)]
    quoted = "\n\t".join(f'"{p}"' for p in parts)
    return f"{name}\tIN\tTXT\t( {quoted} )\n"


def _private_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _service_owner() -> tuple[int, int] | None:
    """(uid, gid) of the service user when running as root and it exists; else None (leave the owner)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Write by rename, so a reader (the milter's key watcher) never sees half a key."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def generate(
    domain: str, selector: str, directory: Path = DEFAULT_DIR, key_type: str = "rsa", bits: int = 2048, force: bool = False
) -> GeneratedKey:
    """Generate a key pair for ``selector._domainkey.domain`` and write its key and record files.

    Raises :class:`KeygenError` when a file exists (and not ``force``), the
    directory cannot be written, or the type or size is not one sendguard signs with.
    """
    if key_type not in KEY_TYPES:
        raise KeygenError(f"unknown key type {key_type!r} (rsa or ed25519)")
    if key_type == "rsa" and not 1024 <= bits <= 8192:
        raise KeygenError(f"--bits {bits}: an RSA key must have 1024 to 8192 bits (2048 recommended)")
    key_file = directory / f"{domain}.{selector}.pem"
    txt_file = directory / f"{domain}.{selector}.txt"
    if not force:
        for path in (key_file, txt_file):
            if path.exists():
                raise KeygenError(f"{path} exists; not replacing a key that may be published (use --force)")
    owner = _service_owner()
    try:
        if not directory.is_dir():
            directory.mkdir(mode=0o750, parents=True)
            if owner is not None:
                # A root-owned 0750 folder would keep the service user from the key it owns.
                os.chown(directory, *owner)
    except OSError as exc:
        raise KeygenError(f"cannot create {directory}: {exc.strerror or exc}") from None
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        bits = 256
    value = txt_value(private.public_key())
    name = f"{selector}._domainkey.{domain}."
    text = zone_text(name, value)
    try:
        _write(key_file, _private_pem(private), 0o600, owner)
        _write(txt_file, text.encode("ascii"), 0o644, owner)
    except OSError as exc:
        raise KeygenError(f"cannot write into {directory}: {exc.strerror or exc}") from None
    return GeneratedKey(
        domain=domain, selector=selector, key_type=key_type, bits=bits,
        key_file=key_file, txt_file=txt_file, txt_value=value, zone_text=text,
    )  # fmt: skip


def config_block(key: GeneratedKey, name: str | None) -> str:
    """What to paste into the config to sign with ``key``.

    For an RSA key, the ``[signing.keys.NAME]`` table and its ``[signing.table]``
    row. An Ed25519 key signs beside the RSA key of an entry, never alone
    (receivers that do not know ed25519-sha256 would find the mail unsigned),
    so for it the two keys to add to that entry (``name``, when known).
    """
    if key.key_type == "ed25519":
        entry = f"[signing.keys.{name}]" if name else "the [signing.keys.NAME] entry"
        return (
            f"# add to {entry} that signs d={key.domain} with RSA (its RSA signature stays the first):\n"
            f'ed25519_selector = "{key.selector}"\n'
            f'ed25519_key_file = "{key.key_file}"\n'
        )
    lines = [
        f"[signing.keys.{name or key.selector}]",
        f'domain = "{key.domain}"',
        f'selector = "{key.selector}"',
        f'key_file = "{key.key_file}"',
        "",
        "[signing.table]  # add the row to your table if the file has one",
        f'"{key.domain}" = "{name or key.selector}"',
    ]
    return "\n".join(lines) + "\n"
