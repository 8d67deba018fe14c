"""DKIM signing on raw bytes: dkimpy's canonicalization and layout, OpenSSL's RSA and Ed25519.

dkimpy computes RSA in pure Python (milliseconds per 2048-bit signature). This
module follows dkimpy's signer step for step — same parsing, canonicalization,
tag order, folding and header hash, from dkimpy's own functions — and replaces
the final RSASSA-PKCS1-v1_5 step with OpenSSL through ``cryptography``. Two
steps that cost milliseconds on a large body give the same bytes by cheaper
means: :func:`relaxed_body` (body canonicalization) and :func:`_parse` (the
header/body split). PKCS#1 v1.5 is deterministic, so the DKIM-Signature header
is byte-identical to what ``dkim.sign`` returns for the same message, key,
header list and time (``tests/milter/test_milter_dkim_identity.py`` proves it,
and checks both replaced steps against dkimpy's own functions).

Signing policy fixed here: rsa-sha256 (and ed25519-sha256 beside it, RFC 8463),
relaxed/relaxed, no l= tag. :func:`sign_all` makes several signatures of one
message from one body hash: a key entry with an Ed25519 key signs twice.
"""

# Why dkimpy is pinned to one minor series (pyproject.toml: dkimpy>=1.1.8,<1.2)
# rather than these steps rewritten here: the names below are outside dkimpy's
# __all__ (fold, RE_BTAG, hash_headers, rfc822_parse, and dkim.canonicalization's
# CanonicalizationPolicy, correct_empty_body, strip_trailing_lines). Using them is
# what makes this signer dkimpy's signer with another RSA: the header parser, the
# header canonicalization and selection, the folding and the b= handling stay
# dkimpy's long-used code, not a second reading of RFC 6376 of our own, where a
# slip shows only as signatures that fail at the receiving end.
# The price is that a dkimpy release may change them, so the bound admits only
# the series tested, and tests/milter/test_milter_dkim_identity.py fails the
# moment one of them is gone or gives other bytes: our header must stay equal,
# byte for byte, to dkim.sign's (public API) for every message and header set
# there. Raising the bound means running that test against the new release.

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Sequence

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, correct_empty_body, strip_trailing_lines

#: c= of every signature: relaxed headers survive refolding, relaxed body survives trailing-space edits.
CANONICALIZATION = (b"relaxed", b"relaxed")

#: Headers a signer must never cover: they change in transit or carry secrets.
NEVER_SIGN = frozenset(h.decode() for h in dkim.DKIM.SHOULD_NOT)


_SPACE_RUN = re.compile(b"  +")
# The first empty line, where dkimpy's rfc822_parse ends the headers (lines end in CRLF or LF).
_BLANK_LINE = re.compile(rb"\A\r?\n|\n\r?\n")


#: A private key the signer takes: its type chooses a= (rsa-sha256 or ed25519-sha256).
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def algorithm(private_key: PrivateKey) -> bytes:
    """The a= value a signature made with ``private_key`` carries."""
    return b"ed25519-sha256" if isinstance(private_key, ed25519.Ed25519PrivateKey) else b"rsa-sha256"


class SigningError(Exception):
    """The message cannot be signed (unparseable header block, bad header list)."""


