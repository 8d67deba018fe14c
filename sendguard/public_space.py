"""How much of a network is publicly routable: the measure the milter's signing scope is judged by.

A scope is judged by what it covers, not by how it is spelt: ``0.0.0.0/1`` and
``128.0.0.0/1`` together are the whole Internet, and ``2000::/3`` is every
global unicast IPv6 address, though neither is written ``/0``. Python's
``ipaddress.ip_network(...).is_private`` looks only at a network's first and
last address (``0.0.0.0/1`` starts in ``0.0.0.0/8`` and ends in loopback, so
it counts as "private"), so the count here is made by subtraction: every
address of the network minus those inside the ranges below, which IANA's
special-purpose registries mark as not globally reachable (plus multicast and
the IPv4 reserved block, which no SMTP client can have).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from sendguard.addresses import IPNetwork

#: Ranges that hold no globally routable unicast address; disjoint within each family.
NOT_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # shared address space (CGNAT, RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast: never a client address
        "240.0.0.0/4",  # reserved, and the limited broadcast address
        "::/127",  # unspecified and loopback
        "::ffff:0:0/96",  # IPv4-mapped: the milter compares these as IPv4
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)


def public_addresses(net: IPNetwork) -> int:
    """How many addresses of ``net`` are publicly routable (0 for a private, loopback ... network)."""
    count = net.num_addresses
    for reserved in NOT_PUBLIC:
        if reserved.version != net.version:
            continue
        if net.subnet_of(reserved):  # type: ignore[arg-type]
            return 0
        if reserved.subnet_of(net):  # type: ignore[arg-type]
            count -= reserved.num_addresses
    return count


def total_public_addresses(networks: Iterable[IPNetwork]) -> int:
    """The publicly routable addresses that ``networks`` cover together (overlaps counted once)."""
    total = 0
    for version in (4, 6):
        nets = [n for n in networks if n.version == version]
        for net in ipaddress.collapse_addresses(nets):  # type: ignore[type-var]
            total += public_addresses(net)
    return total
