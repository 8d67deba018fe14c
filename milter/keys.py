"""DKIM private keys: loading, the checks that stop start-up, and live reloading.

A key is checked the same way at start-up and on every reload: it must be
readable, neither world-readable nor world-writable, in no directory that
anyone may rename it out of (:func:`unsafe_directory`), an RSA key of at least 1024 bits in PEM form
(PKCS#1 or PKCS#8, unencrypted). An entry may add an Ed25519 key (``ed25519_key_file``,
PKCS#8 PEM, the same file checks): the two load and reload as one, so a message
never leaves with a new RSA key beside an old Ed25519 one half-way through a
rotation of both. At start-up a failure is a config error; on a
reload (SIGHUP or a changed file) a failure keeps the old key in service and is
logged and counted, so a half-written key file can never stop signing.
"""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sendguard import logs
from sendguard.config_reader import ConfigError

#: While a key file keeps failing the periodic check, how often the fault is logged again.
FAULT_REMINDER_SECONDS = 600.0

#: The shortest RSA key accepted (RFC 8301 makes 1024 the floor for verifiers).
MIN_KEY_BITS = 1024

log = logs.get("milter")


class KeyLoadError(Exception):
    """A key file that cannot serve: the message names the file and the reason."""

    #: The ``[signing.keys.NAME]`` whose file failed, when known (set at start-up).
    key_name: str = ""
    #: Which of its keys: ``key_file`` (RSA) or ``ed25519_key_file``.
    field: str = "key_file"


@dataclass(frozen=True)
class KeySpec:
    """One ``[signing.keys.NAME]`` entry: which key file signs as which d= and s=."""

    name: str
    domain: str
    selector: str
    key_file: Path
    algorithm: str = "rsa-sha256"
    #: The selector of the Ed25519 signature (its own record: one DNS record holds one key).
    ed25519_selector: str | None = None
    #: The Ed25519 key that signs beside the RSA key (RFC 8463), when set.
    ed25519_key_file: Path | None = None

    def files(self) -> tuple[Path, ...]:
        """The key files of this entry: the RSA key's, then the Ed25519 key's if any."""
        return (self.key_file,) if self.ed25519_key_file is None else (self.key_file, self.ed25519_key_file)


