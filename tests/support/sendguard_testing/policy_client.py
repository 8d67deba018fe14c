"""A policy client that talks as Postfix's smtpd does: for tests, the benchmark and manual checks.

:func:`postfix_request` builds the full attribute set Postfix 3.7 sends, in
its order (SMTPD_POLICY_README); :class:`PolicyClient` sends requests over one
connection and reads each ``action=`` reply, as smtpd's policy client does
(many requests per connection, one outstanding at a time).
"""

from __future__ import annotations

import socket

from sendguard_policyd.protocol import format_request

#: Postfix 3.7's attributes, in the order it sends them, with example values.
POSTFIX_37_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("request", "smtpd_access_policy"),
    ("protocol_state", "RCPT"),
    ("protocol_name", "ESMTP"),
    ("helo_name", "listmonk.example.net"),
    ("queue_id", ""),
    ("sender", "noreply@send.example.net"),
    ("recipient", "carrier@example.com"),
    ("recipient_count", "0"),
    ("client_address", "172.18.0.5"),
    ("client_name", "unknown"),
    ("reverse_client_name", "unknown"),
    ("instance", "1c2f.6554a1b2.8f3e1.0"),
    ("sasl_method", ""),
    ("sasl_username", ""),
    ("sasl_sender", ""),
    ("size", "0"),
    ("ccert_subject", ""),
    ("ccert_issuer", ""),
    ("ccert_fingerprint", ""),
    ("ccert_pubkey_fingerprint", ""),
    ("encryption_protocol", ""),
    ("encryption_cipher", ""),
    ("encryption_keysize", "0"),
    ("etrn_domain", ""),
    ("stress", ""),
    ("policy_context", ""),
    ("client_port", "40512"),
    ("server_address", "172.18.0.1"),
    ("server_port", "25"),
)


def postfix_request(**values: str) -> list[tuple[str, str]]:
    """The attributes of one request as Postfix 3.7 sends them, with ``values`` replacing the examples."""
    unknown = set(values) - {k for k, _ in POSTFIX_37_ATTRIBUTES}
    if unknown:
        raise ValueError(f"Postfix 3.7 sends no attribute {sorted(unknown)}")
    return [(k, str(values.get(k, v))) for k, v in POSTFIX_37_ATTRIBUTES]


def postfix_message(
    instance: str,
    queue_id: str,
    recipients: list[str],
    **values: str,
) -> list[list[tuple[str, str]]]:
    """The requests smtpd sends for one message: one RCPT per recipient, then END-OF-MESSAGE.

    As in Postfix, ``recipient`` is set at END-OF-MESSAGE only when the message has
    exactly one recipient, and ``recipient_count`` is 0 before DATA.
    """
    out = []
    for rcpt in recipients:
        out.append(postfix_request(protocol_state="RCPT", instance=instance, recipient=rcpt, **values))
    eom_rcpt = recipients[0] if len(recipients) == 1 else ""
    out.append(
        postfix_request(
            protocol_state="END-OF-MESSAGE",
            instance=instance,
            queue_id=queue_id,
            recipient=eom_rcpt,
            recipient_count=str(len(recipients)),
            **values,
        )
    )
    return out


class PolicyClient:
    """One connection to a policy daemon (TCP ``(host, port)`` or a unix socket path)."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 10.0) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self._buf = b""

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for malformed-input tests)."""
        self.sock.sendall(data)

    def read_reply(self) -> bytes:
        """Read one reply up to and including its empty line; b"" when the daemon closed first."""
        while b"\n\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                out, self._buf = self._buf, b""
                return out
            self._buf += chunk
        reply, _, self._buf = self._buf.partition(b"\n\n")
        return reply + b"\n\n"

    def ask(self, attrs: list[tuple[str, str]] | dict[str, str]) -> str:
        """Send one request and return the action text of its reply."""
        self.sock.sendall(format_request(attrs))
        reply = self.read_reply()
        if not reply.startswith(b"action="):
            raise ConnectionError(f"unexpected reply {reply[:80]!r}")
        return reply[len(b"action=") : -2].decode()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
