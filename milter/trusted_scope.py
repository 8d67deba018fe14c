"""The signing scope: which clients' mail is ours to sign.

Stated in one place, the way OpenDKIM's InternalHosts works: a message is in
scope when its client address is inside ``trusted_hosts`` (default loopback
only; private ranges) or ``trusted_public_hosts`` (public addresses, each
acknowledged by being listed there), or the client authenticated with SASL, or
it was submitted locally with sendmail(1). Everything else is inbound mail and
is never signed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sendguard.addresses import IPNetwork, parse_client_address

#: The default scope: this host only.
LOOPBACK = ("127.0.0.0/8", "::1/128")


def is_local_submission(hostname: str | None, client_addr: str | None, client_port: int | None) -> bool:
    """Whether Postfix is replaying a sendmail(1)/pickup submission to its non_smtpd_milters.

    Postfix's cleanup presents such mail as client ``localhost``, address
    ``127.0.0.1``, port 0; a real SMTP connection never has port 0.
    """
    return hostname == "localhost" and client_addr == "127.0.0.1" and client_port == 0


@dataclass(frozen=True)
class ScopeResult:
    """Whether the client is in scope, and the one-phrase reason."""

    trusted: bool
    why: str


@dataclass(frozen=True)
class TrustedScope:
    """``[milter] trusted_hosts``, ``trusted_public_hosts``, ``trust_sasl`` and ``trust_local_submission``."""

    networks: tuple[IPNetwork, ...]
    #: ``trusted_public_hosts``: public networks the operator acknowledged one by one.
    public_networks: tuple[IPNetwork, ...] = ()
    trust_sasl: bool = True
    trust_local_submission: bool = True

    def check(self, client_addr: str | None, sasl_user: str | None = None, local: bool = False) -> ScopeResult:
        """Decide whether mail from this client is in the signing scope."""
        if local and self.trust_local_submission:
            return ScopeResult(True, "local submission (sendmail/pickup)")
        if sasl_user and self.trust_sasl:
            return ScopeResult(True, f"SASL authenticated as {sasl_user}")
        addr = parse_client_address(client_addr or "")
        if addr is not None:
            for key, nets in (("trusted_hosts", self.networks), ("trusted_public_hosts", self.public_networks)):
                for net in nets:
                    if addr.version == net.version and addr in net:
                        return ScopeResult(True, f"client {addr} in {key} {net}")
        if addr is None:
            return ScopeResult(False, f"client address {client_addr!r} unknown")
        return ScopeResult(False, "client not in trusted_hosts")