@dataclass(frozen=True)
class LoadedKey:
    """A key that passed every check, ready to sign."""

    spec: KeySpec
    private_key: rsa.RSAPrivateKey
    bits: int
    #: (device, inode, size, mtime_ns) of the file when it was read: a change means reload.
    file_id: tuple[int, int, int, int]
    #: The Ed25519 key of ``spec.ed25519_key_file`` (None when the entry has none).
    ed25519_key: ed25519.Ed25519PrivateKey | None = None
    #: The same for the Ed25519 key file.
    ed25519_file_id: tuple[int, int, int, int] | None = None

    @property
    def file_ids(self) -> tuple[tuple[int, int, int, int], ...]:
        """The ids of :meth:`KeySpec.files`, in that order."""
        return (self.file_id,) if self.ed25519_file_id is None else (self.file_id, self.ed25519_file_id)

    def signers(self) -> list[tuple[str, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey]]:
        """(selector, key) of each signature this key makes, RSA first (it goes on top)."""
        out: list[tuple[str, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey]] = [(self.spec.selector, self.private_key)]
        if self.ed25519_key is not None and self.spec.ed25519_selector is not None:
            out.append((self.spec.ed25519_selector, self.ed25519_key))
        return out

    def dns_txt(self) -> str:
        """The TXT record to publish at ``SELECTOR._domainkey.DOMAIN``."""
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")

    def ed25519_dns_txt(self) -> str | None:
        """The TXT record to publish at ``ED25519_SELECTOR._domainkey.DOMAIN`` (None without an Ed25519 key).

        RFC 8463 section 4: p= is the bare 32-byte public key, not a SubjectPublicKeyInfo as for RSA.
        """
        if self.ed25519_key is None:
            return None
        raw = self.ed25519_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def _file_id(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_key(spec: KeySpec) -> LoadedKey:
    """Read and check the key file(s) of ``spec``; raise :class:`KeyLoadError` with the reason and field."""
    path = spec.key_file
    key, st = _read_private_key(path)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyLoadError(f"key file {path} holds a {type(key).__name__.lstrip('_')}, not an RSA key")
    if key.key_size < MIN_KEY_BITS:
        raise KeyLoadError(f"key file {path} holds a {key.key_size}-bit RSA key; at least {MIN_KEY_BITS} bits are required")
    second: ed25519.Ed25519PrivateKey | None = None
    second_id: tuple[int, int, int, int] | None = None
    if spec.ed25519_key_file is not None:
        try:
            other, other_st = _read_private_key(spec.ed25519_key_file)
            if not isinstance(other, ed25519.Ed25519PrivateKey):
                raise KeyLoadError(
                    f"key file {spec.ed25519_key_file} holds a {type(other).__name__.lstrip('_')}, not an Ed25519 key"
                    " (sendguard keygen --type ed25519 writes one)"
                )
        except KeyLoadError as exc:
            exc.field = "ed25519_key_file"
            raise
        second, second_id = other, _file_id(other_st)
    return LoadedKey(
        spec=spec, private_key=key, bits=key.key_size, file_id=_file_id(st), ed25519_key=second, ed25519_file_id=second_id
    )


def _read_private_key(path: Path) -> tuple[PrivateKeyTypes, os.stat_result]:
    """The private key in the PEM file at ``path`` (any type) after the file checks, with the file's stat."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except FileNotFoundError:
        raise KeyLoadError(f"key file {path} does not exist") from None
    except PermissionError:
        raise KeyLoadError(f"key file {path} is not readable by this user (uid {os.getuid()})") from None
    except OSError as exc:
        raise KeyLoadError(f"key file {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyLoadError(f"key file {path} is not a regular file")
    if st.st_mode & stat.S_IROTH:
        # A private key anyone on the host can read is a key anyone can sign with.
        raise KeyLoadError(f"key file {path} is world-readable (mode {stat.S_IMODE(st.st_mode):04o}); chmod o-rwx {path}")
    if st.st_mode & stat.S_IWOTH:
        # Anyone could write their own key into it, and we would sign their mail with it.
        raise KeyLoadError(f"key file {path} is world-writable (mode {stat.S_IMODE(st.st_mode):04o}); chmod o-rwx {path}")
    unsafe = unsafe_directory(path)
    if unsafe is not None:
        directory, mode = unsafe
        raise KeyLoadError(
            f"key file {path} is inside the world-writable directory {directory} (mode {mode:04o}), "
            f"where anyone can put another key in its place; chmod o-w {directory}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyLoadError(f"key file {path} is encrypted; sendguard needs an unencrypted PEM key") from None
    except Exception as exc:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise KeyLoadError(f"key file {path} does not hold a PEM private key ({type(exc).__name__})") from None
    return key, st


def unsafe_directory(path: Path) -> tuple[Path, int] | None:
    """The first directory above ``path`` in which anyone may replace it, with its mode; None if none.

    As OpenDKIM's ``RequireSafeKeys`` judges a key's path, every directory up
    to ``/`` counts, along the path as written and along the path its symlinks
    resolve to. A world-writable directory lets anyone rename the key away and
    put their own in its place, unless it has the sticky bit (``/tmp``): there
    only an entry's owner may rename or remove it.
    """
    absolute = Path(os.path.abspath(path))
    seen: set[Path] = set()
    for start in (absolute, Path(os.path.realpath(absolute))):
        for directory in start.parents:
            if directory in seen:
                continue
            seen.add(directory)
            try:
                mode = os.stat(directory).st_mode
            except OSError:
                continue  # the file was just read through it; a race is judged on the next load
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                return directory, stat.S_IMODE(mode)
    return None


ReloadObserver = Callable[[str, str], None]  # (key name, result: "ok" | "failed" | "unchanged")


@dataclass
class _Fault:
    """A key file that keeps failing: what is wrong, since when, and when it was last logged."""

    reason: str
    since: float
    logged: float
    checks: int = 1


class KeyStore:
    """The keys in service, by name; reloadable while the milter keeps running.

    Readers take a reference to a :class:`LoadedKey` (immutable) and sign with
    it; a reload swaps in a new object, so a message in flight finishes with the
    key it started with and no connection is ever dropped.
    """

    def __init__(
        self,
        specs: Iterable[KeySpec],
        observer: ReloadObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        reminder: float = FAULT_REMINDER_SECONDS,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._reminder = reminder
        self._faults: dict[str, _Fault] = {}
        self._specs = {spec.name: spec for spec in specs}
        self._observer = observer
        keys: dict[str, LoadedKey] = {}
        for spec in self._specs.values():
            try:
                keys[spec.name] = load_key(spec)  # at start-up every failure is fatal
            except KeyLoadError as exc:
                exc.key_name = spec.name
                raise
        self._keys = keys
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def get(self, name: str) -> LoadedKey | None:
        """The key in service under ``name`` (None if it never loaded)."""
        return self._keys.get(name)

    def names(self) -> list[str]:
        """Every configured key name."""
        return list(self._specs)

    def reload(self, only_changed: bool = False) -> dict[str, str]:
        """Re-read the key files; keep the old key when a new one fails. Returns name -> result."""
        results: dict[str, str] = {}
        with self._lock:
            keys = dict(self._keys)
            for name, spec in self._specs.items():
                old = keys.get(name)
                if only_changed and old is not None and name not in self._faults:  # a fault is rechecked until it clears
                    try:
                        if tuple(_file_id(os.stat(f)) for f in spec.files()) == old.file_ids:
                            continue
                    except OSError:
                        pass  # gone or unreadable: load_key below says why
                try:
                    new = load_key(spec)
                except KeyLoadError as exc:
                    results[name] = "failed"
                    self._log_failure(name, str(exc), kept=old is not None, asked=not only_changed)
                    continue
                keys[name] = new
                results[name] = "ok"
                fault = self._faults.pop(name, None)
                if fault is not None:
                    log.warning(
                        "key %s: fault cleared after %.0f s (%d failed checks): %s",
                        name, self._clock() - fault.since, fault.checks, fault.reason,
                    )  # fmt: skip
                log.info("key %s: reloaded %s (%d bits, d=%s s=%s)", name, spec.key_file, new.bits, spec.domain, spec.selector)
                if spec.ed25519_key_file is not None:
                    log.info("key %s: reloaded %s (Ed25519, d=%s s=%s)", name, spec.ed25519_key_file, spec.domain,
                             spec.ed25519_selector)  # fmt: skip
            self._keys = keys
        if self._observer is not None:
            for name, result in results.items():
                self._observer(name, result)
        return results

    def faults(self) -> dict[str, str]:
        """The keys whose file failed its last check, with the reason (the old key, if any, still signs)."""
        with self._lock:
            return {name: fault.reason for name, fault in self._faults.items()}

    def _log_failure(self, name: str, reason: str, kept: bool, asked: bool) -> None:
        """Log a failed load once when the fault starts or changes, then as a reminder every few minutes.

        The periodic check runs every few seconds; a key file that stays missing
        must not fill the log with one ERROR per check. An explicit reload
        (SIGHUP) always gets its line: the operator is waiting for it.
        """
        now = self._clock()
        keeping = "keeping the key loaded before" if kept else "no key is loaded"
        fault = self._faults.get(name)
        if fault is None or fault.reason != reason:
            self._faults[name] = _Fault(reason, since=now, logged=now)
            log.error("key %s: reload failed, %s: %s", name, keeping, reason)
            return
        fault.checks += 1
        if asked or now - fault.logged >= self._reminder:
            fault.logged = now
            log.error(
                "key %s: still failing after %.0f s (%d checks), %s: %s",
                name, now - fault.since, fault.checks, keeping, reason,
            )  # fmt: skip

    def watch(self, interval: float) -> None:
        """Start a daemon thread that reloads keys whose files changed, every ``interval`` seconds."""
        if interval <= 0 or self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reload(only_changed=True)
                except Exception:  # never let the watcher die silently
                    log.exception("key watcher: unexpected error")

        self._watcher = threading.Thread(target=loop, name="sendguard-key-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()


def open_keys(specs: Iterable[KeySpec], file: str, observer: ReloadObserver | None = None) -> KeyStore:
    """Open every key file for service; a key that cannot serve stops start-up.

    The :class:`~sendguard.config_reader.ConfigError` names the config file and
    ``signing.keys.NAME.key_file`` (or ``.ed25519_key_file``), with the reason (missing, world-readable, too short ...).
    """
    try:
        return KeyStore(specs, observer=observer)
    except KeyLoadError as exc:
        raise ConfigError(file, f"signing.keys.{exc.key_name}.{exc.field}", str(exc)) from None
