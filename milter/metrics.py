"""The milter's Prometheus metrics (registered on the default registry at import).

Labels stay low-cardinality: outcome, reason, signing domain and selector (a
handful, from the config), key name. Never a queue id, address or URL.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "sendguard_milter_messages_total",
    "Messages by what the milter did: signed, passed (unsigned), refused, tempfailed (internal error), "
    "dropped (libmilter closed the connection in the headers).",
    ["outcome"],
)
SIGNATURES = Counter(
    "sendguard_milter_signatures_total",
    "DKIM signatures added, by signing domain (d=) and selector (s=).",
    ["domain", "selector"],
)
REFUSALS = Counter(
    "sendguard_milter_refusals_total",
    "Bulk messages refused because they would leave unsigned (or with a broken signature), by reason.",
    ["reason"],
)
PASSED_UNSIGNED = Counter(
    "sendguard_milter_passed_unsigned_total",
    "Non-bulk messages passed without a signature, by reason (not_in_scope is inbound mail).",
    ["reason"],
)
KEY_RELOADS = Counter(
    "sendguard_milter_key_reloads_total",
    "Key file reloads (SIGHUP or a changed file), by key name and result (ok, failed).",
    ["key", "result"],
)
CONFIG_RELOADS = Counter(
    "sendguard_milter_config_reloads_total",
    "Whole-configuration reloads on SIGHUP, by result (ok; failed: the running configuration kept).",
    ["result"],
)
KEY_FAULTY = Gauge(
    "sendguard_milter_key_faulty",
    "1 while a key's file fails its checks (the key loaded before still signs), 0 once it loads again.",
    ["key"],
)
PUBLISHED_KEY_CHECKS = Counter(
    "sendguard_milter_published_key_checks_total",
    "Checks of a key's DNS record against the key in service ([signing] verify_published_keys), by key and"
    " result (match, mismatch, lookup_failed).",
    ["key", "result"],
)
PUBLISHED_KEY_MISMATCH = Gauge(
    "sendguard_milter_published_key_mismatch",
    "1 while a key's published DNS record does not match the key in service (its bulk mail is refused), else 0.",
    ["key"],
)
INTERNAL_ERRORS = Counter(
    "sendguard_milter_internal_errors_total",
    "End-of-message failures inside the milter (answered with a temporary failure).",
)
EOM_SECONDS = Histogram(
    "sendguard_milter_eom_seconds",
    "Time spent at end of message: link rewriting, decision and signing.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

MESSAGE_ID_REPAIRED = Counter(
    "sendguard_milter_message_id_repaired_total",
    "Message-IDs written before signing ([milter] message_id_repair), by reason: missing, bad_host.",
    ["reason"],
)
TEXT_PARTS = Counter(
    "sendguard_milter_text_parts_total",
    "HTML-only messages given a text/plain part (outcome added), or left without one: broken_mime, too_large,"
    " empty (the HTML renders to no text).",
    ["outcome"],
)

def count_published_check(key: str, result: str) -> None:
    """PublishedKeyCheck observer: count one check and track whether the record matches."""
    PUBLISHED_KEY_CHECKS.labels(key=key, result=result).inc()
    if result in ("match", "mismatch"):
        PUBLISHED_KEY_MISMATCH.labels(key=key).set(1 if result == "mismatch" else 0)


def count_reload(key: str, result: str) -> None:
    """KeyStore observer: count one reload attempt and track whether the key's file is at fault."""
    KEY_RELOADS.labels(key=key, result=result).inc()
    if result in ("ok", "failed"):
        KEY_FAULTY.labels(key=key).set(1 if result == "failed" else 0)