def header_list(
    header_names: Sequence[bytes | str], signed: Sequence[str], oversigned: Sequence[str]
) -> list[bytes]:
    """The h= list: each ``signed`` (and ``oversigned``) header once per occurrence, then each ``oversigned`` once more.

    Listing a header one more time than it occurs (oversigning) makes the
    signature fail if anyone adds another instance — a second From above ours
    cannot slip through.
    """
    counts: dict[str, int] = {}
    for name in header_names:
        key = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).lower()
        counts[key] = counts.get(key, 0) + 1
    out: list[bytes] = []
    # An oversigned header is also signed: every instance present, then one more.
    wanted = list(dict.fromkeys(n.lower() for n in (*signed, *oversigned)))
    for key in wanted:
        out.extend([key.encode("ascii")] * counts.get(key, 0))
    for name in oversigned:
        out.append(name.lower().encode("ascii"))
    return out


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 relaxed body canonicalization, byte for byte what dkimpy's ``Relaxed`` gives.

    dkimpy substitutes every run of white space with a regular expression, one
    replacement per space: about 10 ms for a 200 KB message (0.4 ms here), most
    of the milter's end of message. Here tabs become spaces, only runs of two
    or more spaces go through a regular expression, and the single space a run
    left before a CRLF is dropped — the same result, with dkimpy's own
    functions for the trailing empty lines.
    """
    return correct_empty_body(strip_trailing_lines(relaxed_lines(body)))


#: Body canonicalization and hashing go this many bytes (to the next line end) at a time,
#: so that a 10 MB body costs a megabyte of copies, not three whole copies.
HASH_PIECE = 1 << 20

_CRLF = b"\r\n"


def _trailing_crlfs(data: bytes) -> int:
    """How many CRLF pairs ``data`` ends with."""
    end = len(data)
    while end >= 2 and data[end - 2 : end] == _CRLF:
        end -= 2
    return (len(data) - end) // 2


def relaxed_body_hash(body: bytes, piece: int = HASH_PIECE) -> bytes:
    """SHA-256 of ``relaxed_body(body)``, canonicalized ``piece`` bytes (to a line end) at a time.

    Every step of the relaxed body canonicalization works inside one line, so
    pieces cut after a LF canonicalize independently; only the empty lines at
    the very end are dropped, so a run of them is held back until a line with
    content follows (or the body ends).
    """
    hasher = hashlib.sha256()
    held = b""  # canonical empty lines that may turn out to be the trailing ones
    emitted = False
    pos, size = 0, len(body)
    while pos < size:
        end = min(pos + piece, size)
        if end < size:
            newline = body.rfind(b"\n", pos, end)
            if newline < 0:
                newline = body.find(b"\n", end)
            end = size if newline < 0 else newline + 1
        canon = relaxed_lines(body[pos:end])
        pos = end
        if not canon:
            continue
        pairs = _trailing_crlfs(canon)
        if pairs * 2 == len(canon):  # only empty lines
            held += canon
            continue
        keep = len(canon) - 2 * pairs
        hasher.update(held + canon[:keep])
        held = canon[keep:]
        emitted = True
    if emitted:
        hasher.update(_CRLF)  # one line end after the last line with content; the rest are dropped
    return hasher.digest()


def relaxed_lines(data: bytes) -> bytes:
    """The relaxed body canonicalization of ``data`` without the treatment of trailing empty lines."""
    text = data.replace(b"\t", b" ")
    if b"  " in text:
        text = _SPACE_RUN.sub(b" ", text)
    return text.replace(b" \r\n", b"\r\n")


def _parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse(message)``, without splitting the whole body into lines.

    dkimpy splits the message at every line end and joins the body again with
    CRLF; the milter's body has CRLF line ends already, so only the header
    section is handed to dkimpy and the body is taken as it is.
    """
    blank = _BLANK_LINE.search(message)
    if blank is None:  # no body: dkimpy's own answer
        return dkim.rfc822_parse(message)
    headers, _ = dkim.rfc822_parse(message[: blank.end()])
    body = message[blank.end() :]
    if body.count(b"\n") != body.count(b"\r\n"):  # a bare LF: line ends as dkimpy makes them
        body = b"\r\n".join(re.split(b"\r?\n", body))
    return headers, body


def sign(
    message: bytes,
    *,
    domain: str,
    selector: str,
    private_key: PrivateKey,
    include_headers: Sequence[bytes],
    timestamp: int | None = None,
) -> bytes:
    """Return the ``DKIM-Signature: ...\\r\\n`` header line for ``message`` (CRLF or LF line ends).

    Byte-identical to ``dkim.sign(message, selector, domain, pem,
    canonicalize=(b"relaxed", b"relaxed"), include_headers=include_headers)``
    at the same ``timestamp``.
    """
    headers, body = _parse_message(message)
    return _signatures(headers, body, domain, [(selector, private_key)], include_headers, timestamp)[0]


def _parse_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    try:
        return _parse(message)
    except dkim.MessageFormatError as exc:
        raise SigningError(f"unparseable header block: {exc}") from None


