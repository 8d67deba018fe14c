"""``[signing] verify_published_keys``: the running milter re-checks each key's DNS record.

A record changed at the DNS provider, or a key file rotated without
republishing, makes every signature fail at every receiver while the milter
sees nothing wrong. With this on, a thread looks up each key's record (both,
for an entry with an Ed25519 key) every
``published_key_interval`` seconds and compares it with the key in service
(as ``sendguard dns-check`` does); while they differ, bulk mail that would be
signed with that key is refused (reason ``published_key_mismatch``) instead
of leaving with a signature no one can verify. A lookup that fails (timeout,
SERVFAIL) changes nothing: a DNS outage must not stop the mail.
"""

from __future__ import annotations

import threading
from typing import Callable

import dns.resolver

from sendguard import logs

from .dns_check_dkim import published_findings, record_name
from .dns_records import LookupFailed
from .keys import KeyStore

log = logs.get("milter")

#: (key name, result: "match" | "mismatch" | "lookup_failed")
CheckObserver = Callable[[str, str], None]


class PublishedKeyCheck:
    """Which keys' published records no longer match the key in service, kept current by a thread."""

    def __init__(self, keys: KeyStore, resolver: dns.resolver.Resolver, observer: CheckObserver | None = None) -> None:
        self._keys = keys
        self._resolver = resolver
        self._observer = observer
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def problem(self, name: str) -> str | None:
        """Why key ``name``'s published record does not match it (None while it matches or is unknown)."""
        return self._problems.get(name)

    def check_once(self) -> dict[str, str]:
        """Look up every key's record now; returns key name -> match, mismatch or lookup_failed."""
        results: dict[str, str] = {}
        for name in self._keys.names():
            key = self._keys.get(name)
            if key is None:
                continue
            where = record_name(key.spec)
            try:
                fails = [f for f in published_findings(key.spec, key, self._resolver) if f.level == "fail"]
            except LookupFailed as exc:
                results[name] = "lookup_failed"
                self._observe(name, "lookup_failed")
                log.warning("key %s: cannot check the record at %s (%s); keeping what the last check found", name, where, exc)
                continue
            results[name] = "mismatch" if fails else "match"
            with self._lock:
                problems = dict(self._problems)
                before = problems.get(name)
                if fails:
                    problems[name] = fails[0].message
                else:
                    problems.pop(name, None)
                self._problems = problems  # readers take the dict whole, without the lock
            self._observe(name, results[name])
            if fails and before != fails[0].message:
                # With an Ed25519 key the entry has two records; the finding names the one that differs.
                log.error(
                    "key %s: the record at %s does not match the key in service: %s; bulk mail signed with it is"
                    " refused until it does (fix: %s)", name, fails[0].record, fails[0].message, fails[0].fix,
                )  # fmt: skip
            elif not fails and before is not None:
                log.warning("key %s: the record at %s matches the key again; signing resumes", name, where)
        return results

    def _observe(self, name: str, result: str) -> None:
        if self._observer is not None:
            self._observer(name, result)

    def watch(self, interval: float) -> None:
        """Check now and then every ``interval`` seconds, on a daemon thread."""
        if self._thread is not None:
            return

        def loop() -> None:
            while True:
                try:
                    self.check_once()
                except Exception:  # never let the checker die silently
                    log.exception("published-key check: unexpected error")
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=loop, name="sendguard-published-keys", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
