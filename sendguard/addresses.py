"""Addresses as the config and Postfix write them: networks, ``host:port``, client addresses.

Both services read client addresses through :func:`parse_client_address`, so
the milter's trusted scope and the streams can never disagree about a client.
"""

from __future__ import annotations

import ipaddress

from sendguard.config_reader import check_parses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_client_address(value: str) -> IPAddress | None:
    """An address as Postfix reports it (``IPv6:`` prefix and IPv4-mapped IPv6 allowed), or None."""
    text = value.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_network(value: str) -> IPNetwork:
    """A CIDR network from the config; a bare address is a /32 or /128 (host bits allowed)."""
    return ipaddress.ip_network(value, strict=False)


def check_network(value: str) -> str | None:
    """A :meth:`Section.get` check for :func:`parse_network`."""
    try:
        parse_network(value)
    except ValueError:
        return f"{value!r} is not an IP network"
    return None


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); raise ValueError on nonsense."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


#: A :meth:`Section.get` check for ``host:port`` strings.
check_hostport = check_parses(parse_hostport)
