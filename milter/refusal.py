"""Why bulk mail is refused, and the SMTP reply text that tells the operator what to fix.

Each reason has a stable name (the ``reason`` label of
``sendguard_milter_refusals_total`` and the word in the log line) and a text
template. The reply always starts ``bulk mail from CLIENT would leave unsigned:``
(or ``... with a broken signature:``) so a grep over the mail log finds every one.
"""

from __future__ import annotations

from dataclasses import dataclass

#: reason -> what the operator should do, appended to the reply text.
FIXES = {
    "client_not_trusted": "add the address to [milter] trusted_hosts or have the client authenticate with SASL",
    "no_signing_key": "add a [signing.table] row and key for that domain",
    "key_unavailable": "fix the key file named in the sendguard log, then reload with SIGHUP",
    "published_key_mismatch": "publish the key's record (sendguard dns-check prints it) or restore the key that matches it",
    "from_missing": "the message needs exactly one From header",
    "from_duplicated": "the message needs exactly one From header",
    "from_unparseable": "the From header needs one address of the form user@domain",
    "signing_error": "see the sendguard log line for this queue id",
    "long_line": "encode the part quoted-printable or base64 (lines of at most 998 bytes)",
}

#: Every refusal reason, in the order the decision checks them.
REASONS = tuple(FIXES)

#: The reply when the milter cannot decide (an exception of its own): temporary, so nothing is lost.
INTERNAL_ERROR = ("451", "4.3.0", "sendguard milter internal error, try again later")


@dataclass(frozen=True)
class Refusal:
    """A refusal: the reason's name, the detail (what exactly is wrong) and the reply."""

    reason: str
    detail: str
    client: str

    def text(self) -> str:
        """The SMTP reply text (without code): what is wrong and what to fix."""
        what = "with a broken signature" if self.reason == "long_line" else "unsigned"
        return f"bulk mail from {self.client} would leave {what}: {self.detail} ({FIXES[self.reason]})"


def reply_args(refusal: Refusal, code: int, xcode: str) -> tuple[str, str, str]:
    """(rcode, xcode, text) for ``Milter.Base.setreply``; '%' doubled as libmilter requires."""
    text = refusal.text().replace("%", "%%")
    # An SMTP reply line must be printable ASCII; a From domain might not be.
    text = text.encode("ascii", "backslashreplace").decode("ascii").replace("\r", " ").replace("\n", " ")
    return str(code), xcode, text