def sign_parts(
    header_block: bytes,
    body: bytes,
    *,
    domain: str,
    selector: str,
    private_key: PrivateKey,
    include_headers: Sequence[bytes],
    timestamp: int | None = None,
) -> bytes:
    """:func:`sign` of ``header_block + b"\\r\\n" + body``, without ever joining the two.

    The milter holds a large body once; putting the header block in front of
    it would copy it once more, and splitting them again once more after that.
    ``header_block`` is the header section with each field ending in CRLF.
    """
    return sign_all(header_block, body, domain=domain, signers=[(selector, private_key)],
                    include_headers=include_headers, timestamp=timestamp)[0]  # fmt: skip


def sign_all(
    header_block: bytes,
    body: bytes,
    *,
    domain: str,
    signers: Sequence[tuple[str, PrivateKey]],
    include_headers: Sequence[bytes],
    timestamp: int | None = None,
) -> list[bytes]:
    """One ``DKIM-Signature`` header line per ``(selector, key)`` in ``signers``, in that order.

    As :func:`sign_parts` for each, but the body is canonicalized and hashed
    once for all of them: every signature here has the same c= and no l=, so
    they share bh=. The header hash input differs only in each signature's own
    DKIM-Signature field; none covers another (DKIM-Signature is never in h=).
    """
    head = header_block + _CRLF
    blank = _BLANK_LINE.search(head)
    if blank is None or blank.end() != len(head):
        # An empty line inside the header block: dkimpy ends the headers there, so must we.
        headers, body = _parse_message(head + body)
    else:
        try:
            headers, _ = dkim.rfc822_parse(head)
        except dkim.MessageFormatError as exc:
            raise SigningError(f"unparseable header block: {exc}") from None
        if body.count(b"\n") != body.count(_CRLF):  # a bare LF: line ends as dkimpy makes them
            body = _CRLF.join(re.split(b"\r?\n", body))
    return _signatures(headers, body, domain, signers, include_headers, timestamp)


def _signatures(
    headers: list[list[bytes]],
    body: bytes,
    domain: str,
    signers: Sequence[tuple[str, PrivateKey]],
    include_headers: Sequence[bytes],
    timestamp: int | None,
) -> list[bytes]:
    include = tuple(h.lower() for h in include_headers)
    if b"from" not in include:
        raise SigningError("the From header field must be signed")
    bad = sorted(h.decode() for h in set(include) & set(dkim.DKIM.SHOULD_NOT))
    if bad:
        raise SigningError(f"header field {bad[0]} must not be signed")
    policy = CanonicalizationPolicy.from_c_value(b"/".join(CANONICALIZATION))
    body_hash = base64.b64encode(relaxed_body_hash(body))  # c= .../relaxed
    when = int(time.time()) if timestamp is None else int(timestamp)
    canonical = policy.canonicalize_headers(headers)
    return [_signature(canonical, policy, body_hash, domain, selector, key, include, when) for selector, key in signers]


def _signature(
    canonical: list[tuple[bytes, bytes]],
    policy: CanonicalizationPolicy,
    body_hash: bytes,
    domain: str,
    selector: str,
    private_key: PrivateKey,
    include: tuple[bytes, ...],
    when: int,
) -> bytes:
    d = domain.encode("ascii")
    s = selector.encode("ascii")

    # Tag order and the 60-zero b= placeholder are dkimpy's: the placeholder
    # forces b= onto its own folded line, so adding the real value later
    # does not refold the tags before it (and the header hash stays valid).
    fields = [
        (b"v", b"1"),
        (b"a", algorithm(private_key)),
        (b"c", policy.to_c_value()),
        (b"d", d),
        (b"i", b"@" + d),
        (b"q", b"dns/txt"),
        (b"s", s),
        (b"t", str(when).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),
    ]
    name = b"DKIM-Signature"
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(name), linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)

    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, canonical, include, (name, b" " + value), None)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        # RFC 8463 section 3: PureEdDSA over the 32-byte SHA-256 of the header hash input, not over the input.
        signature = private_key.sign(hasher.digest())
    else:
        signature = private_key.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    fields[-1] = (b"b", base64.b64encode(signature))
    final = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(name), linesep=b"\r\n")
    return name + b": " + final
