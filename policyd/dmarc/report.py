"""One DMARC aggregate report's XML, read into a :class:`Report`.

Both schemas receivers send are read: RFC 7489 appendix C (no namespace, what
most receivers still send) and the newer aggregate-reporting draft's
``urn:ietf:params:xml:ns:dmarc-2.0`` namespace (same element names, inside the
namespace). Element names are compared without their namespace, so any
namespace a receiver puts on them reads the same.

The XML comes from strangers: it is parsed with defusedxml, which refuses DTDs,
entity expansion and external references (billion laughs, XXE), before any
element is looked at.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring


class ReportError(ValueError):
    """The data is not a readable DMARC aggregate report (the reason is one line)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One ``<record>``: the messages one source IP sent, as the receiver evaluated them."""

    source_ip: str
    count: int
    #: ``policy_evaluated/dkim`` is ``pass``: a DKIM signature aligned with the From domain verified.
    dkim_aligned: bool
    #: ``policy_evaluated/spf`` is ``pass``: SPF passed for an aligned domain.
    spf_aligned: bool
    #: What the receiver did: none, quarantine or reject.
    disposition: str
    header_from: str

    @property
    def dmarc_pass(self) -> bool:
        """DMARC passes when DKIM or SPF passes aligned (RFC 7489 section 4.2)."""
        return self.dkim_aligned or self.spf_aligned


@dataclass(frozen=True, slots=True)
class Report:
    """One aggregate report: who sent it, its id, the policy it saw, its rows."""

    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    domain: str
    #: The published policy's ``p=``.
    policy: str
    rows: tuple[Row, ...]

    @property
    def messages(self) -> int:
        """Messages across every row."""
        return sum(r.count for r in self.rows)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(parent: ET.Element, name: str) -> ET.Element | None:
    for el in parent:
        if isinstance(el.tag, str) and _local(el.tag) == name:
            return el
    return None


def _children(parent: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in parent if isinstance(el.tag, str) and _local(el.tag) == name]


def _text(parent: ET.Element | None, *path: str, required: bool = False) -> str:
    el = parent
    for name in path:
        el = None if el is None else _child(el, name)
    value = (el.text or "").strip() if el is not None else ""
    if required and not value:
        raise ReportError(f"no <{'/'.join(path)}>")
    return value


def _int(parent: ET.Element | None, *path: str) -> int:
    value = _text(parent, *path, required=True)
    try:
        number = int(value)
    except ValueError:
        raise ReportError(f"<{'/'.join(path)}> is not a whole number: {value[:40]!r}") from None
    if number < 0:
        raise ReportError(f"<{'/'.join(path)}> is negative: {number}")
    return number


def _row(record: ET.Element) -> Row:
    row = _child(record, "row")
    if row is None:
        raise ReportError("a <record> without <row>")
    raw_ip = _text(row, "source_ip", required=True)
    try:
        ip = str(ipaddress.ip_address(raw_ip))
    except ValueError:
        raise ReportError(f"<source_ip> is not an IP address: {raw_ip[:60]!r}") from None
    evaluated = _child(row, "policy_evaluated")
    return Row(
        source_ip=ip,
        count=_int(row, "count"),
        dkim_aligned=_text(evaluated, "dkim").lower() == "pass",
        spf_aligned=_text(evaluated, "spf").lower() == "pass",
        disposition=_text(evaluated, "disposition").lower() or "none",
        header_from=_text(record, "identifiers", "header_from").lower(),
    )


def parse_report(data: bytes) -> Report:
    """Read an aggregate report; a :class:`ReportError` says why the data is not one."""
    try:
        root = fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise ReportError(f"refused XML: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise ReportError(f"not well-formed XML: {exc}") from None
    if _local(root.tag) != "feedback":
        raise ReportError(f"the root element is <{_local(root.tag)}>, not <feedback>")
    meta = _child(root, "report_metadata")
    if meta is None:
        raise ReportError("no <report_metadata>")
    records = _children(root, "record")
    return Report(
        org_name=_text(meta, "org_name", required=True),
        email=_text(meta, "email"),
        report_id=_text(meta, "report_id", required=True),
        begin=_int(meta, "date_range", "begin"),
        end=_int(meta, "date_range", "end"),
        domain=_text(root, "policy_published", "domain", required=True).lower(),
        policy=_text(root, "policy_published", "p").lower(),
        rows=tuple(_row(r) for r in records),
    )
