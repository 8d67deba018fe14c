"""A tiny authoritative DNS answerer for TXT records, for OpenDKIM verification in tests.

Usage: dns_stub.py ZONEFILE  (lines: NAME<TAB>TXT). Listens on 127.0.0.1:53/udp
(inside the test's private network namespace) and touches ZONEFILE.ready once bound.
"""

import socket
import sys
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def chunks(value: str) -> list[str]:
    # A TXT character-string holds at most 255 bytes.
    return [value[i : i + 255] for i in range(0, len(value), 255)]


def main() -> None:
    zone = Path(sys.argv[1])
    records = {}
    for line in zone.read_text().splitlines():
        name, _, txt = line.partition("\t")
        records[name.rstrip(".").lower()] = txt
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    Path(str(zone) + ".ready").touch()
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            continue
        reply = dns.message.make_response(query)
        q = query.question[0]
        name = q.name.to_text().rstrip(".").lower()
        if q.rdtype == dns.rdatatype.TXT and name in records:
            text = " ".join('"%s"' % c for c in chunks(records[name]))
            reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", text))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(reply.to_wire(), peer)


if __name__ == "__main__":
    main()
